#!/usr/bin/env bash
# Proves the README's quick start on a fresh system: a minimal Debian bookworm root made with debootstrap, holding
# only what the README says a user has (Debian and Rust: rustup's toolchain, mounted from this machine, and the C
# compiler Rust links with), runs the README's two quick-start commands verbatim on a copy of this tree, then checks
# that `lookout` is on a rustup user's PATH. The root never sees this machine's packages, tools or Python; it shares
# only download caches (.cache/sources, pip's and npm's caches), the converted detector (.cache/build), the cargo
# registry and the target directory, whose -sys crates are cleaned first so that their build scripts run against
# the fresh system. The network setup (apt mirror settings, the CA bundle and its environment) is this machine's.
# Usage: .ci/fresh-root.sh   (root; the debootstrap result is cached in .cache/fresh-root/base.tar)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$repo/.cache/fresh-root"
base="$work/base.tar"
fail() { echo ".ci/fresh-root.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || fail "needs root (debootstrap, mounts, chroot)"

source "$repo/models/prepare/install-missing.sh"
command -v debootstrap >/dev/null || install_missing debootstrap

# The README's two quick-start commands: the first two lines of the sh block under "## Quick start".
mapfile -t commands < <(awk '/^## Quick start/ {s=1} s && /^```sh/ {c=1; next} c && /^```/ {exit} c {print}' "$repo/README.md")
[[ ${#commands[@]} -eq 2 ]] || fail "expected two commands in the README's quick start, found ${#commands[@]}"

mkdir -p "$work"
if [[ ! -s "$base" ]]; then
    echo "== debootstrap bookworm (minbase, gcc, ca-certificates) into $base"
    rm -rf "$work/base"
    debootstrap --variant=minbase --include=ca-certificates,gcc,libc6-dev bookworm "$work/base" \
        http://deb.debian.org/debian >/dev/null || fail "debootstrap failed"
    tar -C "$work/base" -cf "$base.part" . && mv "$base.part" "$base" && rm -rf "$work/base"
fi

root="$work/root"
rm -rf "$root" && mkdir -p "$root"
tar -C "$root" -xf "$base"
# The machine's mirror settings and CA bundle (the network's, not a tool): apt and every HTTPS client need them.
cp /etc/resolv.conf "$root/etc/resolv.conf"
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
    rm -f "$root/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
fi
cp /etc/apt/apt.conf.d/99artifact-registry "$root/etc/apt/apt.conf.d/" 2>/dev/null || true
network_ca=/usr/local/share/ca-certificates-network.crt
cp /etc/ssl/certs/ca-certificates.crt "$root$network_ca"
network_env=()
while IFS='=' read -r name value; do
    [[ "$value" == /etc/ssl/certs/ca-certificates.crt ]] && value="$network_ca"
    network_env+=("$name=$value")
done < <(env | grep -E '^((HTTPS?|NO|ALL)_PROXY|(https?|no|all)_proxy|PIP_(CERT|INDEX_URL|EXTRA_INDEX_URL|TRUSTED_HOST|DEFAULT_TIMEOUT)|NODE_EXTRA_CA_CERTS|SSL_CERT_FILE|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|GIT_SSL_CAINFO)=' || true)

# This tree as a user's checkout would be: tracked and unignored files, no caches or build outputs.
tree="$work/tree"
rm -rf "$tree" && mkdir -p "$tree"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' file; do [[ -e "$file" ]] && printf '%s\0' "$file"; done | tar --null -T - -cf -) |
    tar -C "$tree" -xf -

mkdir -p "$repo/target" "$repo/.cache/sources" "$repo/.cache/build" /root/.cache/pip /root/.npm /root/.cargo/bin
sys_crates=$(awk '/^name = ".*-sys"$/ {gsub(/"/, "", $3); printf "-p %s ", $3}' "$repo/Cargo.lock")

# Inside a private mount namespace every mount goes away with this script, whatever way it ends.
started=$(date +%s)
unshare --mount --propagation private bash -s -- "$repo" "$root" "$tree" "${commands[0]}" "${commands[1]}" "$sys_crates" "${network_env[@]}" <<'INNER'
set -euo pipefail
repo="$1" root="$2" tree="$3" first="$4" second="$5" sys_crates="$6"
shift 6
bind() { mkdir -p "$2" && mount --bind "$1" "$2"; }
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t sysfs sysfs "$root/sys"
mount -t tmpfs tmpfs "$root/tmp"
bind "$tree" "$root$repo"
bind "$repo/target" "$root$repo/target"
bind "$repo/.cache/sources" "$root$repo/.cache/sources"
bind "$repo/.cache/build" "$root$repo/.cache/build"
bind /root/.rustup "$root/root/.rustup"
mount -o remount,bind,ro "$root/root/.rustup"
bind /root/.cargo "$root/root/.cargo"
bind /root/.cache/pip "$root/root/.cache/pip"
bind /root/.npm "$root/root/.npm"

# A rustup user's login environment plus the network's; nothing else of this machine's.
in_root() {
    chroot "$root" env -i HOME=/root USER=root LANG=C.UTF-8 TERM=dumb CI="${CI:-}" \
        PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@" bash -c "cd '$repo' && $script"
}
for tool in python3 pip3 espeak-ng sox npm pkg-config clang; do
    ! chroot "$root" sh -c "command -v $tool" >/dev/null || { echo "the fresh root already has $tool" >&2; exit 1; }
done
script="cargo clean --release --quiet $sys_crates" in_root "$@"
touch "$root/tmp/started"
echo "== in the fresh root: $first"
script="$first" in_root "$@"
echo "== in the fresh root: $second"
script="$second" in_root "$@"
echo "== in the fresh root: lookout on PATH"
# The cargo home is this machine's: the binary on PATH must be the one the first command just installed.
script='command -v lookout && test "$(command -v lookout)" -nt /tmp/started && lookout --version' in_root "$@"
INNER
echo "fresh root: the README's quick start passed in $(( $(date +%s) - started )) s"
