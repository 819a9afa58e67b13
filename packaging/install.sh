#!/usr/bin/env bash
# Install netfence on Debian 12 with the default policy, and turn it on.
#
#   bash packaging/install.sh                 # as root: install, load the table, enable PAM
#   bash packaging/install.sh --uninstall     # turn it off and remove it (keeps /etc/netfence)
#   bash packaging/install.sh --prefix DIR --no-enable --no-apt   # staged install, for testing
#
# See packaging/README.md for every option and for what goes where.
set -euo pipefail

# -- options -------------------------------------------------------------------------------
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=""
ENABLE=1
APT=1
ACTION=install
PURGE=0

usage() {
    cat <<'EOF'
usage: install.sh [--uninstall [--purge]] [--prefix DIR] [--no-enable] [--no-apt] [--source DIR]

  (no option)    install into /opt/netfence, /usr/sbin, /usr/lib/netfence, /etc/netfence,
                 load the policy table and enable the PAM hook for every service
  --no-enable    install files only: do not load the table, do not touch PAM, do not
                 enable systemd units or the cron job
  --prefix DIR   install every path under DIR (e.g. DIR/opt/netfence, DIR/etc/netfence)
                 instead of /; implies --no-enable; root not required
  --no-apt       do not install Debian packages (they must already be there)
  --source DIR   the netfence source tree to install (default: this script's checkout)
  --uninstall    disable the PAM hook, remove the table (netfence flush), units, cron
                 job, hook, venv and command; keeps /etc/netfence (the admin's policy)
  --purge        with --uninstall: also remove /etc/netfence
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || { usage >&2; exit 2; }; PREFIX="$2"; shift 2 ;;
        --prefix=*) PREFIX="${1#*=}"; shift ;;
        --source) [ $# -ge 2 ] || { usage >&2; exit 2; }; SRC="$2"; shift 2 ;;
        --source=*) SRC="${1#*=}"; shift ;;
        --no-enable) ENABLE=0; shift ;;
        --no-apt) APT=0; shift ;;
        --uninstall) ACTION=uninstall; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

