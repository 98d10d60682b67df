#!/usr/bin/env bash
# Boots Debian's own kernel under qemu (TCG, no KVM needed) with the vivid camera, the snd-aloop sound card and a
# gpio-mockup GPIO chip loaded, and runs the device tests that need real kernel drivers (device/tests/vm.rs,
# `--ignored`) plus `lookout probe` and the daemon inside it. Downloads and builds are cached in .cache/vm.
# Usage: device/vm/run.sh [TEST-NAME-FILTER]   (root, or sudo for the packages; needs the prepared models)
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cache="$repo/.cache/vm"
root="$cache/root"
filter="${1:-}"
mkdir -p "$cache"
started=$(date +%s)

missing=()
for tool in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static cpio:cpio depmod:kmod; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
source "$repo/models/prepare/install-missing.sh"
install_missing "${missing[@]}"
busybox_bin=$(command -v busybox)
[[ $(file -b "$busybox_bin" 2>/dev/null || true) == *static* ]] || busybox_bin=/bin/busybox

# The kernel: Debian's current linux-image for this release, unpacked, never installed.
kernel_pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[[ -n "$kernel_pkg" ]] || { echo "error: cannot find Debian's linux-image-amd64 package" >&2; exit 1; }
version=${kernel_pkg#linux-image-}
if [[ ! -f "$cache/kernel/boot/vmlinuz-$version" ]]; then
    echo "fetching $kernel_pkg"
    (cd "$cache" && rm -f linux-image-*.deb && apt-get download "$kernel_pkg" 2>/dev/null)
    rm -rf "$cache/kernel" && dpkg -x "$cache"/linux-image-*.deb "$cache/kernel"
    depmod -b "$cache/kernel" "$version"
fi
modules="$cache/kernel/lib/modules/$version"

# Debian builds neither gpio-sim nor gpio-mockup (nor the irq_sim they need), so gpio-mockup is built here from
# Debian's kernel source, with irq_sim in the same module, against Debian's headers for the same kernel. One
# change: irq_sim calls the unexported irq_to_desc; generic_handle_irq does the same through an exported symbol.
gpio_mockup="$cache/gpio-mockup-$version/gpio-mockup-vm.ko"
if [[ ! -f "$gpio_mockup" ]]; then
    install_missing "linux-headers-$version" xz-utils
    series=$(echo "$version" | cut -d. -f1,2)
    build="$cache/gpio-mockup-$version"
    rm -rf "$build" && mkdir -p "$build"
    (cd "$cache" && { ls linux-source-"$series"_*.deb >/dev/null 2>&1 || apt-get download "linux-source-$series" 2>/dev/null; })
    dpkg-deb --fsys-tarfile "$cache"/linux-source-"$series"_*.deb | tar -xO "./usr/src/linux-source-$series.tar.xz" \
        | tar -xJ -C "$build" --strip-components=3 "linux-source-$series/drivers/gpio/gpio-mockup.c" \
            "linux-source-$series/drivers/gpio/gpiolib.h" "linux-source-$series/kernel/irq/irq_sim.c"
    sed -i 's/handle_simple_irq(irq_to_desc(irqnum));/generic_handle_irq(irqnum);/' "$build/irq_sim.c"
    grep -q 'generic_handle_irq(irqnum)' "$build/irq_sim.c" || { echo "error: irq_sim.c in linux-source-$series changed; adapt the patch above" >&2; exit 1; }
    printf 'obj-m := gpio-mockup-vm.o\ngpio-mockup-vm-y := gpio-mockup.o irq_sim.o\n' > "$build/Kbuild"
    make -s -C "/usr/src/linux-headers-$version" M="$build" modules 2>&1 | grep -v 'Skipping BTF' || true
    [[ -f "$gpio_mockup" ]] || { echo "error: building gpio-mockup failed" >&2; exit 1; }
fi

# The binaries: the device tests and lookout, built natively.
cd "$repo"
cargo build --release --locked --bin lookout
tests=$(cargo test --release --locked -p lookout-device --test vm --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "vm":
        print(m["executable"])')
[[ -x "$tests" ]] || { echo "error: the vm test binary was not built" >&2; exit 1; }

# The root file system: busybox, the binaries with their libraries, ALSA's configuration, the kernel modules vivid
# and snd-aloop need, the test speech and the detector's part of the model bundle.
models_dir="${LOOKOUT_MODELS:-${XDG_DATA_HOME:-$HOME/.local/share}/lookout/models}/default"
[[ -f "$models_dir/manifest.toml" ]] || { echo "error: no model bundle at $models_dir (run models/prepare/prepare.sh)" >&2; exit 1; }
rm -rf "$root" && mkdir -p "$root"/{bin,proc,sys,dev,tmp,etc,models/default,testdata/speech,lib/modules/"$version"}
cp "$busybox_bin" "$root/bin/busybox"
cp "$gpio_mockup" "$root/lib/modules/"
cp "$tests" "$root/bin/vm-tests"
cp target/release/lookout "$root/bin/lookout"
for binary in "$root/bin/vm-tests" "$root/bin/lookout"; do
    ldd "$binary" | awk '/=>/ {print $3} /ld-linux/ {print $1}' | while read -r lib; do
        [[ -f "$lib" ]] && mkdir -p "$root$(dirname "$lib")" && cp -L "$lib" "$root$lib"
    done
done
mkdir -p "$root/usr/share" && cp -r /usr/share/alsa "$root/usr/share/"
cp "$modules"/modules.{dep,alias,symbols,builtin,order} "$root/lib/modules/$version/" 2>/dev/null || true
for module in vivid snd-aloop; do
    grep -E "/$module\.ko:" "$modules/modules.dep" | tr ' :' '\n\n' | grep '\.ko$'
done | sort -u | while read -r ko; do
    mkdir -p "$root/lib/modules/$version/$(dirname "$ko")"
    cp "$modules/$ko" "$root/lib/modules/$version/$ko"
done
cp "$models_dir/manifest.toml" "$root/models/default/"
cp -r "$models_dir/vision" "$root/models/default/"
cp "$repo/.cache/testdata/speech/how_many_people.wav" "$root/testdata/speech/"
cat > "$root/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev; mount -t tmpfs tmp /tmp
ip link set lo up
mount -t debugfs debugfs /sys/kernel/debug
modprobe vivid && modprobe snd-aloop || echo "VM: loading the modules failed"
insmod /lib/modules/gpio-mockup-vm.ko gpio_mockup_ranges=-1,8 gpio_mockup_named_lines=1 || echo "VM: loading gpio-mockup failed"
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /dev/video0 ] && [ -e /dev/snd/pcmC0D1c ] && [ -e /dev/gpiochip0 ] && break; sleep 0.5; done
export HOME=/tmp ALSA_CONFIG_PATH=/usr/share/alsa/alsa.conf LOOKOUT_BIN=/bin/lookout LOOKOUT_MODELS=/models LOOKOUT_TESTDATA=/testdata
/bin/vm-tests --ignored --test-threads=1 $filter
echo "VM-RESULT \$?"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet > "$cache/initrd.cpio")
echo "root file system: $(du -sh "$cache/initrd.cpio" | cut -f1); booting $version under qemu (TCG)"

log="$cache/console.log"
timeout 1200 qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2048 -nographic -no-reboot \
    -kernel "$cache/kernel/boot/vmlinuz-$version" -initrd "$cache/initrd.cpio" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3" | tee "$log" || true
result=$(grep -a "^VM-RESULT" "$log" | awk '{print $2}' | tr -d '\r' || true)
echo "VM tests finished in $(( $(date +%s) - started )) s with status ${result:-none}"
[[ "$result" == 0 ]]
