# Sourced by install.sh and build-deb.sh (which define step and die): install, with
# apt, whichever of the given Debian packages is missing.
#
#   apt_install_missing LABEL PACKAGE...

apt_install_missing() {
    local label="$1" missing=() pkg
    shift
    for pkg in "$@"; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)" = installed ] \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        step "$label: all present ($*)"
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "missing Debian packages (${missing[*]}) and not root to install them"
    step "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}
