"""A forward clock step after a login must not lose its identity: records carry the
boot they were opened in, and only those without one are judged by the clocks."""

import pytest

from netfence import records, records_closed


RECORD = {"key": "10-1", "uid": 1001, "user": "alice", "cgroup_id": 42}
STEPPED_OPENING = 10_000 - 600 + 30       # by the clock before the step


@pytest.fixture
def run(tmp_path, monkeypatch):
    # booted at real 10_000 with the RTC 600 s behind; session opened at uptime 30 s;
    # NTP then stepped the clock +600 s: now = 20_000, CLOCK_BOOTTIME = 10_000
    monkeypatch.setattr(records_closed, "boot_id", lambda: "B")
    monkeypatch.setattr(records_closed, "boot_started", lambda: 10_000.0)
    path = str(tmp_path / "run")
    records.ensure_dirs(path)
    return path


def _live(run, **extra):
    records.write(records.session_path(run, "10-1"), dict(RECORD, **extra))


def _named(run):
    found = records.find_by_cgroup(run, 42, at=20_000.0, uid=1001)
    return None if found is None else found["key"]


def test_live_session_opened_before_a_forward_clock_step(run):
    _live(run, opened_at=STEPPED_OPENING, boot_id="B")
    assert _named(run) == "10-1"


def test_closed_session_opened_before_a_forward_clock_step(run):
    records_closed.keep_closed(run, dict(RECORD, opened_at=STEPPED_OPENING, boot_id="B"),
                               19_999.0)
    assert _named(run) == "10-1"


def test_a_record_of_another_boot_is_never_named(run):
    _live(run, opened_at=19_000.0, boot_id="A")
    assert _named(run) is None


def test_a_record_without_boot_id_is_judged_by_the_clocks(run):
    _live(run, opened_at=STEPPED_OPENING)          # older format: the clocks decide
    assert _named(run) is None
    _live(run, opened_at=15_000.0)
    assert _named(run) == "10-1"


def test_the_closed_record_keeps_the_openers_boot_and_the_closers(tmp_path, monkeypatch):
    monkeypatch.setattr(records_closed, "boot_id", lambda: "B")
    same = records_closed.closed_record({"key": "k", "boot_id": "B"}, 1.0)
    assert same["boot_id"] == "B" and "closed_boot_id" not in same
    other = records_closed.closed_record({"key": "k", "boot_id": "A"}, 1.0)
    assert other["boot_id"] == "A" and other["closed_boot_id"] == "B"
    older = records_closed.closed_record({"key": "k"}, 1.0)
    assert "boot_id" not in older and older["closed_boot_id"] == "B"


def test_an_open_stamps_the_boot(monkeypatch):
    monkeypatch.setattr(records, "boot_id", lambda: "B")
    assert records.stamp_boot({"key": "k"})["boot_id"] == "B"
    monkeypatch.setattr(records, "boot_id", lambda: "")
    assert "boot_id" not in records.stamp_boot({"key": "k"})
