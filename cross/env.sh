# Sourced by the cross scripts: `cross_env TARGET` exports what cargo needs to build for TARGET (aarch64, armv7)
# with rustup's toolchain or Debian's rustc-web and the cross gcc, and to run the results under qemu-user. Sets
# CROSS_TRIPLE, CROSS_QEMU, CROSS_LINKER and CROSS_TOOLCHAIN (which Rust toolchain builds).

cross_env() {
    local triple gnu
    case "$1" in
        aarch64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu ;;
        armv7) triple=armv7-unknown-linux-gnueabihf; gnu=arm-linux-gnueabihf ;;
        *) echo "unknown target $1 (aarch64, armv7)" >&2; return 1 ;;
    esac
    local upper="${triple^^}"
    upper="${upper//-/_}"
    local qemu="qemu-${1/armv7/arm}-static"
    # qemu's default CPU ("max") has SVE2, which tract's kernels then use and qemu emulates some 15x slower than
    # NEON; a board's own core keeps the emulated code on the kernels the board runs (Pi 4: Cortex-A72).
    local cpu
    case "$1" in aarch64) cpu=cortex-a72 ;; armv7) cpu=cortex-a15 ;; esac
    export QEMU_CPU="${QEMU_CPU:-$cpu}"
    # Under qemu-user /proc/cpuinfo is the host's, where tract's armv7 probe finds no NEON and falls back to its
    # VFPv2 kernels; every board this build is for has NEON, so tell tract as the board's cpuinfo would.
    [[ "$1" == armv7 ]] && export TRACT_CPU_ISA="${TRACT_CPU_ISA:-neon}"
    # Binaries run on the multiarch loader and libc (/lib/${gnu}, pulled in by libasound2-dev:ARCH), not on the
    # cross sysroot's (/usr/${gnu}): Debian's cross libc lags the multiarch one, and with `-L /usr/${gnu}` the
    # sysroot's ld.so loads the multiarch libc.so.6 of another build, whose mismatched private loader state makes
    # the first pthread_create loop forever in its stack cache.
    unset QEMU_LD_PREFIX
    # rustup's toolchain when it has the target's standard library (setup.sh adds it), else Debian's rustc-web with
    # the foreign libstd-rust-web-dev; each toolchain's cargo and rustc go together, so its folder comes first.
    local rustc
    if rustc=$(rustup which rustc 2>/dev/null) && [[ -d "$("$rustc" --print sysroot)/lib/rustlib/$triple/lib" ]]; then
        CROSS_TOOLCHAIN="rustup $("$rustc" --version | cut -d' ' -f2)"
    else
        rustc=/usr/bin/rustc
        CROSS_TOOLCHAIN="Debian rustc-web $("$rustc" --version 2>/dev/null | cut -d' ' -f2)"
    fi
    export PATH="$(dirname "$rustc"):$PATH"
    export RUSTC="$rustc" CARGO="$(dirname "$rustc")/cargo"
    export "CARGO_TARGET_${upper}_LINKER=${gnu}-gcc"
    export "CARGO_TARGET_${upper}_RUNNER=${qemu}"
    # Rust's armv7 target leaves NEON out of its baseline, so the compiler would not vectorize Lookout's own loops
    # (the block weights' integer dot products) for it. Every board the armv7 build is for has NEON; the Cortex-A7
    # (Pi 2 v1.1) has what the A53s (Pi 2 v1.2, Pi 3, Zero 2 W) run in 32-bit mode: ARMv7 with NEON and VFPv4.
    [[ "$1" == armv7 ]] && export "CARGO_TARGET_${upper}_RUSTFLAGS=-C target-cpu=cortex-a7"
    export "CC_${triple//-/_}=${gnu}-gcc" "AR_${triple//-/_}=${gnu}-ar"
    export PKG_CONFIG_ALLOW_CROSS=1
    export "PKG_CONFIG_LIBDIR_${triple//-/_}=/usr/lib/${gnu}/pkgconfig:/usr/share/pkgconfig"
    export "BINDGEN_EXTRA_CLANG_ARGS_${triple//-/_}=--sysroot=/usr/${gnu}"
    # A separate target directory keeps Debian's rustc from invalidating the native build.
    export CARGO_TARGET_DIR="${CROSS_TARGET_DIR:-target/cross}"
    CROSS_TRIPLE="$triple"
    CROSS_QEMU="$qemu"
    CROSS_LINKER="${gnu}-gcc"
}
