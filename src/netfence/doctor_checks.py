"""`netfence doctor`'s checks of the kernel, the policy, the table, the records and
the services. Each returns (name, ok, detail, fix); none changes the host: the
kernel probe loads its table in a network namespace of its own, which vanishes with
the probe process.
"""

import dataclasses
import os
import socket
import subprocess
import time

from . import cgroups, liveness, records
from .errors import NetfenceError, PolicyError

PROBE_TABLE = """table inet netfence-doctor-probe {{
  set probe {{ type cgroupsv2; }}
  chain {hook} {{ type filter hook {hook} priority 0; policy accept;
    socket cgroupv2 level 2 @probe reject; }}
}}
"""
WATCH_PIDFILE = "/run/netfence-watch.pid"
CRON_FILE = "/etc/cron.d/netfence"
SYSTEMD_DIR = "/run/systemd/system"
SYSLOG_SOCKET = "/dev/log"


def _load_in_private_netns(text):
    """'' when `nft -f -` loads text in a fresh network namespace, else why not."""
    try:
        proc = subprocess.run(["unshare", "--net", "--", "nft", "-f", "-"], input=text,
                              capture_output=True, text=True, timeout=20)
    except FileNotFoundError as err:
        return f"{err.filename} is not installed"
    except subprocess.TimeoutExpired:
        return "nft did not finish in 20 s"
    return "" if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


def check_kernel():
    """nf_tables, then `socket cgroupv2` in an output and an input chain."""
    base = _load_in_private_netns("table inet netfence-doctor-probe { }\n")
    if base:
        return [("kernel nf_tables", False, f"cannot load a table: {base}",
                 "load nf_tables (modprobe nf_tables) and install nftables")]
    out = [("kernel nf_tables", True, "a table loads (probed in a private netns)", "")]
    for hook in ("output", "input"):
        why = _load_in_private_netns(PROBE_TABLE.format(hook=hook))
        out.append((f"kernel socket cgroupv2 {hook}", not why,
                    why or f"`socket cgroupv2` loads in an {hook} chain",
                    "" if not why else "a kernel >= 5.13 with nft_socket (CONFIG_NFT_SOCKET)"))
    return out


def mount_options(mountinfo_text, mount):
    """The super options (after ' - ') of the cgroup2 mount at `mount`, as a set."""
    for line in mountinfo_text.splitlines():
        head, _, tail = line.partition(" - ")
        fields, tail_fields = head.split(), tail.split()
        if len(fields) > 4 and tail_fields[:1] == ["cgroup2"] and fields[4] == mount:
            return set(tail_fields[2].split(",")) if len(tail_fields) > 2 else set()
    return set()


def check_cgroup(mountinfo="/proc/self/mountinfo"):
    try:
        mount = cgroups.cgroup2_mount(mountinfo)
        with open(mountinfo) as handle:
            options = mount_options(handle.read(), mount)
    except (NetfenceError, OSError) as err:
        return [("cgroup2", False, str(err), "mount cgroup2 (systemd does; or mount -t "
                 "cgroup2 none /sys/fs/cgroup)")]
    out = [("cgroup2", True, f"mounted at {mount}", "")]
    if "favordynmods" in options:
        out.append(("cgroup2 favordynmods", True, "on: a login's cgroup move is cheap", ""))
    else:
        cost = move_cost_ms(mount)
        detail = ("off: each login moves its PAM application into its session cgroup"
                  + (f", {cost:.1f} ms here, most of which favordynmods saves" if cost else ""))
        out.append(("cgroup2 favordynmods", True, detail,
                    f"optional: mount -o remount,favordynmods {mount} (kernel >= 6.0)"))
    return out


def move_cost_ms(mount):
    """How long moving a fresh process into a new cgroup takes (the kernel work
    favordynmods shortens), or None when it cannot be measured."""
    path = os.path.join(mount, f"netfence-doctor-{os.getpid()}")
    child = subprocess.Popen(["sleep", "30"])
    try:
        os.mkdir(path)
        start = time.monotonic()
        with open(os.path.join(path, "cgroup.procs"), "w") as handle:
            handle.write(str(child.pid))
        return (time.monotonic() - start) * 1000
    except OSError:
        return None
    finally:
        child.kill()
        child.wait()
        _rmdir_when_empty(path)


def _rmdir_when_empty(path):
    for _ in range(100):                 # the killed child leaves the cgroup shortly
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def check_policy(paths):
    from .apply import compile_from
    try:
        policy, snap = compile_from(paths)
    except PolicyError as err:
        lines = str(err).splitlines()
        return [("policy", False, f"{len(lines)} problem(s): " + "; ".join(lines[:3]),
                 f"fix {paths.config_dir} (netfence check), then netfence reload")]
    except NetfenceError as err:
        return [("policy", False, str(err), "netfence check")]
    return [("policy", True, f"{len(policy.files)} files, {len(policy.profiles)} profiles, "
             f"{len(policy.rules)} rules (policy {snap['policy_id']})", "")]


