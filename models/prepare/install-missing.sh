# Sourced by the scripts that need Debian packages: `install_missing PKG...` installs the given packages with apt
# when running as root, and otherwise stops with the command to run.
install_missing() {
    [[ $# -gt 0 ]] || return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        echo "installing $*"
        refresh_package_lists
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    else
        echo "error: missing $*; install them (Debian: sudo apt-get install $*)" >&2
        exit 1
    fi
}

# `apt-get update` fails as a whole when one index does, e.g. a foreign architecture's (cross/setup.sh adds arm64
# and armhf) caught mid-sync on the mirror. It is tried three times; if it still fails, the install goes ahead with
# the lists that did update, and fails by itself, naming the package, if what it needs is not among them.
refresh_package_lists() {
    local attempt
    for attempt in 1 2 3; do
        apt-get -o Acquire::Retries=2 update -qq && return 0
        [[ $attempt -lt 3 ]] && { echo "apt-get update failed (try $attempt of 3); retrying in 20 s" >&2; sleep 20; }
    done
    echo "warning: apt-get update failed three times; installing from the package lists it could update" >&2
}
