"""A denial sent during its session's logout: close_session writes closed/KEY before it
deletes the `closing` sessions/KEY, so for a moment both are there. One session is one
candidate: the denial names it, not a shared cgroup of its own key twice."""

import pytest

from netfence import records, records_closed


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    path = str(tmp_path / "run")
    records.ensure_dirs(path)
    monkeypatch.setattr(records_closed, "boot_id", lambda: "B")
    return path


RECORD = {"key": "10-1", "uid": 1001, "user": "alice", "cgroup_id": 42,
          "opened_at": 100.0, "service": "sshd", "boot_id": "B"}


def test_a_session_mid_close_is_one_candidate(run_dir):
    closing = dict(RECORD, closing=True, history="pending")
    records.write(records.session_path(run_dir, "10-1"), closing)   # not yet deleted
    records_closed.keep_closed(run_dir, closing, 200.0)             # history kept
    found = records.find_by_cgroup(run_dir, 42, at=199.9, uid=1001)
    assert found["key"] == "10-1"
    assert records.find_by_cgroup(run_dir, 42, at=199.9)["key"] == "10-1"


def test_a_nested_login_mid_close_still_shares_the_cgroup_once_each(run_dir):
    closing = dict(RECORD, closing=True)
    records.write(records.session_path(run_dir, "10-1"), closing)
    records_closed.keep_closed(run_dir, closing, 200.0)
    records.write(records.session_path(run_dir, "11-1"),
                  dict(RECORD, key="11-1", opened_at=150.0))
    found = records.find_by_cgroup(run_dir, 42, at=199.9, uid=1001)
    assert found["key"] is None and found["shared_cgroup"] == ["10-1", "11-1"]


def test_a_key_used_again_is_another_session(run_dir):
    """The same key with another opening (the PAM application's second session) is
    not merged with the first: two sessions, no name."""
    records_closed.keep_closed(run_dir, RECORD, 200.0)
    records.write(records.session_path(run_dir, "10-1"), dict(RECORD, opened_at=150.0))
    found = records.find_by_cgroup(run_dir, 42, at=199.9, uid=1001)
    assert found["key"] is None and found["shared_cgroup"] == ["10-1", "10-1"]
