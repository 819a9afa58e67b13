"""watch_sources.WallTimer (a CLOCK_REALTIME timerfd) and watch's handling of it: the
next window change and a wall-clock step (no root; the clock is never set here, a
step is driven by a fake ECANCELED)."""

import errno
import select
import time

import pytest

from netfence import watch_actions, watch_sources
from netfence.errors import KernelError
from netfence.watch import IDLE_REARM_S, WINDOW_MARGIN_S, Watch
from netfence.watch_sources import WallTimer


def _readable(fd, seconds):
    return bool(select.select([fd], [], [], seconds)[0])


def test_armed_at_an_absolute_instant_it_is_readable_only_after_it():
    timer = WallTimer()
    try:
        at = time.time() + 0.2
        timer.arm(at)
        assert timer.at == at
        assert not _readable(timer, 0.1) and timer.read() is None
        assert _readable(timer, 1.0)
        assert time.time() >= at and timer.read() == "expired" and timer.at is None
        assert timer.read() is None       # read once: nothing pending any more
    finally:
        timer.close()


def test_an_instant_already_past_fires_at_once():
    """What a resume or a forward step past the opening amounts to."""
    timer = WallTimer()
    try:
        timer.arm(time.time() - 5)
        assert _readable(timer, 0.1) and timer.read() == "expired"
    finally:
        timer.close()


def test_a_disarmed_timer_never_fires():
    timer = WallTimer()
    try:
        timer.arm(time.time() + 0.1)
        timer.disarm()
        assert timer.at is None
        assert not _readable(timer, 0.3) and timer.read() is None
    finally:
        timer.close()


def test_a_canceled_read_means_the_clock_was_set_and_other_errors_raise(monkeypatch):
    timer = WallTimer()
    try:
        def failing(code):
            def read(fd, size):
                raise OSError(code, "fake")
            return read
        monkeypatch.setattr(watch_sources.os, "read", failing(errno.ECANCELED))
        assert timer.read() == "clock-set"
        monkeypatch.setattr(watch_sources.os, "read", failing(errno.EBADF))
        with pytest.raises(KernelError):
            timer.read()
    finally:
        monkeypatch.undo()
        timer.close()


class FakeTimer:
    def __init__(self, reads):
        self.reads, self.at, self.armed = list(reads), None, []

    def read(self):
        return self.reads.pop(0)

    def arm(self, epoch):
        self.at = epoch
        self.armed.append(epoch)


def _watch(monkeypatch, reads, next_change):
    calls = []
    monkeypatch.setattr(watch_actions, "reconcile_windows",
                        lambda paths: calls.append(paths) or (None, next_change))
    watch = Watch.__new__(Watch)
    watch.paths, watch.counts, watch.wall = "P", {"reconciles": 0}, FakeTimer(reads)
    lines = []
    watch.log = lambda **fields: lines.append(fields)
    return watch, calls, lines


def test_a_clock_step_is_logged_once_reconciles_at_once_and_rearms(monkeypatch):
    opening = time.time() + 3600
    watch, calls, lines = _watch(monkeypatch, ["clock-set"], opening)
    watch._on_wall_clock()
    assert [line["event"] for line in lines] == ["clock-set"]
    assert calls == ["P"] and watch.wall.armed == [opening + WINDOW_MARGIN_S]


def test_an_expiry_reconciles_without_a_clock_line_and_nothing_pending_does_nothing(
        monkeypatch):
    watch, calls, lines = _watch(monkeypatch, ["expired", None], None)
    watch._on_wall_clock()
    assert lines == [] and calls == ["P"]
    # no change ahead: armed a day out all the same, so that a clock step still wakes it
    assert len(watch.wall.armed) == 1
    assert watch.wall.armed[0] > time.time() + IDLE_REARM_S - 5
    watch._on_wall_clock()
    assert calls == ["P"] and len(watch.wall.armed) == 1


def test_a_new_records_opening_only_ever_moves_the_timer_earlier(monkeypatch):
    """Unless it already fired (at None then): a reconcile that failed after it must
    not keep a later opening from being armed."""
    watch, _calls, _lines = _watch(monkeypatch, [], None)
    watch._windows_at(1000.0)
    watch._windows_at(2000.0, earlier_only=True)
    watch._windows_at(None, earlier_only=True)
    watch._windows_at(500.0, earlier_only=True)
    watch.wall.at = None
    watch._windows_at(3000.0, earlier_only=True)
    assert watch.wall.armed == [1000.0 + WINDOW_MARGIN_S, 500.0 + WINDOW_MARGIN_S,
                                3000.0 + WINDOW_MARGIN_S]
