"""Records are written before every kernel change (issue 7, finding 3), checked by
looking at the records at the moment each batch would be sent (no root: the kernel
and cgroup calls are replaced by recorders)."""

import os
import sys

import pytest

from netfence import collect, plan, records, sessions
from netfence.errors import KernelError

PROFILES = {"web": {"egress": True, "ingress": True, "uid_set": "uid-web",
                    "ucg_set": "ucg-web", "scg_set": "scg-web"}}
LOGIN = {"profiles": PROFILES, "settings": {"cgroup_base": "nf"}, "templates": None}
INFO = {"user": "alice", "uid": 1001, "service": "sshd", "rhost": "", "tty": "ssh"}


class Kernel:
    """Stands in for fastpath and cgroups; remembers the records at each batch."""

    def __init__(self, run_dir, monkeypatch):
        self.run_dir, self.calls = run_dir, []
        self.fail_add = None
        self.busy = False
        self.timed = []                 # the timed argument of each add batch
        fp, cg = sessions.fastpath, sessions.cgroups
        monkeypatch.setattr(fp, "add_elements", self.add)
        monkeypatch.setattr(fp, "destroy_elements", self.destroy)
        monkeypatch.setattr(cg, "cgroup2_mount", lambda: "/fake")
        monkeypatch.setattr(cg, "open_session_cgroup", self.open_cgroup)
        monkeypatch.setattr(cg, "undo_open", lambda *a: None)
        monkeypatch.setattr(cg, "leave", lambda *a: None)
        monkeypatch.setattr(cg, "remove", lambda *a: "removed")
        monkeypatch.setattr(sessions, "has_processes", lambda *a: self.busy)

    def open_cgroup(self, mount, base, uid, key, ppid):
        return {"path": f"/{base}/user-{uid}/session-{key}", "id": 0x10,
                "user_path": f"/{base}/user-{uid}", "user_id": 0x20, "created": True,
                "origin": "/"}

    def state(self):
        return {"sessions": records.list_sessions(self.run_dir),
                "users": records.list_users(self.run_dir)}

    def add(self, templates, elements, timeout_ms, timed=None):
        self.calls.append(("add", elements, self.state()))
        self.timed.append(timed)
        if self.fail_add:
            raise self.fail_add

    def destroy(self, elements, timeout_ms, detach=False):
        self.calls.append(("destroy", elements, self.state()))
        return []


def refuse_destroy(monkeypatch, err):
    """Every destroy batch fails with errno err (105 ENOBUFS, 110 ETIMEDOUT)."""
    def refuse(*args, **kwargs):
        raise KernelError("destroy", err)
    monkeypatch.setattr(sessions.fastpath, "destroy_elements", refuse)


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    run_dir = str(tmp_path / "run")
    return Kernel(run_dir, monkeypatch)


def open_one(kernel, **kw):
    return sessions.open_session(kernel.run_dir, LOGIN, INFO, ["web"], [], ppid=os.getpid(),
                                 **kw)


def test_open_writes_the_records_before_the_batch(kernel):
    record = open_one(kernel)
    (op, elements, state), = kernel.calls
    assert op == "add"
    assert [s["key"] for s in state["sessions"]] == [record["key"]]
    assert state["users"][0]["elements"] == plan.union([elements])
    assert records.live_elements(kernel.run_dir) == plan.union([elements])


def test_close_marks_the_record_closing_before_the_batch(kernel):
    record = open_one(kernel)
    result = sessions.close_session(kernel.run_dir, record["key"], pids=(os.getpid(),))
    assert result["released"] is True
    op, elements, state = kernel.calls[-1]
    assert op == "destroy" and elements == plan.union([record["user_elements"]])
    (closing,) = state["sessions"]
    assert closing["closing"] is True and closing["destroy"] == elements
    assert state["users"] == []                    # released before the batch
    assert records.list_sessions(kernel.run_dir) == []


def test_a_close_whose_batch_fails_is_finished_by_gc(kernel, monkeypatch):
    record = open_one(kernel)
    refuse_destroy(monkeypatch, 105)
    with pytest.raises(KernelError):
        sessions.close_session(kernel.run_dir, record["key"], pids=(os.getpid(),))
    assert records.live_elements(kernel.run_dir) == {}     # nothing for reload to keep
    (left,) = records.list_sessions(kernel.run_dir)
    assert left["closing"] and left["destroy"]
    monkeypatch.setattr(sessions.fastpath, "destroy_elements", kernel.destroy)
    report = collect.gc(kernel.run_dir, mount="/fake")
    assert report.pending == 1, str(report)
    assert kernel.calls[-1][:2] == ("destroy", left["destroy"])
    assert records.list_sessions(kernel.run_dir) == []