def check_table(paths):
    """Two lines from one read-only drift check (what `status` shows): `table`, the
    table present and equal to the applied snapshot; `records`, the kernel's live
    entries equal to what the session records say, each record's PAM application
    alive and its cgroup present."""
    from .drift import check_steadily
    from .snapshot import read_snapshot
    try:
        applied = read_snapshot(paths.state_dir) or {}
        drift = check_steadily(applied, paths)
    except NetfenceError as err:
        return [("table", False, str(err), "netfence reload")]
    if not applied or applied.get("flushed"):
        return [("table", False, "no policy applied (never reloaded, or flushed)",
                 "netfence reload")]
    of_table = dataclasses.replace(drift, missing_elements={}, leaked_elements={},
                                   timed_missing={}, timed_extra={}, timed_error="")
    of_records = dataclasses.replace(drift, table_missing=False, altered=[],
                                     login_policy="", static_missing={}, static_extra={})
    if of_table.ok:
        table = ("table", True, f"inet netfence is policy {applied['policy_id']}", "")
    else:
        table = ("table", False, "; ".join(of_table.problems()),
                 "netfence gc (restores the table); is netfence watch running?")
    return [table, _records_line(paths, of_records.problems())]


def _records_line(paths, kernel_problems):
    try:
        sessions = records.list_sessions(paths.run_dir, strict=True)
        mount = cgroups.cgroup2_mount()
    except NetfenceError as err:
        return ("records", False, str(err), "netfence gc")
    dead = [s["key"] for s in sessions if not liveness.is_alive(s)]
    lost = [s["key"] for s in sessions if s.get("cgroup") and s["key"] not in dead
            and not os.path.isdir(mount + s["cgroup"])]
    problems = list(kernel_problems)
    if dead:
        problems.append(f"sessions whose PAM application is gone: {', '.join(dead)}")
    if lost:
        problems.append(f"sessions whose cgroup is gone: {', '.join(lost)}")
    if problems:
        return ("records", False, "; ".join(problems), "netfence gc (or start netfence watch)")
    return ("records", True, f"{len(sessions)} live session(s), each alive, their "
            "entries in the kernel and nothing more", "")


def watch_pids(paths, proc="/proc"):
    """pids running `netfence ... watch` for these state and run directories."""
    found = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "cmdline"), "rb") as handle:
                argv = handle.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if is_watch_of(argv, paths):
            found.append(int(entry))
    return found


def is_watch_of(argv, paths):
    """argv is netfence's watch command (any interpreter) for paths' directories."""
    if "watch" not in argv or not any("netfence" in os.path.basename(a) for a in argv[:3]):
        return False
    wanted = {"--state-dir": paths.state_dir, "--run-dir": paths.run_dir}
    given = {}
    for flag, value in zip(argv, argv[1:]):
        if flag in wanted:
            given[flag] = value
    defaults = type(paths)
    given.setdefault("--state-dir", defaults.state_dir)
    given.setdefault("--run-dir", defaults.run_dir)
    return all(os.path.normpath(given[f]) == os.path.normpath(v) for f, v in wanted.items())


def check_services(paths, systemd_dir=SYSTEMD_DIR, cron_file=CRON_FILE):
    watch = watch_pids(paths)
    out = [("watch", bool(watch),
            f"running (pid {', '.join(map(str, watch))})" if watch else
            "no `netfence watch` runs for these directories: a flushed table or a dead "
            "session waits for gc",
            "" if watch else "systemctl enable --now netfence-watch.service (without "
            "systemd: the restart loop, packaging/README.md)")]
    out.append(_check_gc(systemd_dir, cron_file))
    return out


def _check_gc(systemd_dir, cron_file):
    if os.path.isdir(systemd_dir):
        state = subprocess.run(["systemctl", "is-active", "netfence-gc.timer"],
                               capture_output=True, text=True).stdout.strip()
        return ("gc", state == "active", f"netfence-gc.timer is {state or 'unknown'}",
                "" if state == "active" else "systemctl enable --now netfence-gc.timer")
    try:
        with open(cron_file) as handle:
            scheduled = "netfence gc" in handle.read()
    except OSError:
        scheduled = False
    cron = cron_running()
    ok = scheduled and cron
    detail = (f"{cron_file} runs netfence gc" if scheduled else f"no {cron_file}") + (
        ", cron is running" if cron else ", no cron daemon runs")
    return ("gc", ok, detail, "" if ok else "install cron and packaging/netfence.cron as "
            f"{cron_file} (or run netfence gc every minute)")


def cron_running(proc="/proc"):
    for entry in os.listdir(proc):
        try:
            with open(os.path.join(proc, entry, "comm")) as handle:
                if handle.read().strip() in ("cron", "crond", "cronie", "busybox-crond"):
                    return True
        except OSError:
            continue
    return False


def check_log_sink(path=SYSLOG_SOCKET):
    """The hook logs to syslog at /dev/log (and only to the kernel ring buffer when
    nothing listens there)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(path)
    except OSError as err:
        return [("log sink", False, f"nothing listens on {path} ({err.strerror}): the "
                 "hook's lines go only to the kernel ring buffer (dmesg)",
                 "install a syslog daemon (rsyslog) or run systemd-journald")]
    finally:
        sock.close()
    return [("log sink", True, f"syslog listens on {path}", "")]
