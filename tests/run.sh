#!/usr/bin/env bash
# Run netfence's whole test suite: bash tests/run.sh [pytest arguments]
#
# As root (needed by the integration and end-to-end tests, which create network
# namespaces, cgroups, users, PAM services and run sshd): installs the Debian packages
# the tests need when some are missing, creates or refreshes the venv .venv-test in the
# checkout, installs netfence with its [test] extra into it, and runs pytest.
# Not as root: no packages are installed and the root-only tests are skipped.
#
# Examples:  bash tests/run.sh                  # everything under tests/
#            bash tests/run.sh -x -k reload     # arguments go to pytest
#            bash tests/run.sh tests/e2e        # named paths replace the default tests/
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$(pwd)"
VENV="$REPO/.venv-test"

# nftables, iptables: rulesets in test namespaces; openssh-*: a real sshd and client;
# util-linux: su, runuser, unshare, nsenter, setpriv; passwd: useradd/groupadd;
# procps: pkill; iproute2: ip, ss; gcc/python3-dev/libffi-dev: the cffi extension;
# pamtester: real pam_exec without a login program; cron: a real cron PAM session;
# strace: fault injection that holds a logout open (tests/e2e/test_login_liveness.py);
# man-db, groff-base: `man -l` renders the man pages (tests/unit/test_man_pages.py).
PACKAGES=(nftables iptables openssh-server openssh-client gcc libc6-dev python3-dev
          python3-venv libffi-dev libpam0g util-linux passwd procps iproute2 pamtester cron
          strace man-db groff-base)

log() { printf '==> %s\n' "$*"; }

ensure_packages() {
    if [ "$(id -u)" -ne 0 ]; then
        log "not root: skipping the Debian package check; root-only tests will be skipped"
        return
    fi
    if ! command -v dpkg-query >/dev/null; then
        log "no dpkg-query: not Debian, skipping the package check"
        return
    fi
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        if [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)" != installed ]; then
            missing+=("$pkg")
        fi
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pip' 2>/dev/null; then
        log "venv $VENV ($("$VENV/bin/python" -V 2>&1)): refreshing"
    else
        log "venv $VENV: creating with $(command -v python3) ($(python3 -V 2>&1))"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    log "pip install '.[test]' (netfence itself is always rebuilt and reinstalled)"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        --upgrade --upgrade-strategy only-if-needed "${REPO}[test]"
}

ensure_packages
ensure_venv
# all of tests/, unless the arguments name test paths themselves (tests/unit, a::node)
TARGET=(tests)
for arg in "$@"; do
    case "$arg" in
        -*) ;;
        *) if [ -e "${arg%%::*}" ]; then TARGET=(); fi ;;
    esac
done
log "pytest -q ${TARGET[*]} $*"
# from the checkout root: tests/conftest.py puts tests/ on sys.path for tests/support
exec "$VENV/bin/python" -m pytest -q "${TARGET[@]}" "$@"
