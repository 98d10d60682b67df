#!/usr/bin/env bash
# Cross-builds the `lookout` binary for a board architecture (run cross/setup.sh first; env.sh picks the toolchain).
# Usage: cross/build.sh TARGET [cargo args...]   TARGET: aarch64 (Pi 3/4/5 64-bit, Jetson) or armv7 (32-bit Pi OS)
# The binary lands in target/cross/<triple>/release/lookout; `cross/run.sh TARGET ARGS...` runs it under qemu-user.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
# shellcheck source=cross/env.sh
source "$here/env.sh"
target="${1:?usage: cross/build.sh aarch64|armv7 [cargo args...]}"
shift
cross_env "$target"
if ! rustc --print target-list >/dev/null 2>&1 || [[ ! -d "$(rustc --print sysroot)/lib/rustlib/$CROSS_TRIPLE" ]]; then
    echo "cross/build.sh: no standard library for $CROSS_TRIPLE in $(rustc --print sysroot); run cross/setup.sh $target" >&2
    exit 1
fi
start=$SECONDS
echo "building for $CROSS_TRIPLE with $CROSS_TOOLCHAIN"
cargo build --release --locked --target "$CROSS_TRIPLE" -p lookout "$@"
echo "built $CARGO_TARGET_DIR/$CROSS_TRIPLE/release/lookout in $((SECONDS - start)) s"
