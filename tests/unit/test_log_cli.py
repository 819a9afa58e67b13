"""`netfence log` on a store written by denial_log: text and JSON, the filters, exit 2
for an unknown user or an unreadable --since, --follow as a process."""

import json
import os
import signal
import subprocess
import sys
import time

from netfence import cli, denial_log


def entry(n, **extra):
    base = {"time": time.time() - 3600 * n, "user": "root", "uid": 0,
            "session": f"10-{n}", "service": "su-l", "rhost": "", "tty": "pts/1",
            "profile": "web", "rule": "/etc/netfence/a.toml:4", "rule_number": 1,
            "direction": "egress", "proto": "tcp", "src": "10.0.0.1", "dst": "10.0.0.2",
            "sport": 40000, "dport": 25, "verdict": "reject", "mode": "enforce",
            "cgroup_id_low32": 77}
    return {**base, **extra}


def run(capsys, state_dir, *args):
    code = cli.main(["--state-dir", state_dir, "log", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_text_json_and_filters(tmp_path, capsys):
    store = denial_log.DenialLog(str(tmp_path))
    for n in (3, 2, 1):
        store.append(entry(n, profile="db" if n == 2 else "web"))
    code, lines, _ = run(capsys, str(tmp_path))
    assert code == 0 and len(lines) == 3
    assert ("root(0) session=10-3 service=su-l rhost=- tty=pts/1 profile=web "
            "rule=/etc/netfence/a.toml:4 egress tcp 10.0.0.1:40000 -> 10.0.0.2:25 reject"
            ) in lines[0]
    _, lines, _ = run(capsys, str(tmp_path), "--json", "--profile", "web", "--since", "150m")
    assert [json.loads(line)["session"] for line in lines] == ["10-1"]
    _, lines, _ = run(capsys, str(tmp_path), "--user", "root", "--session", "10-2")
    assert len(lines) == 1 and "profile=db" in lines[0]
    _, lines, _ = run(capsys, str(tmp_path), "--user", "4242")
    assert lines == []


def test_a_uid_watch_could_not_name_is_named_when_shown(tmp_path, capsys):
    """watch looks no name up (NSS could hold its loop): the command does, once."""
    store = denial_log.DenialLog(str(tmp_path))
    store.append(entry(1, user=None, session=None))
    store.append(entry(1, user=None, session=None, uid=4294967294))   # no such account
    code, lines, _ = run(capsys, str(tmp_path), "--json")
    shown = [json.loads(line) for line in lines]
    assert code == 0 and [(e["user"], e["uid"]) for e in shown] == [("root", 0),
                                                                   (None, 4294967294)]
    _, lines, _ = run(capsys, str(tmp_path))
    assert lines[0].split()[1].startswith("root(0)")


def test_usage_errors_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, str(tmp_path), "--user", "no-such-user-here")
    assert code == 2 and "no such user" in err
    code, _, err = run(capsys, str(tmp_path), "--since", "tomorrow-ish")
    assert code == 2 and "--since" in err


def test_an_empty_store_prints_nothing(tmp_path, capsys):
    assert run(capsys, str(tmp_path)) == (0, [], "")


def test_follow_prints_new_entries_until_interrupted(tmp_path):
    store = denial_log.DenialLog(str(tmp_path))
    store.append(entry(5))                       # before: not followed
    proc = subprocess.Popen([sys.executable, "-m", "netfence.cli", "--state-dir",
                             str(tmp_path), "log", "--follow", "--json"],
                            stdout=subprocess.PIPE, text=True)
    try:
        path = denial_log.log_path(str(tmp_path))
        deadline = time.monotonic() + 10          # until it has the store open
        while path not in _open_files(proc.pid):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        store.append(entry(0, session="new-1"))
        store.rotate()
        store.append(entry(0, session="new-2"))
        got = [json.loads(proc.stdout.readline())["session"] for _ in range(2)]
        assert got == ["new-1", "new-2"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
    assert os.path.exists(denial_log.log_path(str(tmp_path)) + ".1")


def _open_files(pid):
    names = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            names.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return names
