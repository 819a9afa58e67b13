"""Session and user records, and the liveness checks close and gc rely on (no root)."""

import os

import pytest

from netfence import collect, formats, liveness, plan, records
from netfence.errors import StateError


@pytest.fixture
def run_dir(tmp_path):
    path = str(tmp_path / "run")
    records.ensure_dirs(path)
    return path


def session(key="100-200", uid=1001, **extra):
    record = {"key": key, "user": "alice", "uid": uid, "service": "sshd", "rhost": "",
              "tty": "ssh", "ppid": int(key.split("-")[0]), "starttime": int(key.split("-")[1]),
              "cgroup": "/nf/user-1001/session-" + key, "cgroup_id": 77, "created": True,
              "session_elements": {"scg-web": ["4d00000000000000"]},
              "user_elements": {"uid-web": ["e9030000"]}, "opened_at": 1.5}
    record.update(extra)
    return record


def test_round_trip(run_dir):
    record = session()
    records.write(records.session_path(run_dir, record["key"]), record)
    assert records.read_session(run_dir, "100-200") == dict(record, format=formats.RECORDS)
    assert records.exists(run_dir, "100-200")
    assert records.list_sessions(run_dir)[0]["key"] == "100-200"
    mode = os.stat(records.session_path(run_dir, "100-200")).st_mode & 0o777
    assert mode == 0o600


def test_absent_and_damaged(run_dir):
    assert records.read_session(run_dir, "1-2") is None
    path = records.session_path(run_dir, "1-2")
    with open(path, "wb") as handle:
        handle.write(b"\x00not marshal")
    with pytest.raises(StateError):
        records.read_session(run_dir, "1-2")
    assert records.list_sessions(run_dir) == []          # damaged ones are skipped


@pytest.mark.parametrize("key", ["", "../x", "1/2", "a-b", "1-2\n"])
def test_keys_are_checked(run_dir, key):
    with pytest.raises(StateError):
        records.session_path(run_dir, key)


def test_no_temp_files_left(run_dir):
    records.write(records.user_path(run_dir, 5), {"uid": 5})
    assert records.stale_temp_files(run_dir) == []


def test_live_elements_union(run_dir):
    records.write(records.session_path(run_dir, "1-2"), session("1-2"))
    records.write(records.session_path(run_dir, "3-4"),
                  session("3-4", session_elements={"scg-web": ["0100000000000000"]}))
    records.write(records.user_path(run_dir, 1001),
                  {"uid": 1001, "elements": {"uid-web": ["e9030000"]}, "sessions": []})
    live = records.live_elements(run_dir)
    assert sorted(live["scg-web"]) == ["0100000000000000", "4d00000000000000"]
    assert live["uid-web"] == ["e9030000"]


def test_refs(run_dir):
    assert records.read_refs(run_dir, 9) == []
    records.write_refs(run_dir, 9, ["1-2", "3-4"])
    assert records.read_refs(run_dir, 9) == ["1-2", "3-4"]
    records.write_refs(run_dir, 9, [])
    assert not os.path.exists(records.refs_path(run_dir, 9))


def test_run_dir_writable_by_others_is_refused(tmp_path):
    path = tmp_path / "open"
    path.mkdir(mode=0o777)
    path.chmod(0o777)
    with pytest.raises(StateError, match="writable only"):
        records.ensure_dirs(str(path))


def test_lock_is_exclusive_across_processes(run_dir):
    import multiprocessing
    with records.Lock(run_dir):
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()

        def try_lock():
            import posix
            fd = posix.open(f"{run_dir}/lock", posix.O_RDWR)
            try:
                posix.lockf(fd, posix.F_TLOCK, 0)
                queue.put("locked")
            except OSError:
                queue.put("busy")
        child = ctx.Process(target=try_lock)
        child.start()
        child.join(10)
        assert queue.get(timeout=5) == "busy"


def test_set_arithmetic():
    a = {"s": ["1", "2"], "t": ["3"]}
    assert plan.subtract(a, {"s": ["2"], "t": ["3"]}) == {"s": ["1"]}
    assert plan.merge_into({"s": ["1"]}, {"s": ["1", "4"], "u": ["5"]}) == \
        {"s": ["1", "4"], "u": ["5"]}


