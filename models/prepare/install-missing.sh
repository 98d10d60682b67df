# Sourced by the scripts that need Debian packages: `install_missing PKG...` installs the given packages with apt
# when running as root, and otherwise stops with the command to run.
install_missing() {
    [[ $# -gt 0 ]] || return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "installing $*"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    else
        echo "error: missing $*; install them (Debian: sudo apt-get install $*)" >&2
        exit 1
    fi
}
