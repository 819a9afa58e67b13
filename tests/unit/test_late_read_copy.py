"""An egress copy has no kernel timestamp: `at` is when watch read it, and watch's loop
may have been busy for seconds (a slow gc, a big repair). A copy read now was sent
after the recorder last emptied the socket, so its session, closed since, is named."""

import os
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(__file__))

from netfence import records, records_closed, watch_actions            # noqa: E402
from test_denials import packet                                        # noqa: E402
from test_watch_denials import Memory, recorder                        # noqa: E402


def _closed(run, closed_at):
    record = {"key": "10-1", "uid": 1001, "user": "alice", "cgroup_id": 42,
              "opened_at": closed_at - 100, "service": "sshd", "boot_id": "B"}
    records_closed.keep_closed(run, record, closed_at)


def test_find_by_cgroup_counts_from_the_earliest_send_time(tmp_path, monkeypatch):
    monkeypatch.setattr(records_closed, "boot_id", lambda: "B")
    run = str(tmp_path / "run")
    records.ensure_dirs(run)
    _closed(run, 1000.0)
    assert records.find_by_cgroup(run, 42, at=1010.0, uid=1001) is None
    assert records.find_by_cgroup(run, 42, at=1010.0, uid=1001,
                                  sent_after=1001.5)["key"] == "10-1"
    assert records.find_by_cgroup(run, 42, at=1010.0, uid=1001, sent_after=1002.5) is None


def _at(monkeypatch, now):
    monkeypatch.setattr(watch_actions, "time",
                        SimpleNamespace(time=lambda: now, monotonic=time.monotonic))


def test_a_copy_read_late_names_the_session_that_closed_after_the_last_drain(
        tmp_path, monkeypatch):
    monkeypatch.setattr(records_closed, "boot_id", lambda: "B")
    run = str(tmp_path / "run")
    records.ensure_dirs(run)
    now = time.time()
    copy = dict(packet(uid=1001, mark=42), time=None)            # egress: no timestamp
    store = Memory()
    rec, _ = recorder(tmp_path, store, [[], [copy]])
    _at(monkeypatch, now - 6)
    rec.on_readable()                     # emptied the socket 6 s ago
    monkeypatch.undo()
    monkeypatch.setattr(records_closed, "boot_id", lambda: "B")
    _closed(run, now - 5)                 # then the denial, then the logout, 5 s ago
    rec.on_readable()                     # read now: watch's loop was busy
    assert store.appended[0]["session"] == "10-1"


def test_a_read_that_did_not_empty_the_socket_keeps_the_older_drain(tmp_path, monkeypatch):
    copy = dict(packet(uid=1001, mark=42), time=None)
    full = [copy] * watch_actions.PACKETS_PER_WAKEUP
    rec, _ = recorder(tmp_path, Memory(), [[], full, [copy]])
    _at(monkeypatch, 100.0)
    rec.on_readable()
    assert rec.drained == 100.0
    _at(monkeypatch, 200.0)
    rec.on_readable()                     # 64 read: more may wait, sent before 200
    assert rec.drained == 100.0
    _at(monkeypatch, 300.0)
    rec.on_readable()
    assert rec.drained == 300.0
