# Sourced by the scripts that set up Python venvs: `install_locked PYTHON LOCK [PIP-ARGS...]` installs LOCK (a
# `requirements*.txt` written by models/prepare/lock.py) with `pip --require-hashes`, so pip accepts only the files
# whose sha256 the lock lists. On a platform the lock was not resolved for (its `# platforms:` line), pip installs
# the version pins of the `.in` file beside it instead, without hashes, and says so.
install_locked() {
    local python="$1" lock="$2"
    shift 2
    local platform covered
    platform="$("$python" -c 'import platform, sys; print(f"{platform.machine()}-cp{sys.version_info[0]}.{sys.version_info[1]}")')"
    covered="$(sed -n 's/^# platforms: //p' "$lock")"
    if [[ " $covered " == *" $platform "* ]]; then
        "$python" -m pip install --quiet --disable-pip-version-check --require-hashes "$@" -r "$lock"
    else
        echo "note: ${lock#"$repo"/} has no hashes for $platform (it covers: $covered); installing the version pins of ${lock%.txt}.in without hash checks" >&2
        "$python" -m pip install --quiet --disable-pip-version-check "$@" -r "${lock%.txt}.in"
    fi
}