def test_a_pending_destroy_spares_what_a_new_login_needs(kernel, monkeypatch):
    record = open_one(kernel)
    refuse_destroy(monkeypatch, 105)
    with pytest.raises(KernelError):
        sessions.close_session(kernel.run_dir, record["key"], pids=(os.getpid(),))
    monkeypatch.setattr(sessions.fastpath, "destroy_elements", kernel.destroy)
    records.delete(records.session_path(kernel.run_dir, record["key"]))
    pending = dict(record, key="1-2", ppid=1, starttime=2, closing=True,
                   destroy=plan.union([record["user_elements"]]))
    records.write(records.session_path(kernel.run_dir, "1-2"), pending)
    again = open_one(kernel)                              # same uid, same elements
    collect.gc(kernel.run_dir, mount="/fake")
    destroyed = [c[1] for c in kernel.calls if c[0] == "destroy"]
    assert destroyed[-1] == {}                            # all still needed
    assert records.live_elements(kernel.run_dir) == plan.union(
        [again["user_elements"]])


def test_an_open_with_an_unknown_outcome_keeps_a_pending_destroy(kernel, monkeypatch):
    kernel.fail_add = KernelError("add", 110)            # ETIMEDOUT: maybe applied
    refuse_destroy(monkeypatch, 110)
    with pytest.raises(KernelError):
        open_one(kernel)
    (left,) = records.list_sessions(kernel.run_dir)
    assert left["closing"] and left["destroy"]
    assert records.list_users(kernel.run_dir) == []
    assert records.live_elements(kernel.run_dir) == {}


def test_an_open_the_kernel_refused_leaves_nothing(kernel):
    kernel.fail_add = KernelError("add", 2)               # ENOENT: nothing applied
    with pytest.raises(KernelError):
        open_one(kernel)
    assert kernel.state() == {"sessions": [], "users": []}
    assert [c[0] for c in kernel.calls] == ["add"]


def test_user_elements_stay_while_the_user_cgroup_has_tasks(kernel):
    record = open_one(kernel)
    kernel.busy = True
    result = sessions.close_session(kernel.run_dir, record["key"], pids=(os.getpid(),))
    assert result["released"] is False
    (user,) = records.list_users(kernel.run_dir)
    assert user["sessions"] == [] and user["live_cgroups"] == ["/nf/user-1001"]
    assert sessions.release_user(kernel.run_dir, 1001, mount="/fake") is False
    kernel.busy = False
    assert sessions.release_user(kernel.run_dir, 1001, mount="/fake") is True
    op, elements, state = kernel.calls[-1]
    assert op == "destroy" and elements == user["elements"]
    assert state["users"][0]["closing"] is True           # intent before the batch
    assert records.list_users(kernel.run_dir) == []


def test_an_undo_spares_what_another_users_record_holds(kernel, monkeypatch):
    """su to another user inside a logind session shares the caller's user slice: the
    failed open of the second user must not take back the caller's user cgroup key."""
    caller_key = plan.union([{"ucg-web": [(0x20).to_bytes(8, sys.byteorder).hex()]}])
    records.ensure_dirs(kernel.run_dir)
    records.write(records.user_path(kernel.run_dir, 1000),
                  {"uid": 1000, "elements": caller_key, "sessions": [], "live_cgroups": []})
    kernel.fail_add = KernelError("add", 110)            # ETIMEDOUT: maybe applied
    with pytest.raises(KernelError):
        open_one(kernel)
    op, elements, state = kernel.calls[-1]
    assert op == "destroy"
    assert (0x20).to_bytes(8, sys.byteorder).hex() not in elements.get("ucg-web", [])
    assert records.list_sessions(kernel.run_dir) == []    # finished: nothing pending


# ---- rules with `time` ---------------------------------------------------------------

LAB = {"egress": True, "ingress": True, "uid_set": "uid-lab", "ucg_set": "ucg-lab",
       "scg_set": "scg-lab", "tuid_set": "tuid-lab", "tucg_set": "tucg-lab",
       "tscg_set": "tscg-lab"}
TIMED_LOGIN = dict(LOGIN, profiles={"web": PROFILES["web"], "lab": LAB})
ALWAYS_OPEN = [[0b1111111, 0, 1440]]
NEVER_OPEN = [[0, 0, 1440]]
TSCG_KEY = (0x10).to_bytes(8, sys.byteorder).hex()


def open_timed(kernel, windows, scope="session", **kw):
    return sessions.open_session(kernel.run_dir, TIMED_LOGIN, INFO, [], [],
                                 ppid=os.getpid(),
                                 timed_rules=((0, scope, ("lab",), windows),), **kw)


def test_a_timed_open_records_before_sending_the_open_window(kernel):
    record = open_timed(kernel, ALWAYS_OPEN)
    (op, elements, state), = kernel.calls
    assert op == "add" and elements == {}
    (timed,) = kernel.timed
    ms = timed["tscg-lab"][TSCG_KEY]
    assert 7 * 86400_000 - 5000 < ms <= 7 * 86400_000            # the horizon
    assert state["sessions"][0]["timed"] == record["timed"]        # recorded first


