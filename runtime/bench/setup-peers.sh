#!/usr/bin/env bash
# Installs the peers `lookout bench` compares against (faster-whisper on the same CTranslate2 weights, onnxruntime
# on the same vision ONNX files) into .cache/venv-peers; rebuilt only when requirements-peers.txt changes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/.cache/venv-peers"
want="$(sha256sum "$here/requirements-peers.txt" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && "$(cat "$venv/.requirements-stamp" 2>/dev/null)" == "$want" ]]; then
    echo "peers up to date: $venv"
    exit 0
fi
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements-peers.txt"
echo "$want" > "$venv/.requirements-stamp"
echo "peers installed: $venv"
