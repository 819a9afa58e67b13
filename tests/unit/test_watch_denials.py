"""watch_actions.DenialRecorder without a kernel: a store that cannot be written (a
full disk) loses entries, counted and said once, and never stops watch; an nflog
overrun is said with its count; a copy another program logged is no entry."""

import errno
import pwd
import selectors
from types import SimpleNamespace

from netfence import watch_actions

from test_denials import packet, snapshot


class FakeNflog:
    def __init__(self, batches, lost=0):
        self.batches, self.lost_bursts = list(batches), lost

    def read(self, limit=None):
        self.limits = getattr(self, "limits", []) + [limit]
        return self.batches.pop(0)


class FullDisk:
    def __init__(self):
        self.appended = []

    def append(self, entry):
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
        pass


class Memory(FullDisk):
    def append(self, entry):
        self.appended.append(entry)


def recorder(tmp_path, store, batches, lost=0):
    lines = []
    paths = SimpleNamespace(state_dir=str(tmp_path), run_dir=str(tmp_path / "run"))
    rec = watch_actions.DenialRecorder(paths, selectors.DefaultSelector(),
                                       lambda **f: lines.append(f))
    rec.store, rec.socket = store, FakeNflog(batches, lost)
    rec.snapshot_stamp, rec.snapshot = None, snapshot()
    rec._snapshot = lambda: rec.snapshot
    return rec, lines


def test_a_full_disk_loses_entries_counted_and_said_once(tmp_path):
    rec, lines = recorder(tmp_path, FullDisk(), [[packet("netfence web nocg")] * 3])
    rec.on_readable()
    assert rec.counts == {"denials": 0, "denials_lost": 3, "overruns": 0}
    warnings = [l for l in lines if l.get("event") == "warning"]
    assert len(warnings) == 1 and "No space left" in warnings[0]["warning"]


def test_an_overrun_is_said_with_its_count_and_foreign_copies_skipped(tmp_path):
    store = Memory()
    rec, lines = recorder(tmp_path, store, [[packet("netfence web nocg"),
                                             packet("ulogd something")]], lost=2)
    rec.on_readable()
    assert rec.counts == {"denials": 1, "denials_lost": 0, "overruns": 2}
    assert [l["overruns"] for l in lines if "overruns" in l] == [2]
    assert store.appended[0]["profile"] == "web"


def test_log_group():
    assert watch_actions.log_group(snapshot()) == 5140
    assert watch_actions.log_group(None) is None
    assert watch_actions.log_group({"table": {"rules": [{"exprs": [["counter"]]}]}}) is None


def test_no_logging_profile_binds_nothing_and_says_so_once(tmp_path):
    rec, lines = recorder(tmp_path, Memory(), [])
    rec.socket = None
    rec.snapshot = {"table": {"rules": []}}
    rec.sync()
    rec.sync()
    assert rec.socket is None
    assert lines == [{"event": "nflog", "group": "-", "reason": "no profile logs denials"}]


def test_a_flood_from_one_session_looks_its_record_up_once(tmp_path, monkeypatch):
    calls = []
    record = {"key": "1-2", "user": "alice", "uid": 1001, "service": "su"}
    monkeypatch.setattr(watch_actions.records, "find_by_cgroup",
                        lambda run_dir, low32, at=None, uid=None, sent_after=None:
                        calls.append(low32) or record)
    store = Memory()
    rec, _ = recorder(tmp_path, store, [[packet()] * 50 + [packet(mark=0x99)]])
    rec.on_readable()
    assert calls == [0xABCD, 0x99]
    assert {e["session"] for e in store.appended} == {"1-2"} and len(store.appended) == 51


def test_the_recorder_never_asks_nss(tmp_path, monkeypatch):
    """A slow NSS backend (LDAP down: seconds per lookup) must not hold watch's loop,
    which also repairs the table: a copy no record names keeps its uid only."""
    def getpwuid(uid):
        raise AssertionError("watch looked a name up")
    monkeypatch.setattr(pwd, "getpwuid", getpwuid)
    store = Memory()
    rec, _ = recorder(tmp_path, store, [[packet("netfence web nocg")] * 20])
    rec.on_readable()
    assert len(store.appended) == 20
    assert {(e["user"], e["uid"]) for e in store.appended} == {(None, 1001)}


def test_a_burst_is_read_a_bounded_number_at_a_time(tmp_path):
    """The loop goes back to select after PACKETS_PER_WAKEUP copies: a table check or a
    close is never held behind a flood of denials."""
    store = Memory()
    rec, _ = recorder(tmp_path, store, [[packet()]])
    rec.on_readable()
    assert rec.socket.limits == [watch_actions.PACKETS_PER_WAKEUP]
