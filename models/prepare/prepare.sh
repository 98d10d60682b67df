#!/usr/bin/env bash
# Builds the speech model bundle and its test references: sets up .cache/venv, then runs prepare.py and reference.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/.cache/venv"
python="${PYTHON:-python3}"

# The venv is rebuilt whenever requirements.txt or the interpreter changes.
want="$( { sha256sum "$here/requirements.txt"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
stamp="$venv/.requirements-stamp"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "setting up $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    echo "$want" > "$stamp"
fi

"$venv/bin/python" "$here/prepare.py" "$@"
"$venv/bin/python" "$here/reference.py" "$@"
