#!/usr/bin/env bash
# Checks the packages in target/debian/: lists each one, runs lintian, installs each into a minimal Debian bookworm
# root of its architecture made with debootstrap (cached in .cache/debootstrap; a foreign one runs under qemu-user
# through binfmt_misc, else it is checked with lintian only), and there checks the service user, `lookout
# check-config` on every board, `systemd-analyze verify` (any output fails) and the unit's `systemd-analyze
# security` exposure score (at most 2.5), then purges it. Needs root.
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

# A minimal bookworm root per architecture, made once: directly for this machine's, in two stages (the second
# under qemu-user through binfmt_misc) for a foreign one.
make_root() {
    local deb_arch="$1" root="$2"
    [[ -x "$root/usr/bin/dpkg" ]] && return 0
    echo "== debootstrap bookworm ($deb_arch) into $root (a few minutes, once)"
    rm -rf "$root"
    mkdir -p "$(dirname "$root")"
    local include=--include=adduser,systemd,procps
    if [[ "$deb_arch" == "$arch" ]]; then
        debootstrap --variant=minbase "$include" bookworm "$root" http://deb.debian.org/debian >/dev/null
    else
        debootstrap --arch="$deb_arch" --foreign --variant=minbase "$include" bookworm "$root" \
            http://deb.debian.org/debian >/dev/null && chroot "$root" /debootstrap/debootstrap --second-stage >/dev/null
    fi
}

# Runs a command inside the root being checked (bash's dynamic scope: `root` is check_install's).
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"; }

check_install() {
    local deb="$1" root="$2" board name unit verify security exposure
    echo "== install $deb into $root"
    cp "$deb" "$root/tmp/lookout.deb"
    in_root dpkg --purge lookout >/dev/null 2>&1 || true
    in_root apt-get install -y -qq /tmp/lookout.deb || fail "the package does not install"
    in_root getent passwd lookout || fail "the service user was not created"
    in_root stat -c '%U:%G %a %n' /var/lib/lookout /var/lib/lookout/models /etc/lookout/lookout.toml
    [[ "$(in_root stat -c '%U:%G %a' /etc/lookout/lookout.toml)" == "root:lookout 640" ]] ||
        fail "/etc/lookout/lookout.toml (it may hold the HTTP token) is not root:lookout 0640"
    in_root setpriv --reuid=lookout --regid=lookout --clear-groups lookout check-config /etc/lookout/lookout.toml \
        --any-target --board rpi4 >/dev/null || fail "the service user cannot read its configuration"
    ! in_root setpriv --reuid=nobody --regid=nogroup --clear-groups cat /etc/lookout/lookout.toml >/dev/null 2>&1 ||
        fail "any user can read /etc/lookout/lookout.toml"
    in_root lookout --version
    # A profile made for this package's build is accepted as it is; one for another build is refused (exit 78)
    # unless checked with --any-target.
    local triple native=()
    case "$(dpkg-deb --field "$deb" Architecture)" in
        amd64) triple=x86_64-unknown-linux-gnu ;; arm64) triple=aarch64-unknown-linux-gnu ;;
        armhf) triple=armv7-unknown-linux-gnueabihf ;;
    esac
    for board in "$root"/usr/share/lookout/boards/*.toml; do
        name="$(basename "$board" .toml)"
        board="/usr/share/lookout/boards/$name.toml"
        if grep -qx "target = \"$triple\"" "$root$board"; then
            native+=("$name")
            in_root lookout check-config /etc/lookout/lookout.toml --board "$name" >/dev/null ||
                fail "check-config rejects the default configuration on board $name"
            in_root lookout check-config "$board" >/dev/null || fail "check-config rejects $board"
        else
            local status=0
            in_root lookout check-config "$board" >/dev/null 2>&1 || status=$?
            [[ $status -eq 78 ]] || fail "check-config gave $status, not 78, for $name, a profile for another build"
            in_root lookout check-config "$board" --any-target >/dev/null || fail "check-config --any-target rejects $board"
        fi
    done
    [[ ${#native[@]} -gt 0 ]] || fail "no board profile is for $triple"
    echo "check-config accepts /etc/lookout/lookout.toml on ${native[*]} and every board's profile with" \
        "--any-target, and refuses the other builds' profiles without it"

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
}

for deb in "${debs[@]}"; do
    deb_arch="$(dpkg-deb --field "$deb" Architecture)"
    root="$repo/.cache/debootstrap/bookworm-$deb_arch"
    if [[ "$deb_arch" != "$arch" ]]; then
        qemu="qemu-${deb_arch/arm64/aarch64}"
        qemu="${qemu/armhf/arm}"
        if [[ ! -e "/proc/sys/fs/binfmt_misc/$qemu" ]]; then
            echo "SKIPPED installing $deb: $qemu is not registered with binfmt_misc (cross/setup.sh); checked with lintian only"
            continue
        fi
    fi
    make_root "$deb_arch" "$root" || fail "debootstrap of bookworm ($deb_arch) failed"
    check_install "$deb" "$root"
done
