"""Closed records (run_dir/closed) and the totals a close reads (no root: kernel,
cgroups and counters replaced, as in test_sessions_intent)."""

import os
import sys
import types

import pytest

from netfence import collect, hooklog, plan, records, records_closed, sessions, setkinds
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
    assert "No space" in hooklog.totals_fields(result)["history_error"]
    assert hooklog.totals_fields(result)["sent_bytes"] == 1400    # the totals still said
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
    second = f"{first['key']}-{again['cgroup_id']}-{int(again['opened_at'] * 1e6)}"
    assert names == sorted([first["key"], second])
    assert records.list_closed(kernel.run_dir)[0]["opened_at"] == first["opened_at"]


def test_gc_caps_a_close_loop_and_evicts_the_looping_uid_first(tmp_path):
    run_dir = str(tmp_path / "run")
    records.ensure_dirs(run_dir)
    victim = {"key": "1-1", "uid": 1001, "cgroup_id": 5, "opened_at": 0.0}
    records_closed.keep_closed(run_dir, victim, 1.0)
    for n in range(100):
        records_closed.keep_closed(run_dir, {"key": f"{n + 2}-1", "uid": 2000,
                                             "cgroup_id": n, "opened_at": 2.0}, 2.0 + n)
        if n % 10 == 9:                 # gc: every minute, closes only add between
            records_closed.prune_closed(run_dir, 200.0, cap=20)
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


