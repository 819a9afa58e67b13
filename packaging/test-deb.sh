#!/usr/bin/env bash
# The Debian package's root test: build it (and a version-bumped rebuild), then in a
# sandbox -- a private mount namespace where /etc /usr /var /opt /home /root /run are
# overlays on a tmpfs, and a private network namespace -- `apt install ./netfence_*.deb`,
# `netfence doctor`, a throwaway user's `su -` login fenced (a denied loopback
# connection refused, an allowed one passing), an upgrade with a session open that stays
# fenced, `apt remove`, `apt purge`, and checks that /etc/pam.d is byte-identical to
# before and that no table, cgroup, unit, file, process or user is left. The host's PAM
# files, ruleset and dpkg database are never changed (checked at the end); the package is
# never installed on the host.
#
#   bash packaging/test-deb.sh [--deb FILE]     # as root, on Debian 12
#
# --deb FILE: test this package (packaging/build-deb.sh's output) instead of building
# one; the upgrade package is built here (version FILE's + "+pkgtest1") unless
# --upgrade-deb FILE gives one (a newer version).
# Needs the network (PyPI) to build; the sandbox itself is offline, so the package's
# dependencies are installed on the host first (apt, if missing).
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOOK=/usr/lib/netfence/netfence-hook
RUNTIME_DEPS=(nftables python3 libpam-runtime procps cron passwd login util-linux)

say() { printf '### %s\n' "$*"; }
fail() { printf '### FAIL: %s\n' "$*" >&2; exit 1; }
check() { local what="$1"; shift; if "$@" >/dev/null 2>&1; then printf '    ok: %s\n' "$what"; else fail "$what"; fi; }

# the sandbox, the probe and the checks they share (the same directory)
source "$SRC/packaging/test-deb-sandbox.sh"

apt_install() {
    apt-get install -y -q -o Dpkg::Use-Pty=0 "$1" 2>&1 | sed 's/^/    apt| /'
    return "${PIPESTATUS[0]}"
}

