#!/usr/bin/env bash
# Runs the fuzz targets, each for SECONDS (default 600) with a 256 MB RSS limit, from corpora seeded with the test
# data (run models/prepare/prepare.sh first) and cargo-fuzz (`cargo install cargo-fuzz`). Findings go to artifacts/.
#
# usage: models/fuzz/run.sh [SECONDS] [TARGET ...]   (targets: audio image camera_frame gguf tokenizer_json)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
testdata="${LOOKOUT_TESTDATA:-$repo/.cache/testdata}"
models="${LOOKOUT_MODELS:-${XDG_DATA_HOME:-$HOME/.local/share}/lookout/models}/default"
[[ -d "$testdata" && -d "$models" ]] || { echo "run models/prepare/prepare.sh first" >&2; exit 1; }
cd "$here"

seed() {
    local target="$1"
    shift
    mkdir -p "corpus/$target"
    [[ $# -eq 0 ]] || cp -n "$@" "corpus/$target/"
}
seed audio "$repo"/models/tests/fixtures/*.flac "$testdata"/speech/how_many_people.wav "$testdata"/speech/is_the_door_open.wav
seed image "$testdata"/vision/photos/dog.jpg "$testdata"/camera/vtest/f0000.jpg \
    $(find "$testdata/vision" -name '*.png' | head -n 3)
seed camera_frame
mkdir -p corpus/gguf corpus/tokenizer_json
[[ -f corpus/gguf/smollm2-metadata.gguf ]] ||
    python3 seeds.py gguf "$models"/smollm2-135m-instruct/*.gguf corpus/gguf/smollm2-metadata.gguf
[[ -f corpus/tokenizer_json/whisper-tokenizer.json ]] ||
    python3 seeds.py tokenizer "$models/whisper-base/tokenizer.json" corpus/tokenizer_json/whisper-tokenizer.json

"$here/run_targets.sh" "audio image camera_frame gguf tokenizer_json" "$@"
