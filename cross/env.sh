# Sourced by the cross scripts: `cross_env TARGET` exports what cargo needs to build for TARGET (aarch64, armv7)
# with Debian's rustc-web and cross gcc, and to run the results under qemu-user. Sets CROSS_TRIPLE, CROSS_QEMU and
# CROSS_LINKER.

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
    # Binaries run on the multiarch loader and libc (/lib/${gnu}, pulled in by libasound2-dev:ARCH), not on the
    # cross sysroot's (/usr/${gnu}): Debian's cross libc lags the multiarch one, and with `-L /usr/${gnu}` the
    # sysroot's ld.so loads the multiarch libc.so.6 of another build, whose mismatched private loader state makes
    # the first pthread_create loop forever in its stack cache.
    unset QEMU_LD_PREFIX
    # Debian's cargo and rustc go together and carry the foreign standard libraries; rustup's come first in PATH.
    export PATH="/usr/bin:$PATH"
    export RUSTC=/usr/bin/rustc CARGO=/usr/bin/cargo
    export "CARGO_TARGET_${upper}_LINKER=${gnu}-gcc"
    export "CARGO_TARGET_${upper}_RUNNER=${qemu}"
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
