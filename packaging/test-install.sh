#!/usr/bin/env bash
# Run packaging/install.sh for real (install, re-install, a login, uninstall) without
# touching this machine: inside a private mount namespace where /etc /usr /var /opt
# /home /root /run are overlays on a tmpfs, and a private network namespace. Everything
# the installer writes (venv, /usr/sbin/netfence, PAM files, units, the nftables table,
# a test user) disappears with the namespaces. The host's PAM files and ruleset are
# checked before and after.
#
#   bash packaging/test-install.sh [--no-login]
#
# Needs root and the network (PyPI) for one step only: building a wheelhouse of netfence
# and its build and runtime dependencies; the sandbox itself installs offline from it.
# --no-login: skip the login through the installed PAM hook (`su -`).
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOOK=/usr/lib/netfence/netfence-hook
LOGIN=1

# where cgroup v2 is mounted (field after the " - " separator is the fs type)
cgroup2_mount() {
    awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' \
        /proc/self/mountinfo
}
say() { printf '### %s\n' "$*"; }
fail() { printf '### FAIL: %s\n' "$*" >&2; exit 1; }
check() { local what="$1"; shift; if "$@" >/dev/null; then printf '    ok: %s\n' "$what"; else fail "$what"; fi; }

# systemd as PID 1: the service is active; otherwise the installer's restart loop (its
# pid file) and a `netfence watch` process
watch_runs() {
    if [ -d /run/systemd/system ]; then
        systemctl is-active --quiet netfence-watch.service
    else
        [ -f /run/netfence-watch.pid ] && kill -0 "$(cat /run/netfence-watch.pid)" &&
            pgrep -g "$(cat /run/netfence-watch.pid)" -f ' watch$'
    fi
}

