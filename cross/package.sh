#!/usr/bin/env bash
# Builds the Debian packages with cargo-deb into target/debian/: cross/package.sh [amd64|arm64|armhf ...] (default:
# amd64 arm64). Each holds /usr/bin/lookout, the systemd unit, /etc/lookout/lookout.toml, the board profiles and
# the maintainer scripts that create the `lookout` user. A foreign architecture whose toolchain is not set up
# (cross/setup.sh) is reported as skipped; the script fails only when nothing was built.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"
# shellcheck source=cross/env.sh
source "$here/env.sh"
arches=("$@")
[[ ${#arches[@]} -eq 0 ]] && arches=(amd64 arm64)
out="$repo/target/debian"
mkdir -p "$out"

if ! command -v cargo-deb >/dev/null; then
    echo "installing cargo-deb (about 3 minutes)"
    cargo install cargo-deb --locked --quiet || { echo "cross/package.sh: cannot install cargo-deb" >&2; exit 1; }
fi

built=()
for arch in "${arches[@]}"; do
    start=$SECONDS
    case "$arch" in
        amd64) ( cargo deb -p lookout --locked --output "$out" ) ;;
        arm64|armhf)
            target=aarch64; [[ "$arch" == armhf ]] && target=armv7
            ( cross_env "$target" &&
              if [[ ! -d "$(rustc --print sysroot)/lib/rustlib/$CROSS_TRIPLE" ]]; then
                  echo "cross/package.sh: SKIPPED $arch: no standard library for $CROSS_TRIPLE (cross/setup.sh $target)" >&2
                  exit 2
              fi &&
              cargo deb -p lookout --locked --target "$CROSS_TRIPLE" --output "$out" ) ;;
        *) echo "cross/package.sh: unknown architecture $arch (amd64, arm64, armhf)" >&2; false ;;
    esac
    status=$?
    if [[ $status -eq 0 ]]; then
        built+=("$arch")
        echo "packaged $arch in $((SECONDS - start)) s"
    elif [[ $status -ne 2 ]]; then
        echo "cross/package.sh: building the $arch package failed" >&2
    fi
done
ls -l "$out"/*.deb 2>/dev/null
echo "packaged: ${built[*]}"
[[ ${#built[@]} -gt 0 ]]