if [ -n "$PREFIX" ]; then
    case "$PREFIX" in /*) ;; *) PREFIX="$(pwd)/$PREFIX" ;; esac
    PREFIX="${PREFIX%/}"
    [ "$PREFIX" != "" ] || { echo "install.sh: --prefix / means no prefix" >&2; exit 2; }
    ENABLE=0
fi
SRC="$(cd "$SRC" && pwd)"

# -- paths (all under $PREFIX when given) --------------------------------------------------
VENV="$PREFIX/opt/netfence"
BIN_LINK="$PREFIX/usr/sbin/netfence"
HOOK_DIR="$PREFIX/usr/lib/netfence"
HOOK="$HOOK_DIR/netfence-hook"
CONF_DIR="$PREFIX/etc/netfence"
STATE_DIR="$PREFIX/var/lib/netfence"
RUN_DIR="$PREFIX/run/netfence"
TMPFILES="$PREFIX/usr/lib/tmpfiles.d/netfence.conf"
PAM_PROFILE="$PREFIX/usr/share/pam-configs/netfence"
UNIT_DIR="$PREFIX/etc/systemd/system"
CRON_FILE="$PREFIX/etc/cron.d/netfence"
UNITS=(netfence.service netfence-gc.service netfence-gc.timer netfence-watch.service)
# without systemd: `netfence watch` restarted by a shell loop (docs/watch.md); the
# loop leads its own process group, whose id this file holds
WATCH_PIDFILE="$PREFIX/run/netfence-watch.pid"
APT_PACKAGES=(nftables python3 python3-venv python3-dev gcc libc6-dev libffi-dev
              ca-certificates)

step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
# shellcheck source=apt-missing.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-missing.sh"

systemd_running() { [ -z "$PREFIX" ] && [ -d /run/systemd/system ]; }
cron_installed() { [ -x /usr/sbin/cron ] || [ -x /usr/sbin/crond ]; }

OWNER=()
if [ "$(id -u)" -eq 0 ]; then
    OWNER=(-o root -g root)
elif [ -z "$PREFIX" ]; then
    die "run as root (or stage into a directory with --prefix DIR)"
fi

# -- steps ---------------------------------------------------------------------------------
install_packages() {
    if [ "$APT" -eq 0 ]; then
        step "Debian packages: skipped (--no-apt)"
        return
    fi
    command -v dpkg-query >/dev/null || die "dpkg-query not found: this installer is for Debian (use --no-apt)"
    apt_install_missing "Debian packages" "${APT_PACKAGES[@]}"
}

system_python() {
    if [ -x /usr/bin/python3 ]; then
        echo /usr/bin/python3
    elif command -v python3 >/dev/null; then
        command -v python3
    else
        die "no python3 found"
    fi
}

make_venv() {
    local py
    py="$(system_python)"
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys, pip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        step "venv $VENV: exists ($("$VENV/bin/python" -V 2>&1)), reusing"
    else
        step "venv $VENV: creating with $py ($("$py" -V 2>&1))"
        "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || die "$py is older than 3.11 (netfence needs tomllib)"
        rm -rf "$VENV"
        mkdir -p "$(dirname "$VENV")"
        "$py" -m venv "$VENV"
    fi
}

pip_install() {
    [ -f "$SRC/pyproject.toml" ] || [ -f "$SRC/setup.py" ] \
        || die "$SRC is not a netfence source tree (no pyproject.toml or setup.py)"
    # build from a clean copy: no root-owned build/ or *.egg-info left in the checkout,
    # no stale venvs or caches sent to the build backend
    local build
    build="$(mktemp -d "${TMPDIR:-/tmp}/netfence-build.XXXXXX")"
    # shellcheck disable=SC2064  # expand now: $build is local
    trap "rm -rf '$build'" EXIT
    tar -C "$SRC" -cf - --exclude=.git --exclude='.venv*' --exclude=build --exclude=dist \
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache \
        --exclude=.hypothesis --exclude=.benchmarks . | tar -C "$build" -xf -
    step "pip install $SRC into $VENV"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input -q \
        --upgrade --upgrade-strategy only-if-needed "$build"
    rm -rf "$build"
    trap - EXIT
    "$VENV/bin/netfence" --version >/dev/null \
        || die "$VENV/bin/netfence does not run after pip install"
    note "$("$VENV/bin/netfence" --version)"
}

link_command() {
    step "command: $BIN_LINK -> $VENV/bin/netfence"
    mkdir -p "$(dirname "$BIN_LINK")"
    ln -sfn "$VENV/bin/netfence" "$BIN_LINK"
}

write_hook() {
    step "hook: $HOOK (netfence install-hook)"
    install -d -m 0755 "${OWNER[@]}" "$HOOK_DIR"
    "$VENV/bin/netfence" install-hook "$HOOK" | sed 's/^/    /'
    [ -x "$HOOK" ] || die "install-hook did not write an executable $HOOK"
}

config_dirs() {
    step "policy: $CONF_DIR (root 0755), $CONF_DIR/netfence.d"
    install -d -m 0755 "${OWNER[@]}" "$CONF_DIR" "$CONF_DIR/netfence.d"
    if [ -e "$CONF_DIR/netfence.toml" ]; then
        note "$CONF_DIR/netfence.toml exists: kept (never overwritten)"
    else
        [ -f "$SRC/packaging/netfence.toml" ] || die "$SRC/packaging/netfence.toml (the default policy) is missing"
        install -m 0644 "${OWNER[@]}" "$SRC/packaging/netfence.toml" "$CONF_DIR/netfence.toml"
        note "installed the default policy as $CONF_DIR/netfence.toml"
    fi
    step "state: $STATE_DIR (0755), runtime: $RUN_DIR (0700)"
    install -d -m 0755 "${OWNER[@]}" "$STATE_DIR"
    install -d -m 0700 "${OWNER[@]}" "$RUN_DIR"
    if command -v systemd-tmpfiles >/dev/null || [ -n "$PREFIX" ]; then
        install -d -m 0755 "$(dirname "$TMPFILES")"
        install -m 0644 "${OWNER[@]}" "$SRC/packaging/netfence.tmpfiles" "$TMPFILES"
        note "tmpfiles.d: $TMPFILES (recreates $RUN_DIR at boot)"
    else
        note "tmpfiles.d: skipped (no systemd-tmpfiles; the hook and the cron @reboot job create $RUN_DIR)"
    fi
}

install_units() {
    install -d -m 0755 "$UNIT_DIR"
    local unit
    for unit in "${UNITS[@]}"; do
        install -m 0644 "${OWNER[@]}" "$SRC/packaging/systemd/$unit" "$UNIT_DIR/$unit"
    done
    step "systemd units: ${UNITS[*]} in $UNIT_DIR"
    if [ "$ENABLE" -eq 0 ]; then
        note "not enabled (--no-enable)"
    elif systemd_running; then
        systemctl daemon-reload
        systemctl enable netfence.service netfence-gc.timer netfence-watch.service
        systemctl start netfence-gc.timer
        systemctl restart netfence-watch.service
        note "enabled netfence.service (reload at boot), netfence-gc.timer (gc every minute) and netfence-watch.service (started)"
    else
        note "systemd is not PID 1: units installed but not enabled (skipped: daemon-reload, enable, start)"
    fi
}

install_cron() {
    if systemd_running; then
        rm -f "$CRON_FILE"
        step "cron: not needed (netfence-gc.timer runs gc)"
    elif [ "$ENABLE" -eq 0 ]; then
        step "cron: skipped (--no-enable)"
    elif cron_installed; then
        install -d -m 0755 "$(dirname "$CRON_FILE")"
        install -m 0644 "${OWNER[@]}" "$SRC/packaging/netfence.cron" "$CRON_FILE"
        step "cron: $CRON_FILE (netfence gc every minute, netfence reload @reboot)"
    else
        step "cron: skipped: neither systemd nor cron: run 'netfence gc' periodically and 'netfence reload' at boot yourself"
    fi
}

watch_running() {
    [ -f "$WATCH_PIDFILE" ] && kill -0 "$(cat "$WATCH_PIDFILE")" 2>/dev/null
}

start_watch() {
    if [ "$ENABLE" -eq 0 ] || systemd_running; then
        return                      # systemd: install_units started the service
    fi
    stop_watch
    step "watch: netfence watch under a restart loop (no systemd; docs/watch.md), pid file $WATCH_PIDFILE"
    # setsid: the loop leads a process group of its own, which stop_watch ends whole
    setsid sh -c 'echo $$ > "$1"; while :; do "$2" watch; sleep 1; done' sh \
        "$WATCH_PIDFILE" "$BIN_LINK" </dev/null >/dev/null 2>&1 &
    local tries=0
    until watch_running || [ $tries -ge 50 ]; do sleep 0.1; tries=$((tries + 1)); done
    watch_running || die "netfence watch did not start"
    note "started (process group $(cat "$WATCH_PIDFILE")); after a reboot start it again the same way"
}

stop_watch() {
    if watch_running; then
        step "watch: stop (process group $(cat "$WATCH_PIDFILE"))"
        local group tries=0
        group="$(cat "$WATCH_PIDFILE")"
        kill -TERM -- "-$group" 2>/dev/null || true
        # watch exits on SIGTERM at once; wait so that a new one never overlaps it
        while kill -0 -- "-$group" 2>/dev/null && [ $tries -lt 50 ]; do
            sleep 0.1; tries=$((tries + 1))
        done
    fi
    rm -f "$WATCH_PIDFILE"
}

load_table() {
    step "netfence check"
    "$BIN_LINK" check | sed 's/^/    /' || die "the policy in $CONF_DIR has errors (above); fix it and run this again. Nothing was enabled."
    step "netfence reload (loads table inet netfence)"
    "$BIN_LINK" reload | sed 's/^/    /' || die "netfence reload failed (above); PAM was not enabled"
}

enable_pam() {
    if [ "$ENABLE" -eq 0 ] && [ -z "$PREFIX" ]; then
        # a profile in /usr/share/pam-configs with "Default: yes" is switched on by the
        # next pam-auth-update run (an upgrade of any PAM module package): do not leave
        # one behind unless we mean to enable it
        step "PAM: skipped (--no-enable): profile not installed, logins do not run the hook"
        return
    fi
    step "PAM: $PAM_PROFILE, pam-auth-update --enable netfence"
    install -d -m 0755 "$(dirname "$PAM_PROFILE")"
    install -m 0644 "${OWNER[@]}" "$SRC/pam/netfence.pam-config" "$PAM_PROFILE"
    if [ "$ENABLE" -eq 0 ]; then
        note "staged only (--prefix): not enabled"
        return
    fi
    command -v pam-auth-update >/dev/null || die "pam-auth-update not found (package libpam-runtime)"
    DEBIAN_FRONTEND=noninteractive pam-auth-update --package --enable netfence
    if grep -qs "$HOOK" /etc/pam.d/common-session; then
        note "common-session:                $(grep -h "$HOOK" /etc/pam.d/common-session)"
        if grep -qs "$HOOK" /etc/pam.d/common-session-noninteractive; then
            note "common-session-noninteractive: $(grep -h "$HOOK" /etc/pam.d/common-session-noninteractive)"
        fi
    else
        die "pam-auth-update did not add the hook to /etc/pam.d/common-session (locally modified PAM files? run 'pam-auth-update' interactively, or add by hand: $("$BIN_LINK" pam-line))"
    fi
}

do_install() {
    step "netfence from $SRC${PREFIX:+ into prefix $PREFIX}"
    install_packages
    make_venv
    pip_install
    link_command
    write_hook
    config_dirs
    if [ "$ENABLE" -eq 1 ]; then
        load_table
    else
        step "netfence check / reload: skipped (--no-enable)"
        "$BIN_LINK" --config-dir "$CONF_DIR" --state-dir "$STATE_DIR" --run-dir "$RUN_DIR" \
            check 2>&1 | sed 's/^/    /' || note "(the policy does not pass check yet)"
    fi
    install_units
    install_cron
    start_watch
    enable_pam
    if [ "$ENABLE" -eq 1 ]; then
        step "done: netfence is on. Try: netfence status; netfence explain USER --service sshd --rhost 203.0.113.9"
    else
        step "done: installed, not enabled"
    fi
}

do_uninstall() {
    step "uninstall netfence${PREFIX:+ from prefix $PREFIX}"
    if [ -z "$PREFIX" ] && [ -e "$PAM_PROFILE" ]; then
        step "PAM: pam-auth-update --remove netfence"
        DEBIAN_FRONTEND=noninteractive pam-auth-update --package --remove netfence
    fi
    rm -f "$PAM_PROFILE"
    if [ -z "$PREFIX" ] && grep -qs "$HOOK" /etc/pam.d/common-session /etc/pam.d/common-session-noninteractive; then
        die "the hook is still in /etc/pam.d/common-session*: remove it by hand (pam-auth-update), then run this again"
    fi
    if [ -z "$PREFIX" ]; then
        local others
        others="$(grep -ls "$HOOK" /etc/pam.d/* 2>/dev/null || true)"
        [ -z "$others" ] || note "WARNING: still referenced by hand-wired PAM files (remove those lines): $others"
    fi
    if systemd_running; then
        step "systemd: disable --now ${UNITS[*]}"
        systemctl disable --now netfence-watch.service netfence-gc.timer netfence.service \
            2>/dev/null || true
    fi
    stop_watch
    local unit
    for unit in "${UNITS[@]}"; do rm -f "$UNIT_DIR/$unit"; done
    if systemd_running; then systemctl daemon-reload; fi
    rm -f "$CRON_FILE"
    if [ -z "$PREFIX" ] && [ -x "$VENV/bin/netfence" ]; then
        step "netfence flush (removes table inet netfence, session records and cgroups)"
        "$VENV/bin/netfence" flush | sed 's/^/    /' || note "flush failed; remove the table with: nft delete table inet netfence"
    fi
    step "remove $HOOK_DIR, $VENV, $BIN_LINK, $TMPFILES, $STATE_DIR, $RUN_DIR"
    rm -rf "$HOOK_DIR" "$VENV" "$STATE_DIR" "$RUN_DIR"
    rm -f "$BIN_LINK" "$TMPFILES"
    if [ "$PURGE" -eq 1 ]; then
        step "purge: remove $CONF_DIR"
        rm -rf "$CONF_DIR"
    else
        note "kept $CONF_DIR (your policy); --uninstall --purge removes it"
    fi
    step "done: netfence is removed"
}

case "$ACTION" in
    install) do_install ;;
    uninstall) do_uninstall ;;
esac