# ---- liveness: /proc/PID/stat and cgroup accounting -------------------------------

def test_starttime_with_a_hostile_command_name():
    stat = "4242 (evil) 1 2 3 (x) S) R 1 4242 4242 0 -1 4194560 " + " ".join(
        str(n) for n in range(10, 60))
    fields = stat[stat.rindex(")") + 2:].split(" ")
    assert liveness.parse_starttime(stat) == int(fields[19])


def test_own_starttime_is_stable():
    start = liveness.proc_starttime(os.getpid())
    assert start is not None and start == liveness.proc_starttime(os.getpid())
    assert liveness.proc_starttime(2**22 + 12345) is None
    assert liveness.proc_parent(os.getpid()) == os.getppid()
    assert liveness.proc_parent(2**22 + 12345) is None


def test_populated():
    assert liveness.parse_populated("populated 1\nfrozen 0\n") is True
    assert liveness.parse_populated("populated 0\nfrozen 0\n") is False
    with pytest.raises(ValueError):
        liveness.parse_populated("frozen 0\n")


def fake_cgroup(path, populated, procs=()):
    """A directory shaped like a cgroup v2 directory (no root needed)."""
    path.mkdir(parents=True)
    (path / "cgroup.events").write_text(f"populated {int(populated)}\nfrozen 0\n")
    (path / "cgroup.procs").write_text("".join(f"{p}\n" for p in procs))


def test_has_processes_walks_the_subtree_but_not_excluded_pids(tmp_path):
    fake_cgroup(tmp_path / "u", True, procs=[10])           # the closing PAM app
    fake_cgroup(tmp_path / "u" / "s1", True, procs=[11])    # the hook
    fake_cgroup(tmp_path / "u" / "s2", False)
    mount = str(tmp_path)
    assert liveness.has_processes(mount, "/u", exclude=(10, 11)) is False
    assert liveness.has_processes(mount, "/u", exclude=(10,)) is True
    fake_cgroup(tmp_path / "u" / "s1" / "nested", True, procs=[12])
    assert liveness.has_processes(mount, "/u", exclude=(10, 11)) is True
    assert liveness.has_processes(mount, "/missing") is False


def test_an_unpopulated_cgroup_is_not_read_further(tmp_path):
    fake_cgroup(tmp_path / "u", False, procs=[99])     # stale list: populated decides
    assert liveness.has_processes(str(tmp_path), "/u") is False


def test_unreadable_accounting_counts_as_alive(tmp_path):
    fake_cgroup(tmp_path / "u", True)
    (tmp_path / "u" / "cgroup.events").write_text("garbage\n")
    assert liveness.has_processes(str(tmp_path), "/u") is True


def test_closing_records_are_not_live(run_dir):
    records.write(records.session_path(run_dir, "1-2"), session("1-2"))
    records.write(records.session_path(run_dir, "3-4"),
                  session("3-4", session_elements={"scg-web": ["0100000000000000"]},
                          closing=True, destroy={"scg-web": ["0100000000000000"]}))
    records.write(records.user_path(run_dir, 1002),
                  {"uid": 1002, "elements": {"uid-web": ["ea030000"]}, "sessions": [],
                   "closing": True, "destroy": {"uid-web": ["ea030000"]}})
    assert records.live_elements(run_dir) == {"scg-web": ["4d00000000000000"]}