# -- inside the sandbox ------------------------------------------------------------------
inside() {
    local work="$1"
    mount -t tmpfs -o mode=0700 nftest-ovl "$work/ovl"
    local d
    for d in etc usr var opt home root run; do
        mkdir -p "$work/ovl/$d-up" "$work/ovl/$d-work"
        [ -d "/$d" ] || fail "/$d does not exist on this machine"
        mount -t overlay "nftest-$d" \
            -o "lowerdir=/$d,upperdir=$work/ovl/$d-up,workdir=$work/ovl/$d-work" "/$d"
    done
    ip link set lo up
    mkdir -p "$work/ovl/tmp"
    export TMPDIR="$work/ovl/tmp" HOME=/root PIP_NO_INDEX=1 PIP_FIND_LINKS="$work/wheelhouse" \
        PIP_NO_CACHE_DIR=1
    local inst=(bash "$SRC/packaging/install.sh")

    say "install (the README's command)"
    "${inst[@]}"
    check "/usr/sbin/netfence -> venv" [ "$(readlink /usr/sbin/netfence)" = /opt/netfence/bin/netfence ]
    check "netfence runs" /usr/sbin/netfence --version
    check "hook is executable" [ -x "$HOOK" ]
    check "default policy installed" cmp -s "$SRC/packaging/netfence.toml" /etc/netfence/netfence.toml
    check "/etc/netfence root 0755" [ "$(stat -c '%U %a' /etc/netfence)" = "root 755" ]
    check "/etc/netfence/netfence.d" [ -d /etc/netfence/netfence.d ]
    check "/var/lib/netfence 0755" [ "$(stat -c '%a' /var/lib/netfence)" = 755 ]
    check "/run/netfence 0700" [ "$(stat -c '%a' /run/netfence)" = 700 ]
    check "table inet netfence loaded (sandbox netns)" nft list table inet netfence
    check "hook in common-session" grep -q "pam_exec.so seteuid quiet $HOOK" /etc/pam.d/common-session
    check "hook in common-session-noninteractive" \
        grep -q "pam_exec.so seteuid quiet $HOOK" /etc/pam.d/common-session-noninteractive
    if grep -q pam_systemd /etc/pam.d/common-session; then
        check "hook comes after pam_systemd" \
            [ "$(grep -n pam_systemd /etc/pam.d/common-session | cut -d: -f1)" -lt \
              "$(grep -n "$HOOK" /etc/pam.d/common-session | cut -d: -f1)" ]
    fi
    check "pam-line matches the profile" \
        [ "$(netfence pam-line)" = "session required pam_exec.so seteuid quiet $HOOK" ]
    for unit in netfence.service netfence-gc.service netfence-gc.timer netfence-watch.service; do
        check "unit $unit" [ -f "/etc/systemd/system/$unit" ]
    done
    check "netfence watch runs" watch_runs
    local watch_group
    watch_group="$(cat /run/netfence-watch.pid 2>/dev/null || true)"
    if [ -x /usr/sbin/cron ]; then
        check "cron job" [ -f /etc/cron.d/netfence ]
    else
        check "no cron job without cron" [ ! -e /etc/cron.d/netfence ]
    fi

    say "install again: idempotent, keeps the admin's policy (and cron is now present)"
    echo "# edited by the admin" >> /etc/netfence/netfence.toml
    local fake_cron=0
    if [ ! -x /usr/sbin/cron ]; then
        # only the installer's "is cron installed" test sees it; nothing runs it
        printf '#!/bin/sh\nexit 0\n' > /usr/sbin/cron && chmod 755 /usr/sbin/cron
        fake_cron=1
    fi
    cp /etc/pam.d/common-session "$work/ovl/common-session.1"
    "${inst[@]}"
    check "policy kept" grep -q "edited by the admin" /etc/netfence/netfence.toml
    check "common-session unchanged" cmp -s "$work/ovl/common-session.1" /etc/pam.d/common-session
    check "hook once in common-session" [ "$(grep -c "$HOOK" /etc/pam.d/common-session)" = 1 ]
    check "table still loaded" nft list table inet netfence
    check "cron job installed" cmp -s "$SRC/packaging/netfence.cron" /etc/cron.d/netfence
    check "netfence watch runs once, restarted by the install" watch_runs
    if [ ! -d /run/systemd/system ]; then
        check "the first restart loop was stopped" bash -c "! kill -0 -- -$watch_group 2>/dev/null"
        check "one netfence watch" [ "$(pgrep -g "$(cat /run/netfence-watch.pid)" -c -f ' watch$')" = 1 ]
        watch_group="$(cat /run/netfence-watch.pid)"
    fi

    if [ "$LOGIN" -eq 1 ]; then
        say "a login through the installed PAM stack: su - USER"
        local user="nftinst$RANDOM"
        useradd -m -s /bin/bash "$user"
        local out rc=0
        # shellcheck disable=SC2016  # expanded by the user's shell
        out="$(su - "$user" -c 'echo "uid=$(id -u)"; cat /proc/self/cgroup' 2>&1)" || rc=$?
        printf '%s\n' "$out" | sed 's/^/    | /'
        netfence status | sed 's/^/    status| /' || true
        pkill -KILL -u "$user" || true
        userdel -r "$user" 2>/dev/null || true
        check "su - through netfence's hook succeeds" [ "$rc" -eq 0 ]
        check "the shell ran in a netfence session cgroup" \
            grep -q "^0::/netfence/user-[0-9]*/session-" <<<"$out"
        local cg2
        cg2="$(cgroup2_mount)"
        check "its session cgroup is gone after logout" \
            bash -c "[ -z \"\$(find '$cg2/netfence' -mindepth 2 -type d -name 'session-*' 2>/dev/null)\" ]"
    fi

    say "uninstall"
    "${inst[@]}" --uninstall
    check "hook gone from common-session*" \
        bash -c "! grep -qs '$HOOK' /etc/pam.d/common-session /etc/pam.d/common-session-noninteractive"
    check "profile gone" [ ! -e /usr/share/pam-configs/netfence ]
    check "table gone" bash -c '! nft list table inet netfence >/dev/null 2>&1'
    check "venv, command, hook gone" bash -c '[ ! -e /opt/netfence ] && [ ! -L /usr/sbin/netfence ] && [ ! -e /usr/lib/netfence ]'
    check "units gone" bash -c '! ls /etc/systemd/system/netfence* >/dev/null 2>&1'
    check "cron job gone" [ ! -e /etc/cron.d/netfence ]
    if [ -d /run/systemd/system ]; then
        check "netfence watch stopped" bash -c '! systemctl is-active --quiet netfence-watch.service'
    else
        check "netfence watch and its restart loop stopped" \
            bash -c "sleep 0.5; ! pgrep -g $watch_group >/dev/null"
        check "no pid file left" [ ! -e /run/netfence-watch.pid ]
    fi
    if [ "$fake_cron" -eq 1 ]; then rm -f /usr/sbin/cron; fi
    check "policy kept" grep -q "edited by the admin" /etc/netfence/netfence.toml
    say "sandbox: all checks passed"
}

