#!/usr/bin/env bash
# Checks the packages in target/debian/: lists each one, runs lintian, installs the package of this machine's
# architecture into a minimal Debian bookworm root made with debootstrap (cached in .cache/debootstrap), and there
# checks the service user, `lookout check-config` on every board, `systemd-analyze verify` (any output fails) and
# the unit's `systemd-analyze security` exposure score (at most 2.5), then purges it. Needs root.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"
max_exposure=2.5
arch="$(dpkg --print-architecture)"
export DEBIAN_FRONTEND=noninteractive
fail() { echo "cross/check-deb.sh: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || fail "needs root (debootstrap, chroot)"
for tool in debootstrap:debootstrap lintian:lintian systemd-analyze:systemd; do
    command -v "${tool%%:*}" >/dev/null || apt-get install -y -qq --no-install-recommends "${tool#*:}" >/dev/null
done
shopt -s nullglob
debs=(target/debian/lookout_*.deb)
[[ ${#debs[@]} -gt 0 ]] || fail "no packages in target/debian (run cross/package.sh)"

for deb in "${debs[@]}"; do
    echo "== $deb"
    dpkg-deb --field "$deb" Package Version Architecture Depends
    dpkg-deb --contents "$deb" | awk '{print "   " $6}'
    # Tags that do not apply: no man page yet, a statically sized Rust binary, and an unsigned local build.
    lintian --tag-display-limit 0 --suppress-tags no-manual-page,embedded-library,no-changelog,unstripped-binary-or-object \
        "$deb" || fail "lintian reports errors for $deb"
done

native=(target/debian/lookout_*_"$arch".deb)
[[ ${#native[@]} -eq 1 ]] || fail "expected one $arch package in target/debian"
root="$repo/.cache/debootstrap/bookworm-$arch"
if [[ ! -x "$root/usr/bin/dpkg" ]]; then
    echo "== debootstrap bookworm ($arch) into $root (a few minutes, once)"
    rm -rf "$root"
    mkdir -p "$(dirname "$root")"
    debootstrap --variant=minbase --include=adduser,systemd bookworm "$root" http://deb.debian.org/debian >/dev/null ||
        fail "debootstrap failed"
fi
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

echo "== install ${native[0]} into $root"
cp "${native[0]}" "$root/tmp/lookout.deb"
in_root dpkg --purge lookout >/dev/null 2>&1 || true
in_root apt-get install -y -qq /tmp/lookout.deb || fail "the package does not install"
in_root getent passwd lookout || fail "the service user was not created"
in_root stat -c '%U:%G %a %n' /var/lib/lookout /var/lib/lookout/models
in_root lookout --version
for board in /usr/share/lookout/boards/*.toml; do
    name="$(basename "$board" .toml)"
    in_root lookout check-config /etc/lookout/lookout.toml --board "$name" >/dev/null ||
        fail "check-config rejects the default configuration on board $name"
    in_root lookout check-config "$board" >/dev/null || fail "check-config rejects $board"
done
echo "check-config accepts /etc/lookout/lookout.toml and the profile of every board"

unit=/usr/lib/systemd/system/lookout.service
[[ -f "$root$unit" ]] || unit=/lib/systemd/system/lookout.service
verify="$(systemd-analyze verify --root="$root" "$unit" 2>&1)" || fail "systemd-analyze verify failed: $verify"
[[ -z "$verify" ]] || fail "systemd-analyze verify printed: $verify"
echo "systemd-analyze verify: clean"
security="$(systemd-analyze security --offline=yes --root="$root" "$unit" 2>&1)" || true
exposure="$(grep -o 'Overall exposure level for lookout.service: [0-9.]*' <<<"$security" | awk '{print $NF}')"
[[ -n "$exposure" ]] || fail "no exposure score: $security"
echo "systemd-analyze security: exposure $exposure (at most $max_exposure)"
awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }' || { grep -E '^✗' <<<"$security" | head -20; fail "exposure $exposure is above $max_exposure"; }

in_root dpkg --purge lookout >/dev/null
! in_root getent passwd lookout >/dev/null || fail "purge left the service user behind"
echo "purged: the service user and /var/lib/lookout are gone"
