"""Closed records (run_dir/closed) and the totals a close reads (no root: kernel,
cgroups and counters replaced, as in test_sessions_intent)."""

import os
import sys
import types

import pytest

from netfence import collect, hooklog, plan, records, records_closed, sessions
from netfence.errors import KernelError, StateError
from test_sessions_intent import INFO, Kernel

SCG = "1000000000000000"         # cgroup id 0x10, host order (Kernel.open_cgroup)
PROFILES = {"web": {"egress": True, "ingress": True, "uid_set": "uid-web",
                    "ucg_set": "ucg-web", "scg_set": "scg-web", "denied_set": "denied-web"}}
COUNTING = {"profiles": PROFILES, "settings": {"cgroup_base": "nf"}, "templates": None,
            "account": {"out": "acct-out", "in": "acct-in"}}
PLAIN = {"profiles": {"web": {k: v for k, v in PROFILES["web"].items()
                              if k != "denied_set"}},
         "settings": {"cgroup_base": "nf"}, "templates": None}


class Counters:
    """A fake netfence.counters: answers from `values`, records what was asked."""

    def __init__(self, values=None, error=None):
        self.values, self.error, self.asked = values or {}, error, []

    def read_counters(self, sets=None, keys=None, table="netfence"):
        self.asked.append(keys)
        if self.error:
            raise self.error
        return {s: {k: self.values[s][k] for k in ks if k in self.values.get(s, {})}
                for s, ks in keys.items() if s in self.values}


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    return Kernel(str(tmp_path / "run"), monkeypatch)


def install(monkeypatch, counters, kernel=None):
    module = types.ModuleType("netfence.counters")
    def read(*args, **kwargs):
        if kernel is not None:
            kernel.calls.append(("read", kwargs.get("keys"), None))
        return counters.read_counters(*args, **kwargs)
    module.read_counters = read
    monkeypatch.setitem(sys.modules, "netfence.counters", module)


def open_close(kernel, login=COUNTING):
    record = sessions.open_session(kernel.run_dir, login, INFO, [], ["web"], ppid=os.getpid())
    return record, sessions.close_session(kernel.run_dir, record["key"], pids=(os.getpid(),))


VALUES = {"acct-out": {SCG: (10, 1400)}, "acct-in": {SCG: (8, 900)},
          "denied-web": {SCG: (3, 180)}}


def test_a_counting_close_reads_its_own_elements_before_destroying(kernel, monkeypatch):
    counters = Counters(VALUES)
    install(monkeypatch, counters, kernel)
    record, result = open_close(kernel)
    assert counters.asked == [{"acct-out": [SCG], "acct-in": [SCG], "denied-web": [SCG]}]
    assert [c[0] for c in kernel.calls] == ["add", "read", "destroy"]
    assert result["totals"] == {"sent_bytes": 1400, "sent_packets": 10, "recv_bytes": 900,
                                "recv_packets": 8, "denied": {"web": 3}}
    (closed,) = records.list_closed(kernel.run_dir)
    assert closed["totals"] == result["totals"] and closed["key"] == record["key"]
    assert closed["closed_at"] >= record["opened_at"]
    assert hooklog.totals_fields(result) == {
        "sent_bytes": 1400, "recv_bytes": 900, "sent_packets": 10, "recv_packets": 8,
        "denied": "web:3"}


def test_a_close_without_accounting_reads_nothing_and_imports_nothing(kernel, monkeypatch):
    monkeypatch.delitem(sys.modules, "netfence.counters", raising=False)
    _record, result = open_close(kernel, PLAIN)
    assert "netfence.counters" not in sys.modules
    assert result["totals"] is None and result["totals_error"] is None
    assert hooklog.totals_fields(result) == {}
    (closed,) = records.list_closed(kernel.run_dir)
    assert "totals" not in closed


@pytest.mark.parametrize("error", [KernelError("read counters", 105),
                                   sessions.NetfenceError("timed out after 2000 ms"),
                                   OSError(24, "Too many open files")])
def test_a_failed_read_never_stops_the_close(kernel, monkeypatch, error):
    install(monkeypatch, Counters(error=error))
    record, result = open_close(kernel)
    assert kernel.calls[-1][0] == "destroy" and kernel.calls[-1][1]   # elements still go
    assert records.list_sessions(kernel.run_dir) == []
    fields = hooklog.totals_fields(result)
    assert fields["totals"] == "unknown" and str(error) in fields["totals_error"]
    assert "totals" not in records.list_closed(kernel.run_dir)[0]


def test_elements_gone_from_the_kernel_are_unknown_totals_not_zero(kernel, monkeypatch):
    install(monkeypatch, Counters({}))
    _record, result = open_close(kernel)
    assert result["totals"] is None and hooklog.totals_fields(result)["totals"] == "unknown"


def test_a_full_run_dir_loses_the_history_not_the_close(kernel, monkeypatch):
    install(monkeypatch, Counters(VALUES))
    def full(*args, **kwargs):
        raise StateError("write closed/x: No space left on device")
    monkeypatch.setattr(records_closed, "keep_closed", full)
    _record, result = open_close(kernel)
    assert "No space" in result["history_error"]
    assert kernel.calls[-1][0] == "destroy" and records.list_sessions(kernel.run_dir) == []