if [ "${1:-}" = "--inside" ]; then
    LOGIN="$3"
    inside "$2"
    exit 0
fi

# -- on the host ---------------------------------------------------------------------------
while [ $# -gt 0 ]; do
    case "$1" in
        --no-login) LOGIN=0; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || fail "needs root"
[ -f "$SRC/packaging/netfence.toml" ] || fail "packaging/netfence.toml (the default policy) is missing"

WORK="$(mktemp -d /tmp/netfence-installtest.XXXXXX)"
CG2="$(cgroup2_mount)"
CG_BEFORE=0; [ -n "$CG2" ] && [ -d "$CG2/netfence" ] && CG_BEFORE=1
cleanup() {
    # cgroups are not in the sandbox: remove a netfence tree that the login left behind
    if [ "$CG_BEFORE" -eq 0 ] && [ -n "$CG2" ] && [ -d "$CG2/netfence" ]; then
        find "$CG2/netfence" -depth -type d -exec rmdir {} + 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/ovl" "$WORK/wheelhouse" "$WORK/src"

say "wheelhouse (host network): netfence, its dependencies and build requirements"
tar -C "$SRC" -cf - --exclude=.git --exclude='.venv*' --exclude=build --exclude=dist \
    --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache . | tar -C "$WORK/src" -xf -
/usr/bin/python3 -m venv "$WORK/tools"
mapfile -t BUILD_REQS < <("$WORK/tools/bin/python" - "$WORK/src" <<'EOF'
import os, sys, tomllib
path = os.path.join(sys.argv[1], "pyproject.toml")
reqs = ["setuptools>=40.8.0", "wheel"]
if os.path.exists(path):
    with open(path, "rb") as f:
        reqs = tomllib.load(f).get("build-system", {}).get("requires", reqs)
print("\n".join(reqs))
EOF
)
"$WORK/tools/bin/python" -m pip download -q --disable-pip-version-check -d "$WORK/wheelhouse" \
    "${BUILD_REQS[@]}"
"$WORK/tools/bin/python" -m pip wheel -q --disable-pip-version-check -w "$WORK/wheelhouse" "$WORK/src"
find "$WORK/wheelhouse" -type f -printf '    %f\n' | sort

PAM_BEFORE="$(cat /etc/pam.d/common-session* | sha256sum)"
RULES_BEFORE="$(nft list ruleset | sha256sum)"
nft list table inet netfence >/dev/null 2>&1 && fail "the host already has table inet netfence"

say "sandbox: unshare --mount --net"
rc=0
unshare --mount --net --propagation private -- bash "$SRC/packaging/test-install.sh" \
    --inside "$WORK" "$LOGIN" || rc=$?

say "host untouched?"
check "host PAM common-session* unchanged" [ "$(cat /etc/pam.d/common-session* | sha256sum)" = "$PAM_BEFORE" ]
check "host ruleset unchanged" [ "$(nft list ruleset | sha256sum)" = "$RULES_BEFORE" ]
check "no /opt/netfence on the host" [ ! -e /opt/netfence ]
check "no /usr/sbin/netfence on the host" [ ! -e /usr/sbin/netfence ]
[ "$rc" -eq 0 ] || fail "sandbox checks failed (exit $rc)"
say "PASS"
