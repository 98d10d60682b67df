#!/usr/bin/env bash
# Builds the workspace tests for TARGET and runs them under qemu-user: cross/test.sh aarch64|armv7 [cargo test args]
# (for example `cross/test.sh aarch64 -- --skip bench`). The tests use the same model bundle and test data as the
# native run (models/prepare/prepare.sh first). Prints how long the build and the run took.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
# shellcheck source=cross/env.sh
source "$here/env.sh"
target="${1:?usage: cross/test.sh aarch64|armv7 [cargo test args...]}"
shift
cross_env "$target"
if [[ ! -e "/proc/sys/fs/binfmt_misc/qemu-${target/armv7/arm}" ]]; then
    echo "cross/test.sh: qemu is not registered with binfmt_misc (run cross/setup.sh $target as root):" \
         "tests that start the lookout binary would fail" >&2
    exit 1
fi
# The test harness runs every test on a thread of its own: check first that qemu-user can start one here (it
# cannot when the loader and libc come from different glibc builds; env.sh runs binaries on the multiarch pair).
probe="$CARGO_TARGET_DIR/thread-probe"
mkdir -p "$probe"
echo 'fn main() { assert_eq!(std::thread::spawn(|| 6 * 7).join().unwrap(), 42); }' > "$probe/main.rs"
rustc -O --target "$CROSS_TRIPLE" -C "linker=$CROSS_LINKER" -o "$probe/probe" "$probe/main.rs"
if ! timeout 60 $CROSS_QEMU "$probe/probe"; then
    echo "cross/test.sh: SKIPPED $target: a program that starts one thread does not finish under qemu-user on this" \
         "machine, and the test harness runs each test on its own thread" >&2
    exit 2
fi
# Deadlines in the daemon tests stretch by this factor: the emulated models run some 20 times slower, and a frame
# waits behind the emulated decoder's caption of the one before (qemu gives results, not speed).
export LOOKOUT_TEST_PATIENCE="${LOOKOUT_TEST_PATIENCE:-100}"
# The build takes the cargo arguments (those before `--`), so that only the test targets asked for are built.
cargo_args=()
for arg in "$@"; do
    [[ "$arg" == -- ]] && break
    cargo_args+=("$arg")
done
start=$SECONDS
cargo test --release --locked --target "$CROSS_TRIPLE" --workspace --no-run "${cargo_args[@]}"
built=$SECONDS
cargo test --release --locked --target "$CROSS_TRIPLE" --workspace "$@"
echo "cross/test.sh $target: built in $((built - start)) s, ran under $QEMU_CPU emulation in $((SECONDS - built)) s"
