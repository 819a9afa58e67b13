"""The denial log through real `su` logins, the real hook and `netfence watch` (root,
private netns): a denied packet of a session with `log = true` becomes one line of
`netfence log` naming who (user, session, service, rhost, tty: the session record
found by the cgroup id lent to the nflog copy's mark), which profile and rule
(file:line, from running the profile's chain on the copy) and the ports.

su sets no PAM_RHOST: rhost is "" in the entry and "-" in the text line; a python-pam
session with an rhost and a tty (the same hook, another PAM application) shows them.
"""

import json
import os
import shlex
import time

import pytest

from conftest import PORT_C, REPL, parse_view
from netfence import records, setkinds
from netfence.cgroups import cgroup2_mount
from support.login import PamSession
from support.pamsvc import pam_service, wait_until
from support.watcher import Watcher

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users, netns, su")

UDP_PORT = 7019
LOG_RATE = 5                      # [settings] log_rate: the limit's rate; burst 2 x rate
POLICY = """
[profile.fence]
egress = [
  {{ action = "reject", proto = "tcp", ports = [{tcp}] }},
  {{ action = "deny", proto = "udp", ports = [{udp}] }},
]
log = true
account = true
mode = "{mode}"

[[rule]]
users = ["{user}"]
profiles = ["fence"]
scope = "session"
"""

FLOOD = """\
import socket, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start, denied = time.time(), 0
for _ in range(n):
    try:
        s.sendto(b"x", ("127.0.0.1", port))
    except PermissionError:       # EPERM: the local drop
        denied += 1
print(f"denied={denied}")
print(f"elapsed={time.time() - start}")
"""


def load(fence, user, mode="enforce"):
    fence.load(POLICY.format(tcp=PORT_C, udp=UDP_PORT, user=user.name, mode=mode),
               log_rate=LOG_RATE)
    path = f"{fence.nf.config_dir}/netfence.toml"
    with open(path) as handle:
        lines = handle.read().splitlines()
    rule_line = {proto: lines.index(next(l for l in lines if f'proto = "{proto}"' in l)) + 1
                 for proto in ("tcp", "udp")}
    return {proto: f"{path}:{n}" for proto, n in rule_line.items()}


def log_entries(fence, *args):
    out = fence.nf.cli("log", "--json", *args).stdout
    return [json.loads(line) for line in out.splitlines()]


def log_text(fence, *args):
    return fence.nf.cli("log", *args).stdout.splitlines()


def wait_entries(fence, count, *args, timeout=3):
    wait_until(lambda: len(log_entries(fence, *args)) >= count, timeout=timeout,
               interval=0.05, what=f"{count} denial log entries")
    return log_entries(fence, *args)


def record_of(fence, shell):
    shell.out("true")
    for record in records.list_sessions(fence.nf.run_dir):
        if record["ppid"] == shell.proc.pid:
            return record
    raise AssertionError(f"no session record of su {shell.proc.pid}")


@pytest.fixture
def watching(fence):
    watcher = Watcher(fence.nf)
    yield watcher
    code = watcher.stop()
    assert code in (0, None), watcher.log()
    assert "event=error" not in watcher.log(), watcher.log()


def test_one_denial_is_one_line_naming_who_and_which_rule(fence, user, watching):
    fence.echo()
    where = load(fence, user)
    watching.start()
    assert "event=nflog group=5140" in watching.log(), watching.log()
    with fence.su_shell(user.name) as shell:
        record = record_of(fence, shell)
        assert parse_view(shell.out(fence.view(ports=(PORT_C,))))[str(PORT_C)] == "refused"
        [entry] = wait_entries(fence, 1)
    time.sleep(0.5)                               # nothing more comes
    assert len(log_entries(fence)) == 1
    expected = {"user": user.name, "uid": user.uid, "session": record["key"],
                "service": "su-l", "rhost": record["rhost"], "tty": record["tty"],
                "profile": "fence", "rule": where["tcp"], "rule_number": 1,
                "direction": "egress", "proto": "tcp", "dst": "127.0.0.1",
                "dport": PORT_C, "verdict": "reject", "mode": "enforce",
                "cgroup_id_low32": record["cgroup_id"] & 0xFFFFFFFF}
    assert {k: entry[k] for k in expected} == expected
    assert entry["src"] == "127.0.0.1" and isinstance(entry["sport"], int)
    # the session is closed now: the stored line still names it, filters find it
    [line] = log_text(fence, "--session", record["key"])
    for part in (f"{user.name}({user.uid})", f"session={record['key']}", "service=su-l",
                 "rhost=-", "profile=fence", f"rule={where['tcp']}", "egress tcp",
                 f"-> 127.0.0.1:{PORT_C}", "reject"):
        assert part in line, (part, line)
    assert log_text(fence, "--user", user.name, "--profile", "fence", "--since", "1h") \
        == [line]
    assert log_text(fence, "--profile", "other") == []
    bad = fence.nf.cli("log", "--user", "no-such-user-nf", check=False)
    assert bad.returncode == 2 and "no such user" in bad.stderr
    bad = fence.nf.cli("log", "--since", "last tuesday", check=False)
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_a_session_that_closes_right_after_its_denial_is_still_named(fence, user, watching):
    fence.echo()
    load(fence, user)
    watching.start()
    out = fence.su(user.name, fence.view(ports=(PORT_C,)))   # open, deny, close at once
    assert parse_view(out.stdout)[str(PORT_C)] == "refused", out.stderr
    [entry] = wait_entries(fence, 1)
    [closed] = [r for r in records.list_closed(fence.nf.run_dir)
                if r["cgroup_id"] & 0xFFFFFFFF == entry["cgroup_id_low32"]]
    assert (entry["session"], entry["user"], entry["service"]) == (
        closed["key"], user.name, "su-l")


