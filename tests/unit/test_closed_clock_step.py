"""A forward clock step after a login must not lose its identity: records carry the
boot they were opened in, and only those without one are judged by the clocks."""

from netfence import records, records_closed


def _live(run, **extra):
    records.write(records.session_path(run, "10-1"), {
        "key": "10-1", "uid": 1001, "user": "alice", "cgroup_id": 42, **extra})


def _stepped(monkeypatch):
    # booted at real 10_000 with the RTC 600 s behind; session opened at uptime 30 s;
    # NTP then stepped the clock +600 s: now = 20_000, CLOCK_BOOTTIME = 10_000
    monkeypatch.setattr(records_closed, "boot_id", lambda: "B")
    monkeypatch.setattr(records_closed, "boot_started", lambda: 10_000.0)


def test_live_session_opened_before_a_forward_clock_step(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    records.ensure_dirs(run)
    _stepped(monkeypatch)
    _live(run, opened_at=10_000 - 600 + 30, boot_id="B")
    found = records.find_by_cgroup(run, 42, at=20_000.0, uid=1001)
    assert found is not None and found["key"] == "10-1"


def test_closed_session_opened_before_a_forward_clock_step(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    records.ensure_dirs(run)
    _stepped(monkeypatch)
    record = {"key": "10-1", "uid": 1001, "user": "alice", "cgroup_id": 42,
              "opened_at": 10_000 - 600 + 30, "boot_id": "B"}
    records_closed.keep_closed(run, record, 19_999.0)
    found = records.find_by_cgroup(run, 42, at=20_000.0, uid=1001)
    assert found is not None and found["key"] == "10-1"


def test_a_record_of_another_boot_is_never_named(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    records.ensure_dirs(run)
    _stepped(monkeypatch)
    _live(run, opened_at=19_000.0, boot_id="A")
    assert records.find_by_cgroup(run, 42, at=20_000.0, uid=1001) is None


def test_a_record_without_boot_id_is_judged_by_the_clocks(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    records.ensure_dirs(run)
    _stepped(monkeypatch)
    _live(run, opened_at=10_000 - 600 + 30)       # older format: the clocks decide
    assert records.find_by_cgroup(run, 42, at=20_000.0, uid=1001) is None
    _live(run, opened_at=15_000.0)
    assert records.find_by_cgroup(run, 42, at=20_000.0, uid=1001)["key"] == "10-1"


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
