#!/usr/bin/env bash
# Runs the fuzz targets, each for SECONDS (default 600) with a 256 MB RSS limit, from corpora seeded with the test
# data (run models/prepare/prepare.sh first) and cargo-fuzz (`cargo install cargo-fuzz`). Findings go to artifacts/.
#
# usage: models/fuzz/run.sh [SECONDS] [TARGET ...]   (targets: audio image camera_frame gguf tokenizer_json)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
seconds="${1:-600}"
shift || true
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(audio image camera_frame gguf tokenizer_json)
testdata="${LOOKOUT_TESTDATA:-$repo/.cache/testdata}"
models="${LOOKOUT_MODELS:-${XDG_DATA_HOME:-$HOME/.local/share}/lookout/models}/default"
[[ -d "$testdata" && -d "$models" ]] || { echo "run models/prepare/prepare.sh first" >&2; exit 1; }
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2; exit 1; }
# libFuzzer's instrumentation needs unstable compiler flags; RUSTC_BOOTSTRAP allows them on a stable toolchain.
export RUSTC_BOOTSTRAP=1
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

cargo fuzz build -s none
for target in "${targets[@]}"; do
    echo "== $target: $seconds s"
    # Larger than any seed (each under 100 KB).
    max_len=$((1 << 20))
    cargo fuzz run -s none "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=256 \
        -max_len="$max_len" -timeout=30 -print_final_stats=1 2>&1 |
        grep -E '^(stat::|==[0-9]+== ERROR|SUMMARY|Done|artifact_prefix|Test unit written)' || true
done
