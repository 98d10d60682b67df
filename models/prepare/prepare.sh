#!/usr/bin/env bash
# Builds the speech model bundle and its test references: sets up .cache/venv, then runs prepare.py and reference.py.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/.cache/venv"
python="${PYTHON:-python3}"

# System tools: espeak-ng and sox make the test speech, flac the FLAC fixtures; installed with apt when missing.
missing=()
for tool in espeak-ng:espeak-ng sox:sox flac:flac; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
"$python" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [[ ${#missing[@]} -gt 0 ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "error: missing ${missing[*]}; install them (Debian: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

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
