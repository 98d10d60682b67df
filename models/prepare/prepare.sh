#!/usr/bin/env bash
# Builds the model bundle (speech, vision, language) and its test references: sets up .cache/venv (and .cache/venv-tf when the
# TF.js detector must be converted), then runs tfjs_detectors.py, prepare.py, the reference scripts (speech, vision, language),
# `lookout models compile` (decoders that load fast) and `lookout models measure` (each stage's memory footprint).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$repo/.cache/venv"
venv_tf="$repo/.cache/venv-tf"
python="${PYTHON:-python3}"

# System tools: espeak-ng and sox make the test speech, flac the FLAC fixtures, npm and dpkg-deb fetch and unpack
# npm and Debian sources, the fonts render the OCR test images; pkg-config, libasound2-dev and libclang-dev build the
# ALSA and V4L2 bindings of `lookout`; installed with apt when missing.
missing=()
for tool in espeak-ng:espeak-ng sox:sox flac:flac npm:npm dpkg-deb:dpkg pkg-config:pkg-config; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
# The MQTT broker of the daemon's Home Assistant test (in /usr/sbin, which a user's PATH may not have).
[[ -x /usr/sbin/mosquitto ]] || command -v mosquitto >/dev/null || missing+=(mosquitto)
[[ -f /usr/include/alsa/asoundlib.h ]] || missing+=(libasound2-dev)
# bindgen loads the unversioned libclang.so and needs clang's own headers (stddef.h): libclang-cpp.so.N or libclang.so.1
# alone, which many machines have without libclang-dev, are not enough.
{ compgen -G "/usr/lib/llvm-*/lib/libclang.so" && compgen -G "/usr/lib/llvm-*/lib/clang/*/include/stddef.h"; } >/dev/null ||
    missing+=(libclang-dev)
for font in /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf:fonts-dejavu-core \
            /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf:fonts-liberation; do
    [[ -f "${font%%:*}" ]] || missing+=("${font#*:}")
done
"$python" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
source "$repo/models/prepare/install-missing.sh"
install_missing "${missing[@]}"

# A venv is rebuilt whenever its lock file or the interpreter changes.
source "$repo/models/prepare/install-locked.sh"
ensure_venv() {
    local dir="$1" requirements="$2" want stamp
    want="$( { sha256sum "$requirements"; "$python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
    stamp="$dir/.requirements-stamp"
    if [[ ! -x "$dir/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        echo "setting up $dir"
        rm -rf "$dir"
        "$python" -m venv "$dir"
        install_locked "$dir/bin/python" "$requirements"
        echo "$want" > "$stamp"
    fi
}
ensure_venv "$venv" "$here/requirements.txt"
# The official OpenAI client, which the daemon's API tests drive.
ensure_venv "$repo/.cache/venv-client" "$repo/runtime/tests/openai/requirements.txt"
# The Wyoming client at the version Home Assistant pins and at the newest, which the daemon's Wyoming tests drive.
ensure_venv "$repo/.cache/venv-wyoming-ha" "$repo/runtime/tests/wyoming/requirements-ha.txt"
ensure_venv "$repo/.cache/venv-wyoming-newest" "$repo/runtime/tests/wyoming/requirements-newest.txt"
# The MQTT client the daemon's Home Assistant test watches it through (beside a mosquitto broker from Debian).
ensure_venv "$repo/.cache/venv-mqtt" "$repo/runtime/tests/mqtt/requirements.txt"

# The TF.js detectors are converted once into .cache/build (TensorFlow lives in its own venv, set up only for that).
force=0
for arg in "$@"; do [[ "$arg" == --force ]] && force=1; done
if [[ $force -eq 1 ]] || ! "$venv/bin/python" "$here/tfjs_detectors.py" --check; then
    ensure_venv "$venv_tf" "$here/requirements-tf.txt"
    "$venv_tf/bin/python" "$here/tfjs_detectors.py" --force
fi

"$venv/bin/python" "$here/prepare.py" "$@"
"$venv/bin/python" "$here/reference.py" "$@"
"$venv/bin/python" "$here/reference_vision.py" "$@"
"$venv/bin/python" "$here/reference_llm.py" "$@"
"$venv/bin/python" "$here/reference_camera.py" "$@"

# The decoders are compiled into graphs that load fast (kept while their source and the engine are unchanged), then
# the memory plan needs each stage's footprint, measured by the runtime itself into the manifest: once per bundle
# build or compilation (either leaves the manifest without footprints), always with --force.
models_args=()
previous=""
for arg in "$@"; do
    case "$arg" in --out=*) models_args=(--models "${arg#--out=}/default") ;; esac
    [[ "$previous" == --out ]] && models_args=(--models "$arg/default")
    previous="$arg"
done
measure_args=(--if-missing)
[[ $force -eq 1 ]] && measure_args=()
compile_args=()
[[ $force -eq 1 ]] && compile_args=(--force)
(cd "$repo" && cargo build --release --locked --quiet --bin lookout)
"$repo/target/release/lookout" "${models_args[@]}" models compile "${compile_args[@]}"
"$repo/target/release/lookout" "${models_args[@]}" models measure "${measure_args[@]}"

# `lookout` goes where cargo installs binaries (on a rustup user's PATH), from the build above: `cargo install`
# reuses it through the shared target directory and records it, so `cargo uninstall lookout` removes it.
(cd "$repo" && cargo install --quiet --locked --offline --path runtime --target-dir "$repo/target" --force)
bin_dir="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin"
if [[ "$(command -v lookout)" == "$bin_dir/lookout" ]]; then
    echo "lookout is installed as $bin_dir/lookout"
else
    echo "lookout is installed as $bin_dir/lookout; that folder is not on your PATH: add it (rustup's ~/.cargo/env does)"
fi
