#!/usr/bin/env bash
# Reproduces the cross builds end to end on a Debian 12 x86_64 machine (root) and prints how long each step took:
# toolchains, aarch64 and armv7 release builds, the same results under qemu as natively on the default models,
# instruction counts per model run, the test suite under qemu, the .deb packages and their installation check.
# Needs the prepared models (models/prepare/prepare.sh) and the native build. Usage: cross/reproduce.sh [--skip-tests]
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"
run_tests=1
[[ "${1:-}" == --skip-tests ]] && run_tests=0
summary=()
failed=0
step() {
    local name="$1" start=$SECONDS status
    shift
    echo "== $name"
    "$@"
    status=$?
    local verdict=ok
    if [[ $status -eq 2 ]]; then
        verdict="skipped (reason above)"
    elif [[ $status -ne 0 ]]; then
        verdict="FAILED ($status)"
        failed=1
    fi
    summary+=("$(printf '%-44s %6d s  %s' "$name" $((SECONDS - start)) "$verdict")")
    return $status
}

# The same command natively and under qemu must print the same thing.
same_under_qemu() {
    local target="$1"
    shift
    local native emulated
    native="$(target/release/lookout "$@" 2>&1)" || { echo "native run failed: $native"; return 1; }
    emulated="$("$here/run.sh" "$target" "$@" 2>&1)" || { echo "$target run failed: $emulated"; return 1; }
    if [[ "$native" != "$emulated" ]]; then
        diff <(echo "$native") <(echo "$emulated")
        return 1
    fi
    echo "$native"
}

setup_log="$(mktemp)"
step "toolchains (cross/setup.sh)" bash -c 'set -o pipefail; "$0" aarch64 armv7 | tee "$1"' "$here/setup.sh" "$setup_log"
ready="$(sed -n 's/^ready: //p' "$setup_log")"
rm -f "$setup_log"
step "native build" cargo build --release --locked --bin lookout
for target in $ready; do
    step "$target release build" "$here/build.sh" "$target" || continue
    photo=.cache/testdata/vision/photos/dog.jpg
    clip=.cache/testdata/speech/how_many_people.wav
    step "$target describe = native" same_under_qemu "$target" describe "$photo"
    step "$target transcribe = native" same_under_qemu "$target" transcribe "$clip"
    step "$target instructions per run" "$here/cost.sh" "$target"
    if [[ $run_tests -eq 1 ]]; then
        step "$target test suite under qemu" "$here/test.sh" "$target"
    fi
done
arches=(amd64)
for target in $ready; do arches+=("$([[ $target == aarch64 ]] && echo arm64 || echo armhf)"); done
step "packages (${arches[*]})" "$here/package.sh" "${arches[@]}"
step "package checks" "$here/check-deb.sh"

echo
printf '%s\n' "${summary[@]}"
exit $failed
