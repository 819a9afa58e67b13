"""doctor's pure helpers and verify's choice of ports."""

import os

from netfence import doctor, doctor_checks
from netfence.apply import Paths
from netfence.compiler import compile_policy
from netfence.policy import load_policy
from netfence.verify import pick_ports, verdict

MOUNTINFO = ("30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,"
             "favordynmods,memory_recursiveprot\n"
             "31 24 0:27 / /proc rw - proc proc rw\n")


def test_mount_options_of_the_cgroup2_mount():
    options = doctor_checks.mount_options(MOUNTINFO, "/sys/fs/cgroup")
    assert "favordynmods" in options and "nsdelegate" in options
    assert doctor_checks.mount_options(MOUNTINFO, "/elsewhere") == set()


def test_a_watch_is_recognised_for_its_own_directories_only():
    paths = Paths("/etc/netfence", "/var/lib/netfence", "/run/netfence")
    assert doctor_checks.is_watch_of(["/usr/sbin/netfence", "watch"], paths)
    assert doctor_checks.is_watch_of(["/opt/v/bin/python3", "/opt/v/bin/netfence", "watch",
                                      "--gc-interval", "5"], paths)
    assert not doctor_checks.is_watch_of(["/usr/sbin/netfence", "status"], paths)
    assert not doctor_checks.is_watch_of(["vim", "watch"], paths)
    other = Paths("/x/etc", "/x/state", "/x/run")
    assert not doctor_checks.is_watch_of(["/usr/sbin/netfence", "watch"], other)
    assert doctor_checks.is_watch_of(["python3", "-m", "netfence.cli", "--state-dir",
                                      "/x/state", "--run-dir", "/x/run/", "watch"], other)


def test_gc_without_systemd_needs_the_cron_file_and_a_cron_daemon(tmp_path):
    cron = tmp_path / "netfence"
    name, ok, detail, fix = doctor_checks._check_gc(str(tmp_path / "no-systemd"), str(cron))
    assert not ok and "no " in detail and fix
    cron.write_text("* * * * * root netfence gc\n")
    name, ok, detail, fix = doctor_checks._check_gc(str(tmp_path / "no-systemd"), str(cron))
    assert ok == doctor_checks.cron_running()


def test_log_sink_is_a_problem_when_nothing_listens(tmp_path):
    ((name, ok, detail, fix),) = doctor_checks.check_log_sink(str(tmp_path / "log"))
    assert not ok and "nothing listens" in detail and fix
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "log"))
        ((name, ok, detail, fix),) = doctor_checks.check_log_sink(str(tmp_path / "log"))
    assert ok


def test_text_has_one_line_per_check_and_the_fix_of_each_problem():
    text = doctor.format_text([
        {"check": "table", "ok": False, "detail": "missing", "fix": "netfence reload"},
        {"check": "policy", "ok": True, "detail": "1 files", "fix": ""}])
    assert text.splitlines() == ["problem table: missing", "          -> netfence reload",
                                 "ok      policy: 1 files", "2 checks, 1 problem(s)"]


POLICY = """
[profile.web]
egress = [ { action = "allow", proto = "tcp", ports = [80, 443] },
           { action = "allow", to = ["loopback"], proto = "tcp", ports = [1000] } ]
egress_default = "reject"

[profile.no-ssh]
egress = [ { action = "deny", proto = "tcp", ports = [22] } ]

[profile.watching]
mode = "monitor"
egress = [ { action = "reject", proto = "tcp" } ]

[[rule]]
users = ["*"]
profiles = ["web", "no-ssh", "watching"]
scope = "session"
"""


def snapshot(tmp_path):
    (tmp_path / "netfence.toml").write_text(POLICY)
    return compile_policy(load_policy(str(tmp_path), check_ownership=False))


def test_verdicts_follow_the_compiled_chains(tmp_path):
    table = snapshot(tmp_path)["table"]
    assert verdict(table, "web", 80) == "allow"
    assert verdict(table, "web", 1000) == "allow"
    assert verdict(table, "web", 22) == "reject"
    assert verdict(table, "no-ssh", 22) == "deny"
    assert verdict(table, "no-ssh", 80) == "allow"


def test_ports_picked_for_a_session(tmp_path):
    applied = snapshot(tmp_path)
    assert pick_ports(applied, ["no-ssh"]) == (22, "deny", 47000)   # a quiet port first
    denied, action, allowed = pick_ports(applied, ["web", "no-ssh"])
    assert (denied, action, allowed) == (22, "reject", 80)
    # a monitor profile denies nothing, and its "reject" makes no port allowed by all
    assert pick_ports(applied, ["watching"])[0] is None
    assert pick_ports(applied, []) == (None, None, 47000)
    assert os.path.basename(__file__)