def test_a_login_outside_its_window_is_recorded_with_nothing_sent(kernel):
    record = open_timed(kernel, NEVER_OPEN)
    assert kernel.timed == [{}]
    assert records.list_sessions(kernel.run_dir)[0]["timed"] == record["timed"]
    sessions.close_session(kernel.run_dir, record["key"], pids=(os.getpid(),))
    op, elements, _ = kernel.calls[-1]
    assert op == "destroy" and elements == {"tscg-lab": [TSCG_KEY]}


def test_a_pending_destroy_spares_a_timed_key_a_live_session_needs(kernel):
    """Attack: an interrupted close of another session (or gc) would otherwise take a
    live session's window restriction away while its window is open."""
    record = open_timed(kernel, ALWAYS_OPEN)
    pending = dict(record, key="1-2", ppid=1, starttime=2, closing=True,
                   destroy={"tscg-lab": [TSCG_KEY], "uid-web": ["01000000"]})
    records.write(records.session_path(kernel.run_dir, "1-2"), pending)
    collect.gc(kernel.run_dir, mount="/fake")
    destroyed = [c[1] for c in kernel.calls if c[0] == "destroy"]
    assert destroyed == [{"uid-web": ["01000000"]}]


def test_a_timed_key_no_window_needs_now_is_destroyed_by_a_pending_destroy(kernel):
    record = open_timed(kernel, NEVER_OPEN)
    pending = dict(record, key="1-2", ppid=1, starttime=2, closing=True,
                   destroy={"tscg-lab": [TSCG_KEY]})
    records.write(records.session_path(kernel.run_dir, "1-2"), pending)
    collect.gc(kernel.run_dir, mount="/fake")
    assert [c[1] for c in kernel.calls if c[0] == "destroy"] == [{"tscg-lab": [TSCG_KEY]}]


def test_an_undo_takes_back_the_timed_keys_it_sent(kernel, monkeypatch):
    kernel.fail_add = KernelError("add", 110)            # ETIMEDOUT: maybe applied
    with pytest.raises(KernelError):
        open_timed(kernel, ALWAYS_OPEN)
    op, elements, _ = kernel.calls[-1]
    assert op == "destroy" and elements == {"tscg-lab": [TSCG_KEY]}
    assert records.list_sessions(kernel.run_dir) == []


def test_a_release_destroys_the_users_timed_keys(kernel):
    record = open_timed(kernel, ALWAYS_OPEN, scope="user")
    (user,) = records.list_users(kernel.run_dir)
    assert user["timed_keys"] == {"tuid-lab": ["e9030000" if sys.byteorder == "little"
                                               else "000003e9"],
                                  "tucg-lab": [(0x20).to_bytes(8, sys.byteorder).hex()]}
    kernel.busy = True
    sessions.close_session(kernel.run_dir, record["key"], pids=(os.getpid(),))
    assert kernel.calls[-1][1] == {}                     # the user stays: so does its key
    kernel.busy = False
    assert sessions.release_user(kernel.run_dir, 1001, mount="/fake") is True
    assert kernel.calls[-1][1] == user["timed_keys"]


def test_timed_sources_are_user_records_not_every_session(tmp_path):
    """Hook cost: under a logind slice every session record was read (150 ms at
    10,000). The user records carry their sessions' user-scope entries: the uid's
    own, and other uids' whose user cgroups include this slice (su)."""
    run = str(tmp_path)
    records.ensure_dirs(run)
    slice_ = "/user.slice/user-1000.slice"
    entry = {"rule": 1, "scope": "user", "profiles": ["web"], "windows": [[127, 0, 60]],
             "elements": {"tucg-web": ["0000000000000020"]}}
    mine = {"uid": 1001, "user": "alice", "elements": {}, "sessions": [],
            "live_cgroups": [slice_], "timed": [entry]}
    caller = dict(mine, uid=1000, user="carol")
    elsewhere = dict(mine, uid=1002, user="bob", live_cgroups=["/user.slice/user-1002.slice"])
    for user in (mine, caller, elsewhere):
        records.write(records.user_path(run, user["uid"]), user)
    from netfence.liveness import proc_starttime
    session = {"key": "9-9", "uid": 1003, "ppid": os.getpid(), "timed": [entry],
               "starttime": proc_starttime(os.getpid()), "opened_at": 1}
    records.write(records.session_path(run, "9-9"), session)   # live, another uid
    record = {"key": "5-6", "uid": 1001, "user_cgroup": slice_, "timed": [entry]}
    sources = sessions._timed_sources(run, record, mine)
    assert sorted(s["uid"] for s in sources) == [1000, 1001]
    own_slice = dict(record, user_cgroup="/nf/user-1001")
    assert sessions._timed_sources(run, own_slice, mine) == [mine]
    assert sessions._timed_sources(run, dict(record, timed=[]), mine) == []


def test_an_open_records_the_boot_it_was_opened_in(kernel):
    """find_by_cgroup trusts the boot id over the clocks (a clock step after the open)."""
    record = open_one(kernel)
    assert record["boot_id"] == records.boot_id() != ""
    assert records.read_session(kernel.run_dir, record["key"])["boot_id"] == records.boot_id()