def test_gc_prunes_the_closed_records_and_their_temp_files(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    records.ensure_dirs(run_dir)
    records_closed.keep_closed(run_dir, {"key": "1-1", "uid": 1, "cgroup_id": 1}, 5.0)
    open(f"{run_dir}/closed/2-1.tmp.x", "wb").close()      # a killed writer's
    report = collect.gc(run_dir, mount=str(tmp_path))
    assert report.pruned == 1 and report.temp_files == 1
    assert os.listdir(f"{run_dir}/closed") == []


def test_a_closed_run_tree_keeps_its_totals_and_history(tmp_path, monkeypatch):
    from netfence import runtree
    run_dir = str(tmp_path / "run")
    records.ensure_dirs(run_dir)
    key = setkinds.SCG.key(0x30)
    tree = {"key": "7-8", "kind": "run", "pid": 7, "starttime": 8, "uid": 1001,
            "user": "alice", "cgroup": "/nf/run/t-7-8", "cgroup_id": 0x30, "created": True,
            "session_elements": {"acct-out": [key], "acct-in": [key], "scg-p": [key]},
            "started": 1.0, "boot_id": records_closed.boot_id()}     # as run_tree opens it
    records.write(records.run_path(run_dir, "7-8"), tree)
    destroyed = []
    monkeypatch.setattr(runtree, "has_processes", lambda *a: False)
    monkeypatch.setattr(runtree.fastpath, "destroy_elements",
                        lambda elements, timeout_ms: destroyed.append(elements) or [])
    monkeypatch.setattr(runtree.cgroups, "remove", lambda *a: "removed")
    counters = Counters({"acct-out": {key: (2, 200)}, "acct-in": {key: (1, 60)}})
    install(monkeypatch, counters)
    assert runtree.close_tree(run_dir, "7-8", "/fake") == "closed"
    assert counters.asked == [{"acct-out": [key], "acct-in": [key]}]
    (closed,) = records.list_closed(run_dir)
    assert closed["kind"] == "run" and closed["totals"]["sent_bytes"] == 200
    assert destroyed and records.list_runs(run_dir) == []
    assert records.find_by_cgroup(run_dir, 0x30)["key"] == "7-8"


def test_a_close_that_stopped_before_its_history_is_finished_with_it(kernel, monkeypatch):
    install(monkeypatch, Counters(VALUES))
    record = sessions.open_session(kernel.run_dir, COUNTING, INFO, [], ["web"],
                                   ppid=os.getpid())
    real = records_closed.keep_closed
    def crash(*args, **kwargs):
        raise KeyboardInterrupt          # the hook killed between intent and history
    monkeypatch.setattr(records_closed, "keep_closed", crash)
    with pytest.raises(KeyboardInterrupt):
        sessions.close_session(kernel.run_dir, record["key"], pids=(os.getpid(),))
    assert records.list_closed(kernel.run_dir) == []
    monkeypatch.setattr(records_closed, "keep_closed", real)
    assert sessions.finish_session(kernel.run_dir, record["key"])      # gc's step
    (closed,) = records.list_closed(kernel.run_dir)
    assert closed["totals"]["sent_bytes"] == 1400 and "history" not in closed
    assert kernel.calls[-1][0] == "destroy"


def test_a_close_that_stopped_after_its_history_keeps_it_once(kernel, monkeypatch):
    install(monkeypatch, Counters(VALUES))
    record = sessions.open_session(kernel.run_dir, COUNTING, INFO, [], ["web"],
                                   ppid=os.getpid())
    def refuse(*args, **kwargs):
        raise KernelError("destroy", 105)
    monkeypatch.setattr(sessions.fastpath, "destroy_elements", refuse)
    with pytest.raises(KernelError):
        sessions.close_session(kernel.run_dir, record["key"], pids=(os.getpid(),))
    monkeypatch.setattr(sessions.fastpath, "destroy_elements", kernel.destroy)
    assert sessions.finish_session(kernel.run_dir, record["key"])
    assert records.names(kernel.run_dir, "closed") == [record["key"]]


@pytest.mark.parametrize("error", ["timeout", OSError(24, "Too many open files")])
def test_any_failure_keeping_the_history_never_stops_the_close(kernel, monkeypatch, error):
    from netfence.hook import HookTimeout
    error = HookTimeout("timed out after 2000 ms") if error == "timeout" else error
    install(monkeypatch, Counters(VALUES))
    def failing(*args, **kwargs):
        raise error
    monkeypatch.setattr(records_closed, "keep_closed", failing)
    _record, result = open_close(kernel)
    assert str(error) in result["history_error"]
    assert kernel.calls[-1][0] == "destroy" and kernel.calls[-1][1]
    assert records.list_sessions(kernel.run_dir) == []


def test_a_close_never_lists_or_prunes_the_closed_records(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    records.ensure_dirs(run_dir)
    def listing(*args):
        raise OSError(12, "Cannot allocate memory")
    monkeypatch.setattr(records_closed.posix, "listdir", listing)
    monkeypatch.setattr(records, "names", listing)
    for n in range(64):
        records_closed.keep_closed(run_dir, {"key": f"{n}-1", "uid": 2000, "cgroup_id": n},
                                   float(n))


def test_an_earlier_failure_in_gc_does_not_skip_the_prune(tmp_path, monkeypatch):
    """gc (every minute in watch) is the only bound on closed/: a bug that raises in an
    earlier step must not leave it growing."""
    run_dir = str(tmp_path / "run")
    records.ensure_dirs(run_dir)
    records_closed.keep_closed(run_dir, {"key": "1-1", "uid": 1, "cgroup_id": 1}, 5.0)

    def broken(run_dir, strict=False):
        raise RuntimeError("a bug in a step")
    monkeypatch.setattr(collect.records, "list_users", broken)
    with pytest.raises(RuntimeError, match="a bug in a step"):
        collect.gc(run_dir, mount=str(tmp_path))
    assert os.listdir(f"{run_dir}/closed") == []


def test_a_failing_prune_is_reported_and_gc_goes_on(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    records.ensure_dirs(run_dir)

    def full(run_dir, now):
        raise StateError("closed/: not ours")
    monkeypatch.setattr(collect.records, "prune_closed", full)
    report = collect.gc(run_dir, mount=str(tmp_path))
    assert report.pruned == 0 and any("closed/" in e for e in report.errors)