def test_the_policy_own_ports_come_first(tmp_path):
    (tmp_path / "netfence.toml").write_text(
        '[profile.p]\negress = [ { action = "reject", proto = "tcp", ports = [7002] },\n'
        '  { action = "deny", proto = "tcp", ports = ["9000-9005"] } ]\n'
        '[[rule]]\nusers = ["*"]\nprofiles = ["p"]\nscope = "session"\n')
    applied = compile_policy(load_policy(str(tmp_path), check_ownership=False))
    from netfence.verify import policy_ports
    assert policy_ports(applied["table"], ["p"]) == [7002, 9000, 9005]
    assert pick_ports(applied, ["p"]) == (7002, "reject", 47000)


def test_the_login_check_judges_the_probes_and_the_leftovers():
    from netfence.doctor_login import ALLOWED_PORT, DENIED_PORT
    from netfence.doctor_login_child import _judge
    seen = {"fenced": True, "records": 1, "cgroup": "/b/user-1/session-k",
            "results": {DENIED_PORT: "refused", ALLOWED_PORT: "ok"}}
    assert _judge(seen, [])["ok"]
    for results, words in (({DENIED_PORT: "ok", ALLOWED_PORT: "ok"}, "was ok, not refused"),
                           ({DENIED_PORT: "dropped", ALLOWED_PORT: "ok"}, "was dropped"),
                           ({DENIED_PORT: "refused", ALLOWED_PORT: "refused"},
                            f"allowed port {ALLOWED_PORT} was refused")):
        verdict = _judge({**seen, "results": results}, [])
        assert not verdict["ok"] and words in verdict["detail"], verdict
    verdict = _judge(seen, ["session records"])
    assert not verdict["ok"] and "left session records" in verdict["detail"]
    verdict = _judge({**seen, "fenced": False, "records": 0}, [])
    assert not verdict["ok"] and "not fenced" in verdict["detail"]


def test_the_login_check_cleans_only_what_it_made(tmp_path, monkeypatch):
    from netfence import doctor_login
    monkeypatch.setattr(doctor_login, "SYSTEM_PAM_DIR", str(tmp_path))
    theirs = tmp_path / "netfence-doctor-0000"
    theirs.write_text("someone else's\n")
    root = tmp_path / "root"
    root.mkdir()
    names = {"user": "nfdoctor-nobody", "service": theirs.name, "root": str(root),
             "base": "netfence-doctor-0000-none", "made": []}
    assert doctor_login._clean(names) == []
    assert theirs.exists() and root.exists()
    names["made"] = ["service", "root"]
    assert doctor_login._clean(names) == []
    assert not theirs.exists() and not root.exists()


def test_no_cgroup2_mount_is_a_problem(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("31 24 0:27 / /proc rw - proc proc rw\n")
    ((name, ok, detail, fix),) = doctor_checks.check_cgroup(str(mountinfo))
    assert name == "cgroup2" and not ok and "no cgroup2" in detail and fix


def test_favordynmods_on_is_said_and_costs_no_measurement(tmp_path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    (_, (name, ok, detail, fix)) = doctor_checks.check_cgroup(str(mountinfo))
    assert name == "cgroup2 favordynmods" and ok and detail.startswith("on") and not fix


def test_a_kernel_probe_that_cannot_run_is_a_problem(tmp_path, monkeypatch):
    import shutil
    (tmp_path / "unshare").symlink_to(shutil.which("unshare"))
    monkeypatch.setenv("PATH", str(tmp_path))          # unshare, but no nft
    ((name, ok, detail, fix),) = doctor_checks.check_kernel()
    assert name == "kernel nf_tables" and not ok and fix


def test_the_login_check_needs_python_pam_and_a_wired_hook(tmp_path, monkeypatch):
    import importlib.util
    from netfence import doctor_login
    ((name, ok, detail, fix),) = doctor_login.check_login(str(tmp_path))
    assert not ok and "no hook line" in detail
    (tmp_path / "su").write_text("session required pam_exec.so seteuid quiet "
                                 "/usr/lib/netfence/netfence-hook\n")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    ((name, ok, detail, fix),) = doctor_login.check_login(str(tmp_path))
    assert not ok and "python-pam is not installed" in detail and "--no-login" in fix
