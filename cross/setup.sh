#!/usr/bin/env bash
# Installs what cross builds need on a Debian 12 x86_64 host: the standard library for each foreign architecture
# (rustup's, added to rustup's toolchain; where rustup is missing or cannot fetch it, Debian's rustc-web with the
# foreign libstd-rust-web-dev), the cross gcc, multiarch ALSA headers (which bring the foreign loader and libc that
# qemu runs binaries on) and qemu-user (static, for binfmt_misc; and the dynamic build, which loads the
# instruction-counting plugin of cross/cost.sh). Usage: cross/setup.sh [TARGET...] (aarch64, armv7; default both).
# A target whose packages cannot be installed today (a broken mirror index, say) is reported as skipped and its
# foreign architecture removed again; the script exits non-zero only when every requested target was skipped.
# Prints the targets that are ready, one per line, after "ready:".
set -uo pipefail

targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(aarch64 armv7)

if [[ $(id -u) -ne 0 ]]; then
    echo "cross/setup.sh: needs root (apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt_get() { timeout 900 apt-get -o Acquire::Retries=2 -qq "$@"; }
source "$(dirname "$0")/../models/prepare/install-missing.sh"

# Host packages shared by every target (a foreign architecture's stale index must not stop them).
refresh_package_lists
if ! apt_get install -y --no-install-recommends \
        qemu-user-static qemu-user gcc pkg-config libclang-dev libasound2-dev >/dev/null; then
    echo "cross/setup.sh: cannot install the host packages (qemu-user-static, ...)" >&2
    exit 1
fi

ready=()
for target in "${targets[@]}"; do
    case "$target" in
        aarch64) arch=arm64; triple=aarch64-unknown-linux-gnu; gcc=gcc-aarch64-linux-gnu; libc=libc6-dev-arm64-cross ;;
        armv7) arch=armhf; triple=armv7-unknown-linux-gnueabihf; gcc=gcc-arm-linux-gnueabihf; libc=libc6-dev-armhf-cross ;;
        *) echo "cross/setup.sh: unknown target $target (aarch64, armv7)" >&2; continue ;;
    esac
    added=0
    if ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
        dpkg --add-architecture "$arch"
        added=1
    fi
    # The lists were refreshed above; a newly added architecture needs its own. A stale index of one that was
    # there already does no harm when its packages are installed (or its old lists still hold them).
    [[ $added -eq 1 ]] && refresh_package_lists
    # Debian's foreign standard library comes from the same suite as rustc-web (bookworm-security), whose foreign
    # index is the one most often caught mid-sync; rustup's does not depend on it.
    rust_packages=()
    if command -v rustup >/dev/null && timeout 600 rustup target add "$triple" >/dev/null 2>&1; then
        echo "$target: the standard library from rustup ($(rustup which rustc))"
    else
        echo "$target: no rustup toolchain that could add $triple; using Debian's rustc-web"
        rust_packages=(rustc-web cargo-web libstd-rust-web-dev "libstd-rust-web-dev:$arch")
    fi
    if apt_get install -y --no-install-recommends \
            "${rust_packages[@]}" "$gcc" "$libc" "libasound2-dev:$arch" >/dev/null; then
        ready+=("$target")
    else
        echo "cross/setup.sh: SKIPPED $target: apt could not update or install the $arch packages" \
             "(often a broken $arch index on the mirror); removing the $arch architecture again" >&2
        if [[ $added -eq 1 ]]; then
            dpkg --remove-architecture "$arch" 2>/dev/null
            apt_get update || true
        fi
    fi
done

# Tests start the `lookout` binary as a child process: the kernel must hand foreign binaries to qemu (binfmt_misc).
for target in "${ready[@]}"; do
    name="qemu-${target/armv7/arm}"
    [[ -e /proc/sys/fs/binfmt_misc/register ]] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null
    if [[ -e "/proc/sys/fs/binfmt_misc/$name" ]]; then
        continue
    elif [[ -w /proc/sys/fs/binfmt_misc/register ]] && cat "/usr/lib/binfmt.d/$name.conf" > /proc/sys/fs/binfmt_misc/register; then
        echo "registered $name with binfmt_misc"
    else
        echo "cross/setup.sh: cannot register $name with binfmt_misc: tests that start the binary will fail" >&2
    fi
done

echo "ready: ${ready[*]}"
[[ ${#ready[@]} -gt 0 ]]
