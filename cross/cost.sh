#!/usr/bin/env bash
# What the models cost on an ARM build, counted rather than timed: cross/cost.sh aarch64|armv7. Runs the cross-built
# `lookout models kernels` under qemu-user (the dynamic qemu, which loads plugins) with cross/cost/insn_count.c
# counting guest instructions, once with few runs of a stage and once with more; the difference divided by the
# extra runs is one run's instructions, loading excluded. Prints a Markdown table (detector, OCR, Whisper encoder
# on a fitted window, decoder per token) and writes the kernel report and the raw figures to target/cost/.
# Needs cross/setup.sh TARGET, cross/build.sh TARGET and a prepared bundle (models/prepare/prepare.sh).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
# shellcheck source=cross/env.sh
source "$here/env.sh"
target="${1:?usage: cross/cost.sh aarch64|armv7}"
cross_env "$target"
binary="$CARGO_TARGET_DIR/$CROSS_TRIPLE/release/lookout"
[[ -x "$binary" ]] || { echo "cross/cost.sh: $binary not built; run cross/build.sh $target" >&2; exit 1; }
qemu="/usr/bin/qemu-${target/armv7/arm}"
[[ -x "$qemu" ]] || { echo "cross/cost.sh: $qemu missing (apt-get install qemu-user; cross/setup.sh does)" >&2; exit 1; }
out="target/cost/$target"
mkdir -p "$out"
plugin="$out/insn_count.so"
gcc -shared -fPIC -O2 -Wall -o "$plugin" cross/cost/insn_count.c

# tract picks aarch64 kernels by core from /proc/cpuinfo, the host's under qemu-user: name the emulated one (env.sh
# does the same for armv7's NEON).
[[ "$target" == aarch64 ]] && export TRACT_CPU_AARCH64_KIND="${TRACT_CPU_AARCH64_KIND:-a72}"

photo=.cache/testdata/vision/photos/dog.jpg
text=.cache/testdata/vision/lines/keep_this_door_closed_at.DejaVuSans-Bold.28.blur.png
[[ -f "$photo" && -f "$text" ]] || { echo "cross/cost.sh: no test photos (models/prepare/prepare.sh)" >&2; exit 1; }

# instructions STAGE VARIANT RUNS [IMAGE]: prints "instructions runs" for one process.
instructions() {
    local stage="$1" variant="$2" runs="$3" image="${4:-$photo}" count="$out/count"
    local json="$out/$1-$2-$3-$(basename "$image").json"
    "$qemu" -plugin "$plugin,out=$count" "$binary" models kernels --stage "$stage" --variant "$variant" \
        --runs "$runs" --image "$image" --json > "$json"
    echo "$(cat "$count") $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["stages"][0]["runs"]["count"])' "$json")"
}

# per_run STAGE VARIANT FEW MANY [IMAGE]: instructions of one run (millions).
per_run() {
    local a b
    read -r -a a <<<"$(instructions "$1" "$2" "$3" "${5:-}")"
    read -r -a b <<<"$(instructions "$1" "$2" "$4" "${5:-}")"
    (( b[1] > a[1] )) || { echo "cross/cost.sh: $1 $2 made ${a[1]} and ${b[1]} runs" >&2; exit 1; }
    echo $(( (b[0] - a[0]) / (b[1] - a[1]) / 1000000 ))
}

start=$SECONDS
"$qemu" "$binary" models kernels > "$out/kernels.txt"
nanodet=$(per_run vision nanodet 1 3)
centernet=$(per_run vision centernet 1 3)
ocr=$(( $(per_run vision-ocr nanodet 1 3 "$text") - $(per_run vision nanodet 1 3 "$text") ))
speech=$(per_run speech int8 1 3)
decoder=$(per_run decoder q4 1 9)
{
    echo "| $target ($QEMU_CPU) | million instructions |"
    echo "|---|---|"
    echo "| detector, NanoDet, dog.jpg (768x576) | $nanodet |"
    echo "| detector, CenterNet, dog.jpg | $centernet |"
    echo "| OCR, PP-OCRv4 detection and recognition, one line of text ($(basename "$text")) | $ocr |"
    echo "| Whisper base int8, one fitted 10 s window (log-mel and encoder) | $speech |"
    echo "| SmolLM2 q4 decoder, one token | $decoder |"
} | tee "$out/cost.md"
echo "cross/cost.sh $target: $((SECONDS - start)) s; kernel report in $out/kernels.txt"
