#!/usr/bin/env bash
# Helpers of packaging/test-deb.sh (sourced by it, not run): the sandbox (overlays, a
# private /dev with a syslog listener, cron), the probe a test user runs, the listeners
# it connects to, and checks shared by the host and the sandbox. Uses $WORK, $HOOK and
# the say/fail/check functions of test-deb.sh.

# /etc/pam.d as in the copy DIR: common-session* and every other file still there
# byte-identical (other tests on a shared machine add and remove PAM services of their
# own, visible through the sandbox's overlay too), and no file names the hook
pam_unchanged_since() {
    local file
    cmp -s "$1/common-session" /etc/pam.d/common-session || return 1
    cmp -s "$1/common-session-noninteractive" /etc/pam.d/common-session-noninteractive || return 1
    for file in "$1"/*; do
        [ ! -e "/etc/pam.d/${file##*/}" ] || cmp -s "$file" "/etc/pam.d/${file##*/}" || return 1
    done
    ! grep -rqs "$HOOK" /etc/pam.d
}

cgroup2_mount() {
    awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' \
        /proc/self/mountinfo
}

# -- the probe a test user runs inside its login ------------------------------------------
# probe.py ALLOWED DENIED [READY GO]: connects to 127.0.0.1:ALLOWED and :DENIED and prints
# "allowed=ok|refused|... denied=..."; with READY and GO, first writes READY, probes,
# then waits for GO (the upgrade happens meanwhile) and probes again in the same session.
write_probe() {
    cat > "$1" <<'PY'
import os, socket, sys, time

def attempt(port):
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=3).close()
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except OSError as error:
        return type(error).__name__

def probe(allowed, denied):
    print(f"allowed={attempt(allowed)} denied={attempt(denied)}", flush=True)

allowed, denied = sys.argv[1:3]
probe(allowed, denied)
if len(sys.argv) > 3:
    ready, go = sys.argv[3:5]
    open(ready, "w").close()
    deadline = time.monotonic() + 600
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.2)
    probe(allowed, denied)
PY
}

# listeners for the probe, root's, on loopback in the sandbox's network namespace
start_listeners() {
    python3 - "$@" <<'PY' &
import socket, sys, time
socks = []
for port in sys.argv[1:]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(port)))
    s.listen(64)
    socks.append(s)
time.sleep(3600)
PY
    LISTENER_PID=$!
    disown
    sleep 0.5
}

# -- inside the sandbox -------------------------------------------------------------------
# a process of the group runs (zombies do not count: PID 1 may reap them late)
group_alive() { ps -o stat= -g "$1" 2>/dev/null | grep -qv '^Z'; }
export -f group_alive

watch_runs() {
    if [ -d /run/systemd/system ]; then
        systemctl is-active --quiet netfence-watch.service
    else
        [ -f /run/netfence-watch.pid ] && kill -0 -- "-$(cat /run/netfence-watch.pid)" &&
            pgrep -g "$(cat /run/netfence-watch.pid)" -f 'netfence watch$'
    fi
}

# whatever the package test started in the sandbox, ended even when a check failed: the
# namespaces vanish with their last process, so nothing may outlive this shell
inside_cleanup() {
    [ -z "${LISTENER_PID:-}" ] || kill "$LISTENER_PID" 2>/dev/null || true
    if [ -n "${TEST_USER:-}" ]; then
        pkill -KILL -u "$TEST_USER" 2>/dev/null || true
    fi
    if [ -f /run/netfence-watch.pid ]; then
        kill -KILL -- "-$(cat /run/netfence-watch.pid)" 2>/dev/null || true
    fi
    # and anything else still running in this sandbox's mount namespace
    local own pid
    own="$(readlink /proc/self/ns/mnt)"
    for pid in $(ls /proc | grep -E '^[0-9]+$'); do
        [ "$pid" != $$ ] && [ "$pid" != "$BASHPID" ] || continue
        [ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" = "$own" ] || continue
        kill -KILL "$pid" 2>/dev/null || true
    done
}

mount_sandbox() {
    mount -t tmpfs -o mode=0700 nfdeb-ovl "$WORK/ovl"
    local d
    for d in etc usr var opt home root run; do
        mkdir -p "$WORK/ovl/$d-up" "$WORK/ovl/$d-work"
        mount -t overlay "nfdeb-$d" \
            -o "lowerdir=/$d,upperdir=$WORK/ovl/$d-up,workdir=$WORK/ovl/$d-work" "/$d"
    done
    # the host's systemd (if PID 1) must not start or stop units for the sandbox: hide
    # it, so that the package takes its path without systemd (restart loop, cron)
    if [ -d /run/systemd ]; then
        mount -t tmpfs -o mode=0755 nfdeb-nosystemd /run/systemd
    fi
    ip link set lo up
    mkdir -p "$WORK/ovl/tmp"
    export TMPDIR="$WORK/ovl/tmp" HOME=/root DEBIAN_FRONTEND=noninteractive
    private_dev
}

# A /dev of the sandbox's own (a tmpfs with the host's device nodes bound in), so that
# the sandbox can have the syslog socket /dev/log a Debian system has without creating
# one on the host
private_dev() {
    mkdir -p "$WORK/ovl/hostdev"
    mount --rbind /dev "$WORK/ovl/hostdev"
    mount -t tmpfs -o mode=0755,nosuid nfdeb-dev /dev
    local node
    for node in null zero full random urandom tty ptmx; do
        touch "/dev/$node"
        mount --bind "$WORK/ovl/hostdev/$node" "/dev/$node"
    done
    mkdir /dev/pts /dev/shm
    mount --rbind "$WORK/ovl/hostdev/pts" /dev/pts
    mount -t tmpfs -o mode=1777,nosuid,nodev nfdeb-shm /dev/shm
    ln -s /proc/self/fd /dev/fd
    ln -s /proc/self/fd/0 /dev/stdin
    ln -s /proc/self/fd/1 /dev/stdout
    ln -s /proc/self/fd/2 /dev/stderr
}

# what a Debian host runs and `netfence doctor` checks for: a syslog daemon (here a
# listener on /dev/log writing to $WORK/syslog, shown at the end: the hook's lines) and
# cron (the package's /etc/cron.d/netfence runs gc without systemd)
start_host_daemons() {
    python3 - "$WORK/syslog" <<'PY' &
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("/dev/log")
with open(sys.argv[1], "ab", buffering=0) as out:
    while True:
        out.write(sock.recv(65536) + b"\n")
PY
    disown
    local tries=0
    until [ -S /dev/log ] || [ $tries -ge 50 ]; do sleep 0.1; tries=$((tries + 1)); done
    if [ ! -d /run/systemd/system ] && [ -x /usr/sbin/cron ]; then
        /usr/sbin/cron
    fi
}
