#!/usr/bin/env bash
# Runs the runtime's fuzz targets (the configuration, OpenAI chat bodies, multipart uploads, question text, Wyoming
# message streams), each for SECONDS (default 600) with a 256 MB RSS limit, from corpora seeded with the
# repository's files (run models/prepare/prepare.sh first for the test data) and cargo-fuzz (`cargo install
# cargo-fuzz`). Findings go to artifacts/.
#
# usage: runtime/fuzz/run.sh [SECONDS] [TARGET ...]   (targets: config openai_chat multipart question wyoming)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
testdata="${LOOKOUT_TESTDATA:-$repo/.cache/testdata}"
png="$testdata/vision/lines/keep_this_door_closed_at.DejaVuSans.28.clean.png"
[[ -f "$png" ]] || { echo "run models/prepare/prepare.sh first" >&2; exit 1; }
cd "$here"

mkdir -p corpus/config
cp -n "$repo"/board-configs/*.toml "$repo"/cross/package/lookout.toml corpus/config/
python3 seeds.py corpus "$png" "$repo/models/tests/fixtures/ramp_24bit_mono_44100.flac" \
    "$repo/runtime/bench/suites/questions.toml" "$testdata/speech/how_many_people.wav"
"$repo/models/fuzz/run_targets.sh" "config openai_chat multipart question wyoming" "$@"