def test_a_closed_record_holds_no_element_and_is_never_live(kernel, monkeypatch):
    install(monkeypatch, Counters(VALUES))
    record, _ = open_close(kernel)
    (closed,) = records.list_closed(kernel.run_dir)
    for name in records_closed.DROPPED:
        assert name not in closed
    assert records.list_sessions(kernel.run_dir) == records.list_users(kernel.run_dir) == []
    assert records.live_elements(kernel.run_dir) == {}
    # even copied where live records are, it is not taken for one
    records.write(records.session_path(kernel.run_dir, record["key"]),
                  dict(closed, session_elements=record["session_elements"]))
    assert records.list_sessions(kernel.run_dir) == []
    assert records.live_elements(kernel.run_dir) == {}


def test_a_key_used_again_opens_fresh_and_keeps_both_histories(kernel, monkeypatch):
    install(monkeypatch, Counters(VALUES))
    first, _ = open_close(kernel)
    again = sessions.open_session(kernel.run_dir, PLAIN, INFO, [], ["web"], ppid=os.getpid())
    assert again["key"] == first["key"]
    assert not plan.counted(again["session_elements"])   # nothing from the closed one
    assert "closed_at" not in again and "totals" not in again
    sessions.close_session(kernel.run_dir, again["key"], pids=(os.getpid(),))
    names = records.names(kernel.run_dir, "closed")
    assert names == sorted([first["key"], first["key"] + "-2"])


def test_a_close_loop_is_capped_and_evicts_the_looping_uid_first(tmp_path):
    run_dir = str(tmp_path / "run")
    records.ensure_dirs(run_dir)
    victim = {"key": "1-1", "uid": 1001, "cgroup_id": 5, "opened_at": 0.0}
    records_closed.keep_closed(run_dir, victim, 1.0, cap=20)
    for n in range(100):
        records_closed.keep_closed(run_dir, {"key": f"{n + 2}-1", "uid": 2000,
                                             "cgroup_id": n, "opened_at": 2.0},
                                   2.0 + n, cap=20)
        assert len(records.names(run_dir, "closed")) <= 20
    kept = records.list_closed(run_dir)
    assert kept[0]["key"] == "1-1"              # the other user's history survived
    assert kept[-1]["key"] == "101-1"           # and the newest of the loop


def test_prune_by_age_and_damage(tmp_path):
    run_dir = str(tmp_path / "run")
    records.ensure_dirs(run_dir)
    for key, closed_at in (("1-1", 100.0), ("2-1", 90000.0)):
        records_closed.keep_closed(run_dir, {"key": key, "uid": 1, "cgroup_id": 1}, closed_at)
    with open(f"{run_dir}/closed/3-1", "wb") as f:
        f.write(b"\0damaged")
    assert records.prune_closed(run_dir, 100.0 + 86400 + 1) == 2
    assert [r["key"] for r in records.list_closed(run_dir)] == ["2-1"]


def test_find_by_cgroup_live_first_then_newest_closed(tmp_path):
    run_dir = str(tmp_path / "run")
    records.ensure_dirs(run_dir)
    big = (7 << 32) | 42                                   # low 32 bits: 42
    records_closed.keep_closed(run_dir, {"key": "1-1", "uid": 1, "cgroup_id": 42,
                                         "opened_at": 10.0}, 20.0)
    records_closed.keep_closed(run_dir, {"key": "2-1", "uid": 2, "cgroup_id": big,
                                         "opened_at": 30.0}, 40.0)
    assert records.find_by_cgroup(run_dir, 42)["key"] == "2-1"
    assert records.find_by_cgroup(run_dir, 42, at=15.0)["key"] == "1-1"
    assert records.find_by_cgroup(run_dir, 42, at=25.0) is None   # nobody had it then
    records.write(records.session_path(run_dir, "3-1"),
                  {"key": "3-1", "uid": 3, "cgroup_id": 42, "opened_at": 50.0})
    assert records.find_by_cgroup(run_dir, 42)["key"] == "3-1"
    # after a reboot ids start again: a denial before the live session opened is
    # not put on it
    assert records.find_by_cgroup(run_dir, 42, at=35.0)["key"] == "2-1"
    assert records.find_by_cgroup(run_dir, 43) is None


def test_gc_and_watch_close_events_carry_the_same_totals_fields():
    record = {"key": "1-2", "uid": 5, "cgroup": "/nf/user-5/session-1-2"}
    result = {"released": True, "cgroup": "removed",
              "totals": {"sent_bytes": 1, "recv_bytes": 2, "sent_packets": 3,
                         "recv_packets": 4, "denied": {}}}
    event = collect.close_event(record, result)
    assert event == {"event": "closed", "session": "1-2", "uid": 5, "released": 1,
                     "cgroup": "removed", "path": "/nf/user-5/session-1-2",
                     "sent_bytes": 1, "recv_bytes": 2, "sent_packets": 3,
                     "recv_packets": 4, "denied": ""}
    assert hooklog.field(event["denied"]) == "-"


def test_hostile_profile_names_cannot_forge_fields():
    fields = hooklog.totals_fields({"totals": {"sent_bytes": 0, "recv_bytes": 0,
                                               "sent_packets": 0, "recv_packets": 0,
                                               "denied": {"x result=ok": 1}}})
    assert hooklog.field(fields["denied"]).startswith("'")