check_installed() {
    local version="$1"
    check "dpkg: netfence $version installed" \
        [ "$(dpkg-query -W -f='${db:Status-Status} ${Version}' netfence)" = "installed $version" ]
    check "/usr/sbin/netfence runs" /usr/sbin/netfence --version
    check "hook and its program are executable" test -x "$HOOK" -a -x "$HOOK.py"
    check "table inet netfence loaded" nft list table inet netfence
    check "hook in common-session" grep -q "pam_exec.so seteuid quiet $HOOK" /etc/pam.d/common-session
    check "hook in common-session-noninteractive" \
        grep -q "pam_exec.so seteuid quiet $HOOK" /etc/pam.d/common-session-noninteractive
    check "default policy is a conffile" \
        grep -q '^ /etc/netfence/netfence.toml ' <(dpkg-query -W -f='${Conffiles}\n' netfence)
    check "netfence check passes" netfence check
    check "netfence watch runs" watch_runs
    check "tmpfiles entry" [ -f /usr/lib/tmpfiles.d/netfence.conf ]
    check "systemd units" [ -f /lib/systemd/system/netfence-watch.service ]
    check "cron fallback" [ -f /etc/cron.d/netfence ]
    local page
    for page in "$SRC"/docs/man/*.[1-9]; do
        [ -e "$page" ] || continue
        check "man page $(basename "$page")" \
            [ -f "/usr/share/man/man${page##*.}/$(basename "$page").gz" ]
    done
    if [ -e "$SRC/packaging/completion/netfence" ]; then
        check "bash completion" [ -f /usr/share/bash-completion/completions/netfence ]
    fi
}

run_doctor() {
    if ! netfence doctor --help >/dev/null 2>&1; then
        say "netfence doctor: not in this build (skipped)"
        return
    fi
    say "netfence doctor (every check, the real login through the PAM stack included)"
    local rc=0
    netfence doctor 2>&1 | sed 's/^/    doctor| /' || rc=${PIPESTATUS[0]}
    check "netfence doctor exits 0" [ "$rc" -eq 0 ]
}

# the test user's profile: TCP to 127.0.0.1:DENIED rejected, everything else allowed
fence_test_user() {
    cat > /etc/netfence/netfence.d/50-pkgtest.toml <<TOML
[profile.pkgtest-deny]
egress = [ { action = "reject", proto = "tcp", ports = [$DENIED_PORT] } ]

[[rule]]
users = ["$TEST_USER"]
profiles = ["pkgtest-deny"]
scope = "session"
TOML
    netfence reload | sed 's/^/    reload| /'
}

login_fenced() {
    say "su - $TEST_USER: a denied connection is refused, an allowed one passes"
    local out
    out="$(su - "$TEST_USER" -c "python3 $WORK/probe.py $ALLOWED_PORT $DENIED_PORT" 2>&1)" \
        || fail "su - $TEST_USER failed: $out"
    printf '    | %s\n' "$out"
    check "fenced login: allowed=ok denied=refused" [ "$out" = "allowed=ok denied=refused" ]
}

# an open session (su - USER running the probe, waiting) across the upgrade
upgrade_with_live_session() {
    say "a session open across the upgrade to $NEW_VERSION"
    su - "$TEST_USER" -c "python3 $WORK/probe.py $ALLOWED_PORT $DENIED_PORT $WORK/live/ready $WORK/live/go" \
        > "$WORK/live/out" 2>&1 &
    local su_pid=$! tries=0
    until [ -e "$WORK/live/ready" ] || [ $tries -ge 100 ]; do sleep 0.2; tries=$((tries + 1)); done
    check "the live session started" [ -e "$WORK/live/ready" ]
    local hook_inode
    hook_inode="$(stat -c %i "$HOOK")"
    apt_install "$NEW_DEB" || fail "apt install (upgrade) failed"
    check_installed "$NEW_VERSION"
    check "hook replaced (a new file renamed over the old one)" [ "$(stat -c %i "$HOOK")" != "$hook_inode" ]
    check "the session is still recorded" bash -c "netfence status | grep -q '$TEST_USER'"
    touch "$WORK/live/go"
    wait "$su_pid" || fail "the live session's su failed: $(cat "$WORK/live/out")"
    sed 's/^/    live| /' "$WORK/live/out"
    check "before the upgrade: fenced" [ "$(sed -n 1p "$WORK/live/out")" = "allowed=ok denied=refused" ]
    check "after the upgrade, same session: still fenced" \
        [ "$(sed -n 2p "$WORK/live/out")" = "allowed=ok denied=refused" ]
}

check_removed() {
    check "hook gone from /etc/pam.d" bash -c "! grep -rqs '$HOOK' /etc/pam.d"
    check "/etc/pam.d byte-identical to before" pam_unchanged_since "$WORK/pam.d.before"
    check "pam-auth-update profile gone" [ ! -e /usr/share/pam-configs/netfence ]
    check "table gone" bash -c '! nft list table inet netfence'
    check "netfence's cgroups gone" bash -c "[ ! -e '$(cgroup2_mount)/netfence' ] || [ -z \"\$(find '$(cgroup2_mount)/netfence' -mindepth 1 -type d)\" ]"
    # by process group: pgrep would also see other netfence watch processes on the host
    if [ "$WATCH_GROUP" = 0 ]; then
        check "watch stopped" bash -c '! systemctl is-active --quiet netfence-watch.service'
    else
        check "watch and its restart loop stopped" bash -c "! group_alive $WATCH_GROUP"
    fi
    check "no pid file" [ ! -e /run/netfence-watch.pid ]
    check "hook, venv, command gone" \
        bash -c '[ ! -e /usr/lib/netfence ] && [ ! -e /opt/venvs/netfence ] && [ ! -e /usr/sbin/netfence ]'
    check "units gone" bash -c '! ls /lib/systemd/system/netfence* /etc/systemd/system/netfence* 2>/dev/null | grep -q .'
    check "/run/netfence gone" [ ! -e /run/netfence ]
}

remove_and_purge() {
    say "apt remove netfence"
    apt-get remove -y -q -o Dpkg::Use-Pty=0 netfence 2>&1 | sed 's/^/    apt| /'
    check "apt remove succeeded" [ "${PIPESTATUS[0]}" -eq 0 ]
    check "dpkg: config-files only" [ "$(dpkg-query -W -f='${db:Status-Status}' netfence)" = config-files ]
    check_removed
    check "policy kept after remove" [ -f /etc/netfence/netfence.toml ]
    say "apt purge netfence"
    apt-get purge -y -q -o Dpkg::Use-Pty=0 netfence 2>&1 | sed 's/^/    apt| /'
    check "apt purge succeeded" [ "${PIPESTATUS[0]}" -eq 0 ]
    check "dpkg: netfence unknown" bash -c '! dpkg-query -W -f="\${db:Status-Status}" netfence 2>/dev/null | grep -q .'
    check_removed
    check "/etc/netfence and /var/lib/netfence gone" bash -c '[ ! -e /etc/netfence ] && [ ! -e /var/lib/netfence ]'
    local left
    # what the sandbox wrote is in the overlays' upper directories (the host's files,
    # other tests' included, are the lower ones); -type c: whiteouts of deleted files
    left="$(find "$WORK"/ovl/*-up -name '*netfence*' ! -type c 2>/dev/null || true)"
    [ -z "$left" ] || printf '    left: %s\n' $left
    check "no file named *netfence* left in /etc /usr /var /opt /home /root /run" [ -z "$left" ]
}

# A PAM file wired by hand to the hook: `apt remove` must refuse (removing the hook would
# refuse every login through that file) and leave the package working
handwired_refuses_remove() {
    say "a hand-wired PAM service: apt remove refuses, PAM stays wired to an existing hook"
    printf 'session required pam_exec.so seteuid quiet %s\n' "$HOOK" > /etc/pam.d/nfdeb-handwired
    local rc=0
    apt-get remove -y -q -o Dpkg::Use-Pty=0 netfence > "$WORK/remove.out" 2>&1 || rc=$?
    sed 's/^/    apt| /' "$WORK/remove.out" | grep -i -E 'netfence:|error' || true
    check "apt remove failed" [ "$rc" -ne 0 ]
    check "the message names the file" grep -q nfdeb-handwired "$WORK/remove.out"
    check "hook still there" test -x "$HOOK"
    check "hook wired again in common-session (postinst abort-remove)" \
        grep -q "pam_exec.so seteuid quiet $HOOK" /etc/pam.d/common-session
    rm -f /etc/pam.d/nfdeb-handwired
    dpkg --configure -a 2>&1 | sed 's/^/    dpkg| /'
    check "installed again" [ "$(dpkg-query -W -f='${db:Status-Status}' netfence)" = installed ]
    check "netfence watch runs" watch_runs
    [ -d /run/systemd/system ] || WATCH_GROUP="$(cat /run/netfence-watch.pid)"
    login_fenced
}

# A policy with errors at the first install: postinst stops before PAM, and nothing that
# runs pam-auth-update meanwhile (another package's postinst) can wire the hook
broken_policy_install() {
    say "first install with a broken policy: PAM is not wired until it configures"
    mkdir -p /etc/netfence/netfence.d
    printf '[profile.broken\n' > /etc/netfence/netfence.d/00-broken.toml
    local rc=0
    apt_install "$OLD_DEB" > "$WORK/broken.out" 2>&1 || rc=$?
    grep -E 'netfence:' "$WORK/broken.out" | sed 's/^/    /' || true
    check "apt install failed (netfence check)" [ "$rc" -ne 0 ]
    check "dpkg: half-configured" \
        [ "$(dpkg-query -W -f='${db:Status-Status}' netfence)" = half-configured ]
    check "no pam-auth-update profile yet" [ ! -e /usr/share/pam-configs/netfence ]
    pam-auth-update --package
    check "another package's pam-auth-update run does not wire the hook" \
        pam_unchanged_since "$WORK/pam.d.before"
    rm -f /etc/netfence/netfence.d/00-broken.toml
    dpkg --configure -a 2>&1 | sed 's/^/    dpkg| /'
    check "configured once the policy is fixed" \
        [ "$(dpkg-query -W -f='${db:Status-Status}' netfence)" = installed ]
    check "hook wired" grep -q "pam_exec.so seteuid quiet $HOOK" /etc/pam.d/common-session
    say "apt purge netfence"
    apt-get purge -y -q -o Dpkg::Use-Pty=0 netfence 2>&1 | sed 's/^/    apt| /'
    check "purged" bash -c '! dpkg-query -W -f="\${db:Status-Status}" netfence 2>/dev/null | grep -q .'
    check_removed
}

inside() {
    trap inside_cleanup EXIT
    mount_sandbox
    cp -a /etc/pam.d "$WORK/pam.d.before"
    TEST_USER="nfdeb$$"
    ALLOWED_PORT=$((20000 + RANDOM % 10000))
    DENIED_PORT=$((ALLOWED_PORT + 1))
    start_listeners "$ALLOWED_PORT" "$DENIED_PORT"
    start_host_daemons

    say "apt install $OLD_DEB"
    apt_install "$OLD_DEB" || fail "apt install failed"
    check_installed "$OLD_VERSION"
    WATCH_GROUP="$(cat /run/netfence-watch.pid 2>/dev/null || echo 0)"
    [ -d /run/systemd/system ] && WATCH_GROUP=0
    run_doctor

    # the host's own useradd runs (other tests) hold /etc/passwd.lock, seen through
    # the overlay: try again for a while
    local tries=0
    until useradd -m -s /bin/bash "$TEST_USER" 2>/dev/null; do
        tries=$((tries + 1)); [ $tries -lt 40 ] || fail "useradd $TEST_USER"; sleep 0.5
    done
    fence_test_user
    login_fenced
    mkdir -m 0777 "$WORK/live"
    upgrade_with_live_session
    if [ ! -d /run/systemd/system ]; then
        check "the upgrade restarted watch (a new restart loop)" \
            [ "$(cat /run/netfence-watch.pid)" != "$WATCH_GROUP" ]
        group_alive "$WATCH_GROUP" && ps -o pid,pgid,stat,args -g "$WATCH_GROUP" | sed 's/^/    ps| /'
        check "the old restart loop is gone" bash -c "! group_alive $WATCH_GROUP"
        WATCH_GROUP="$(cat /run/netfence-watch.pid)"
    fi
    login_fenced

    handwired_refuses_remove
    remove_and_purge
    broken_policy_install
    left="$(find "$WORK"/ovl/*-up -name '*netfence*' ! -type c 2>/dev/null || true)"
    check "nothing named *netfence* left after the second purge" [ -z "$left" ]
    tries=0
    until userdel -r "$TEST_USER" 2>/dev/null; do
        tries=$((tries + 1)); [ $tries -lt 40 ] || fail "userdel $TEST_USER"; sleep 0.5
    done
    check "test user gone" bash -c "! getent passwd '$TEST_USER'"
    TEST_USER=""
    say "sandbox: all checks passed; what netfence logged:"
    sed 's/^/    syslog| /' "$WORK/syslog" | tail -n 40
}

if [ "${1:-}" = "--inside" ]; then
    WORK="$2" OLD_DEB="$3" NEW_DEB="$4"
    OLD_VERSION="$(dpkg-deb -f "$OLD_DEB" Version)"
    NEW_VERSION="$(dpkg-deb -f "$NEW_DEB" Version)"
    inside
    exit 0
fi

# -- on the host ---------------------------------------------------------------------------
OLD_DEB=""
NEW_DEB=""
while [ $# -gt 0 ]; do
    case "$1" in
        --deb) [ $# -ge 2 ] || fail "--deb needs a file"; OLD_DEB="$(realpath "$2")"; shift 2 ;;
        --upgrade-deb) [ $# -ge 2 ] || fail "--upgrade-deb needs a file"; NEW_DEB="$(realpath "$2")"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || fail "needs root"
if dpkg-query -W -f='${db:Status-Status}' netfence 2>/dev/null | grep -q .; then
    fail "netfence is known to dpkg on this host: this test never touches an installed package"
fi
nft list table inet netfence >/dev/null 2>&1 && fail "the host already has table inet netfence"

WORK="$(mktemp -d /tmp/netfence-debtest.XXXXXX)"
chmod 0755 "$WORK"                       # the test user runs $WORK/probe.py
CG2="$(cgroup2_mount)"
CG_BEFORE=0; [ -n "$CG2" ] && [ -d "$CG2/netfence" ] && CG_BEFORE=1
cleanup() {
    # cgroups are not sandboxed: a tree the sandbox's netfence left (a failed run)
    if [ "$CG_BEFORE" -eq 0 ] && [ -n "$CG2" ] && [ -d "$CG2/netfence" ]; then
        find "$CG2/netfence" -depth -type d -exec rmdir {} + 2>/dev/null || true
    fi
    umount -l "$WORK/ovl" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/ovl" "$WORK/debs"
write_probe "$WORK/probe.py"

missing=()
for pkg in "${RUNTIME_DEPS[@]}"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)" = installed ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "host: apt-get install ${missing[*]} (the sandbox is offline)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ -z "$OLD_DEB" ]; then
    say "build the package (packaging/build-deb.sh)"
    bash "$SRC/packaging/build-deb.sh" --out "$WORK/debs/old"
    OLD_DEB="$(ls "$WORK"/debs/old/netfence_*.deb)"
fi
if [ -z "$NEW_DEB" ]; then
    NEW_VERSION="$(dpkg-deb -f "$OLD_DEB" Version)+pkgtest1"
    say "build the upgrade: $NEW_VERSION"
    bash "$SRC/packaging/build-deb.sh" --no-apt --no-lintian --version "$NEW_VERSION" --out "$WORK/debs/new"
    NEW_DEB="$(ls "$WORK"/debs/new/netfence_*.deb)"
fi
dpkg --compare-versions "$(dpkg-deb -f "$NEW_DEB" Version)" gt "$(dpkg-deb -f "$OLD_DEB" Version)" \
    || fail "the upgrade package's version is not newer than the tested one's"
# copies readable by apt's sandboxed fetcher (_apt)
cp "$OLD_DEB" "$WORK/debs/old.deb"
cp "$NEW_DEB" "$WORK/debs/new.deb"
OLD_DEB="$WORK/debs/old.deb" NEW_DEB="$WORK/debs/new.deb"
chmod -R a+rX "$WORK/debs"

cp -a /etc/pam.d "$WORK/host-pam.d"
RULES_BEFORE="$(nft list ruleset | sha256sum)"

say "sandbox: unshare --mount --net"
rc=0
unshare --mount --net --propagation private -- bash "$SRC/packaging/test-deb.sh" \
    --inside "$WORK" "$OLD_DEB" "$NEW_DEB" || rc=$?

say "host untouched?"
check "host /etc/pam.d unchanged, never names the package's hook" \
    pam_unchanged_since "$WORK/host-pam.d"
check "host ruleset unchanged" [ "$(nft list ruleset | sha256sum)" = "$RULES_BEFORE" ]
# (other users come and go on a shared machine: only ours are looked for)
check "no nfdeb* user on the host" bash -c '! grep -q "^nfdeb" /etc/passwd /etc/group'
check "netfence not installed on the host" bash -c '! dpkg-query -W netfence 2>/dev/null'
check "no /opt/venvs/netfence, /usr/sbin/netfence on the host" \
    bash -c '[ ! -e /opt/venvs/netfence ] && [ ! -e /usr/sbin/netfence ]'
[ "$rc" -eq 0 ] || fail "sandbox checks failed (exit $rc)"
say "PASS"
