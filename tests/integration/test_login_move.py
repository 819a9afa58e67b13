"""The PAM application's move into its session cgroup (issue 12: the move waits in
the kernel for an RCU grace period, 5-25 ms, the longest step of an open). Attacks on
the window between the mkdir and the move, and on the move itself: the cgroup
removed, the process gone, the hook's alarm striking during the move, a close after
such a failure. Each must leave nothing: no element, no record, no cgroup, the
application where it was, and the login refused (the open raises).

Real cgroups (root: a private /<cgroup2>/nfmove-<hex> tree, always removed), a real
PAM application (a child process); the two netlink batches are recorded in memory
(what the kernel would hold), as in tests/unit/test_sessions_intent.py.
"""

import os
import secrets
import signal
import subprocess
import time

import pytest

from netfence import cgroups, records, sessions
from netfence.errors import CgroupError, NetfenceError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: cgroups")

UID = 64123
PROFILES = {"web": {"egress": True, "ingress": True, "uid_set": "uid-web",
                    "ucg_set": "ucg-web", "scg_set": "scg-web"}}


class FakeKernel:
    """The elements a real kernel would hold after each add / destroy batch."""

    def __init__(self, monkeypatch):
        self.held, self.batches = {}, []
        monkeypatch.setattr(sessions.fastpath, "add_elements", self.add)
        monkeypatch.setattr(sessions.fastpath, "destroy_elements", self.destroy)

    def add(self, templates, elements, timeout_ms, timed=None):
        self.batches.append("add")
        for name, keys in elements.items():
            self.held.setdefault(name, set()).update(keys)

    def destroy(self, elements, timeout_ms, detach=False):
        self.batches.append("destroy")
        for name, keys in elements.items():
            self.held.get(name, set()).difference_update(keys)
        return []

    def elements(self):
        return {name: keys for name, keys in self.held.items() if keys}


class HookAlarm(NetfenceError):
    """Stands in for hook.HookTimeout (raised from SIGALRM's handler, like it)."""


@pytest.fixture
def world(tmp_path, monkeypatch):
    mount = cgroups.cgroup2_mount()
    base = f"nfmove-{secrets.token_hex(4)}"
    app = subprocess.Popen(["sleep", "60"])
    origin = cgroups.proc_cgroup(app.pid)
    kernel = FakeKernel(monkeypatch)
    world = type("World", (), {})()
    world.mount, world.base, world.app, world.origin = mount, base, app, origin
    world.kernel, world.run_dir = kernel, str(tmp_path / "run")
    world.login = {"profiles": PROFILES, "settings": {"cgroup_base": base},
                   "templates": None}
    yield world
    if app.poll() is None:
        app.kill()
    app.wait()
    _remove_tree(mount, f"{mount}/{base}")


def _remove_tree(mount, top):
    if not os.path.isdir(top):
        return
    for root, dirs, _files in os.walk(top, topdown=False):
        for name in dirs:
            _rmdir(mount, os.path.join(root, name))
    _rmdir(mount, top)


def _rmdir(mount, path):
    with open(os.path.join(path, "cgroup.procs")) as handle:
        for pid in handle.read().split():
            with open(f"{mount}/cgroup.procs", "w") as out:
                out.write(pid)
    os.rmdir(path)


def open_login(world):
    info = {"user": "mover", "uid": UID, "service": "sshd", "rhost": "", "tty": "ssh"}
    return sessions.open_session(world.run_dir, world.login, info, ["web"], ["web"],
                                 ppid=world.app.pid, mount=world.mount)


def session_dirs(world):
    return cgroups.own_dirs(world.mount, world.base)[1]


def assert_nothing_left(world):
    assert world.kernel.elements() == {}
    assert records.list_sessions(world.run_dir) == []
    assert records.list_users(world.run_dir) == []
    assert session_dirs(world) == []
    if world.app.poll() is None:
        assert cgroups.proc_cgroup(world.app.pid) == world.origin


def interfere_with_the_move(monkeypatch, before=None, after=None):
    """Run before(procs path) / after(procs path) around the move into the session
    cgroup (the first move of the open; moves back go through untouched)."""
    real = cgroups.fastpath.cg_move

    def move(procs, pid):
        into_session = "/session-" in procs
        if into_session and before:
            before(procs)
        rc = real(procs, pid)
        if into_session and after:
            after(procs)
        return rc

    monkeypatch.setattr(cgroups.fastpath, "cg_move", move)


def test_a_login_moves_its_application_and_a_close_undoes_everything(world):
    record = open_login(world)
    assert cgroups.proc_cgroup(world.app.pid) == record["cgroup"] != world.origin
    assert os.stat(world.mount + record["cgroup"]).st_ino == record["cgroup_id"]
    assert set(world.kernel.elements()) == {"uid-web", "ucg-web", "scg-web"}
    result = sessions.close_session(world.run_dir, record["key"], pids=(world.app.pid,))
    assert result["result"] == "closed"
    assert_nothing_left(world)


def test_a_cgroup_removed_between_mkdir_and_move_leaves_nothing(world, monkeypatch):
    interfere_with_the_move(monkeypatch, before=lambda procs: os.rmdir(os.path.dirname(procs)))
    with pytest.raises(CgroupError, match="No such file"):
        open_login(world)
    assert world.kernel.batches == []                     # refused before any record
    assert_nothing_left(world)


def test_an_application_gone_before_its_move_leaves_nothing(world, monkeypatch):
    def end_application(_procs):
        world.app.kill()
        world.app.wait()                  # reaped: its pid names no process

    interfere_with_the_move(monkeypatch, before=end_application)
    with pytest.raises(CgroupError, match="No such process"):
        open_login(world)
    assert_nothing_left(world)


def test_the_hook_alarm_right_after_the_move_leaves_nothing(world, monkeypatch):
    """The alarm strikes while the move waits in the kernel: Python raises it as soon
    as the write returns, the application being in the new cgroup already. Before
    issue 12 that left the application there and the directory behind."""
    interfere_with_the_move(monkeypatch, after=lambda procs: time.sleep(0.3))

    def alarm(signum, frame):
        raise HookAlarm("timed out")

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(HookAlarm):
            open_login(world)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert world.kernel.batches == []
    assert_nothing_left(world)


def test_a_close_after_a_failed_move_finds_nothing_and_changes_nothing(world, monkeypatch):
    interfere_with_the_move(monkeypatch, before=lambda procs: os.rmdir(os.path.dirname(procs)))
    with pytest.raises(CgroupError):
        open_login(world)
    key, _ = sessions.session_key(world.app.pid)
    result = sessions.close_session(world.run_dir, key, pids=(world.app.pid,))
    assert result == {"result": "absent"}
    assert world.kernel.batches == []                     # no batch at all
    assert_nothing_left(world)