def test_a_flood_of_denials_is_rate_limited_and_counted_in_full(fence, user, watching):
    load(fence, user)
    watching.start()
    script = f"{fence.nf.root}/flood.py"
    with open(script, "w") as handle:
        handle.write(FLOOD)
    os.chmod(script, 0o644)
    attempts = 10_000
    with fence.su_shell(user.name) as shell:
        record = record_of(fence, shell)
        out = parse_view(shell.out(f"/usr/bin/python3 -I -S {script} {attempts} "
                                   f"{UDP_PORT} | tr ' ' '\\n'"))
        assert int(out["denied"]) == attempts
        elapsed = float(out["elapsed"])
        time.sleep(1.0)                           # the last copies reach watch
        entries = log_entries(fence, "--session", record["key"])
        burst = 2 * LOG_RATE
        assert 1 <= len(entries) <= burst + LOG_RATE * (elapsed + 0.2), (
            len(entries), elapsed)
        assert {(e["proto"], e["dport"], e["verdict"]) for e in entries} == {
            ("udp", UDP_PORT, "deny")}
        key = setkinds.SCG.key(record["cgroup_id"])
        code = ("import json, sys; from netfence.counters import read_counters; "
                "print(json.dumps(read_counters(keys=json.loads(sys.argv[1]))))")
        import sys
        got = json.loads(fence.netns.run([sys.executable, "-c", code,
                                          json.dumps({"denied-fence": [key]})]).stdout)
        assert got["denied-fence"][key][0] == attempts
    print(f"flood: {attempts} denials in {elapsed:.3f} s -> {len(entries)} log lines")


def test_monitor_mode_lets_through_and_logs_would_deny(fence, user, watching):
    fence.echo()
    load(fence, user, mode="monitor")
    watching.start()
    with fence.su_shell(user.name) as shell:
        record = record_of(fence, shell)
        out = shell.out(fence.probe_cmd(UDP_PORT, proto="udp", timeout=0.3))
        # let through: nobody listens, the stack answers port unreachable (enforced,
        # the drop would say "dropped")
        assert out.strip() == "refused"
        assert parse_view(shell.out(fence.view(ports=(PORT_C,))))[str(PORT_C)] == "ok"
        entries = wait_entries(fence, 2, "--session", record["key"])
    verdicts = {(e["proto"], e["verdict"], e["mode"]) for e in entries}
    assert ("udp", "would deny", "monitor") in verdicts, entries
    assert ("tcp", "would reject", "monitor") in verdicts, entries
    assert any(line.endswith(" would deny") for line in log_text(fence))


def test_a_pam_session_names_its_rhost_and_tty(fence, user, watching):
    fence.echo()
    where = load(fence, user)
    watching.start()
    with pam_service(session_lines=[fence.pam_line()]) as svc:
        with PamSession(svc.name, user, rhost="203.0.113.9", tty="pts/7",
                        netns=fence.netns) as session:
            [record] = [r for r in records.list_sessions(fence.nf.run_dir)
                        if r["ppid"] == session.pid]
            cgroup = cgroup2_mount() + record["cgroup"]
            assert fence.nf.probe("tcp", "127.0.0.1", PORT_C, uid=user.uid,
                                  cgroup=cgroup) == "refused"
            [entry] = wait_entries(fence, 1)
    assert (entry["session"], entry["service"], entry["rhost"], entry["tty"],
            entry["rule"]) == (record["key"], svc.name, "203.0.113.9", "pts/7", where["tcp"])
    [line] = log_text(fence)
    assert f"service={svc.name} rhost=203.0.113.9 tty=pts/7 profile=fence" in line, line


def test_nested_logins_sharing_a_cgroup_name_the_user_and_no_session(fence, user, watching):
    """`su USER` inside USER's own session joins its cgroup: the copy's mark cannot
    tell the two sessions apart, so the entry names the user, no session, and both
    keys (before the fix: the newest login, whoever sent the packet)."""
    fence.echo()
    load(fence, user)
    watching.start()
    stack = fence.stack()
    with fence.su_shell(user.name, stacks={"su-l": stack, "su": stack}) as shell:
        outer = record_of(fence, shell)
        shell.send(f"su {user.name} -c {shlex.quote(REPL)}")
        shell.out("true")
        keys = sorted(r["key"] for r in records.list_sessions(fence.nf.run_dir))
        assert len(keys) == 2 and outer["key"] in keys
        # from the outer shell's cgroup, sent by the nested shell: either way, shared
        assert parse_view(shell.out(fence.view(ports=(PORT_C,))))[str(PORT_C)] == "refused"
        [entry] = wait_entries(fence, 1)
        shell.send("exit")
        status, _ = shell.wait_end()
        assert status == 0
    assert (entry["user"], entry["uid"], entry["session"]) == (user.name, user.uid, None)
    assert entry["shared_cgroup"] == keys
    [line] = log_text(fence)
    assert f"shared_cgroup={','.join(keys)}" in line and "session=-" in line, line