def test_elements_for_a_login():
    profiles = {"web": {"egress": True, "ingress": False, "uid_set": "uid-web",
                        "ucg_set": "ucg-web", "scg_set": "scg-web"},
                "srv": {"egress": False, "ingress": True, "uid_set": "uid-srv",
                        "ucg_set": "ucg-srv", "scg_set": "scg-srv"}}
    cgroup = {"id": 0x0102, "user_id": 0x0A}
    user, sess = plan.elements_for(profiles, ["web", "srv"], ["srv"], 1001, cgroup)
    order = "little" if (1).to_bytes(2, __import__("sys").byteorder) == b"\1\0" else "big"
    assert user == {"uid-web": [(1001).to_bytes(4, order).hex()],
                    "ucg-srv": [(0x0A).to_bytes(8, order).hex()]}
    assert sess == {"scg-srv": [(0x0102).to_bytes(8, order).hex()]}
    guards = {"uid_set": "any-uid", "ucg_set": "any-ucg", "scg_set": "any-scg"}
    user, sess = plan.elements_for(profiles, ["web", "srv"], ["srv"], 1001, cgroup,
                                       guards)
    assert user == {"uid-web": [(1001).to_bytes(4, order).hex()],
                    "any-uid": [(1001).to_bytes(4, order).hex()],
                    "ucg-srv": [(0x0A).to_bytes(8, order).hex()],
                    "any-ucg": [(0x0A).to_bytes(8, order).hex()]}
    assert sess == {"scg-srv": [(0x0102).to_bytes(8, order).hex()],
                    "any-scg": [(0x0102).to_bytes(8, order).hex()]}


def test_gc_on_an_empty_run_dir(tmp_path):
    import secrets
    report = collect.gc(str(tmp_path / "run"), cgroup_base=f"nftest-{secrets.token_hex(4)}")
    assert (report.sessions, report.users, report.cgroups) == (0, 0, 0)
    assert str(report).startswith("gc: 0 dead sessions closed")


def test_forget_all(run_dir):
    records.write(records.session_path(run_dir, "1-2"), session("1-2"))
    records.write(records.user_path(run_dir, 1001), {"uid": 1001})
    assert collect.forget_all(run_dir) == 1
    assert records.list_sessions(run_dir) == [] and records.list_users(run_dir) == []
    assert collect.forget_all(run_dir + "-missing") == 0


def test_a_short_write_never_leaves_a_cut_record(run_dir):
    """A file-size limit inherited from the login program (prlimit --fsize before su):
    the write is refused whole, nothing cut is renamed into place."""
    import multiprocessing
    import resource
    path = records.session_path(run_dir, "5-6")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def write_limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (40, resource.getrlimit(
            resource.RLIMIT_FSIZE)[1]))
        try:
            records.write(path, session("5-6"))
            queue.put("written")
        except StateError as err:
            queue.put(f"refused: {err}")
    child = ctx.Process(target=write_limited)
    child.start()
    child.join(10)
    assert queue.get(timeout=5).startswith("refused: write ")
    assert not os.path.exists(path)
    assert records.stale_temp_files(run_dir) == []


def test_a_damaged_record_stops_live_elements(run_dir):
    """What a damaged record held cannot be known: reload, gc and undo must not take
    its elements for unrecorded ones."""
    records.write(records.session_path(run_dir, "1-2"), session("1-2"))
    with open(records.session_path(run_dir, "3-4"), "wb") as handle:
        handle.write(b"\x00cut")
    with pytest.raises(StateError, match="3-4"):
        records.live_elements(run_dir)
    assert len(records.list_sessions(run_dir)) == 1       # status still lists the rest


def test_unsettled_records_are_reported(run_dir):
    records.write(records.session_path(run_dir, "1-2"), session("1-2"))
    records.write(records.session_path(run_dir, "3-4"),
                  session("3-4", closing=True, destroy={"scg-web": ["01"]}))
    unsettled = []
    records.live_elements(run_dir, unsettled)
    assert [r["key"] for r in unsettled] == ["3-4"]


def test_a_bounded_lock_wait_gives_up_with_a_clear_error(run_dir, monkeypatch):
    """The command line waits for the records lock at most Lock.max_wait_s: gc and
    reload report a stuck holder instead of hanging."""
    import multiprocessing
    monkeypatch.setattr(records.Lock, "max_wait_s", 0.2)
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()

    def holder():
        with records.Lock(run_dir):
            held.set()
            release.wait(10)
    child = ctx.Process(target=holder)
    child.start()
    try:
        assert held.wait(10)
        with pytest.raises(StateError, match="held by another netfence process"):
            with records.Lock(run_dir):
                pass
    finally:
        release.set()
        child.join(10)
    with records.Lock(run_dir):                           # free again: taken at once
        pass
