#!/usr/bin/env bash
# Runs the cross-built `lookout` for TARGET under qemu-user on this machine: cross/run.sh TARGET ARGS...
# (for example `cross/run.sh aarch64 describe photo.jpg`). qemu is not timing-accurate: results, not speed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cross/env.sh
source "$here/env.sh"
target="${1:?usage: cross/run.sh aarch64|armv7 ARGS...}"
shift
cross_env "$target"
binary="$here/../$CARGO_TARGET_DIR/$CROSS_TRIPLE/release/lookout"
[[ "$CARGO_TARGET_DIR" = /* ]] && binary="$CARGO_TARGET_DIR/$CROSS_TRIPLE/release/lookout"
if [[ ! -x "$binary" ]]; then
    echo "cross/run.sh: $binary not built; run cross/build.sh $target" >&2
    exit 1
fi
# shellcheck disable=SC2086
exec $CROSS_QEMU "$binary" "$@"
