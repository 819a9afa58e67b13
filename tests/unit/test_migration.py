"""migration.Migration on plain files (a regular file stands in for cgroup.procs):
the write happens once, its result comes back from wait(), and the fallbacks hold."""

import errno
import signal
import time

import pytest

from netfence import migration
from netfence.migration import Migration


def test_the_pid_is_written_by_the_thread_and_wait_returns_0(tmp_path):
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    move = Migration(str(procs), 4242)
    assert move.wait() == 0
    assert move.wait() == 0                  # waiting again is fine
    assert procs.read_text() == "4242\n"


def test_a_file_that_cannot_be_opened_is_an_errno_and_no_thread(tmp_path, monkeypatch):
    def no_thread(*args):
        raise AssertionError("no thread for a failed open")

    monkeypatch.setattr(migration._thread, "start_new_thread", no_thread)
    assert Migration(str(tmp_path / "gone" / "cgroup.procs"), 1).wait() == -errno.ENOENT


def test_without_a_thread_the_write_happens_at_once(tmp_path, monkeypatch):
    def refuse(*args):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(migration._thread, "start_new_thread", refuse)
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    move = Migration(str(procs), 7)
    assert procs.read_text() == "7\n"
    assert move.wait() == 0


def test_the_alarm_interrupts_wait_but_not_a_quiet_wait(tmp_path, monkeypatch):
    """A write that takes long (the kernel's grace period, here a sleep): wait() gives
    way to the alarm, wait(quiet=True) returns only once the write is done."""
    real_write = migration.posix.write

    def slow_write(fd, data):
        time.sleep(0.3)
        return real_write(fd, data)

    monkeypatch.setattr(migration.posix, "write", slow_write)
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")

    class Alarm(Exception):
        pass

    def alarm(signum, frame):
        raise Alarm

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        move = Migration(str(procs), 9)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Alarm):
            move.wait()
        assert procs.read_text() == ""       # still under way
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        assert move.wait(quiet=True) == 0
        assert procs.read_text() == "9\n"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
