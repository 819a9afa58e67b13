"""Who a denial is put on (records_closed.find_by_cgroup, denials.build_entry): a
cgroup shared by nested logins, the packet's uid, the time the packet was sent at
against each record's open/close, and the boot a closed record belongs to."""

import pytest

from netfence import denials, records, records_closed

from test_denials import packet, snapshot

BOOT = "b0b0b0b0-0000-4000-8000-000000000001"


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    path = str(tmp_path / "run")
    records.ensure_dirs(path)
    monkeypatch.setattr(records_closed, "boot_id", lambda: BOOT, raising=False)
    monkeypatch.setattr(records_closed, "boot_started", lambda: 1.0, raising=False)
    return path


def live(run_dir, key, uid, user, opened, cgroup_id=42):
    records.write(records.session_path(run_dir, key),
                  {"key": key, "uid": uid, "user": user, "cgroup_id": cgroup_id,
                   "opened_at": opened, "service": "su"})


def closed(run_dir, key, uid, user, opened, closed_at, cgroup_id=42):
    records_closed.keep_closed(run_dir, {"key": key, "uid": uid, "user": user,
                                         "cgroup_id": cgroup_id, "opened_at": opened},
                               closed_at)


def test_su_to_bob_inside_alices_scope_puts_alices_denial_on_alice(run_dir):
    live(run_dir, "10-1", 1001, "alice", 100.0)
    live(run_dir, "20-1", 1002, "bob", 200.0)         # newer, same cgroup
    assert records.find_by_cgroup(run_dir, 42, at=300.0, uid=1001)["key"] == "10-1"
    assert records.find_by_cgroup(run_dir, 42, at=300.0, uid=1002)["key"] == "20-1"


def test_a_uid_no_candidate_has_never_names_a_session(run_dir):
    live(run_dir, "10-1", 1001, "alice", 100.0)
    found = records.find_by_cgroup(run_dir, 42, at=300.0, uid=0)
    assert found.get("key") is None and found["uid"] == 0
    assert found["shared_cgroup"] == ["10-1"]
    entry = denials.build_entry(packet(uid=0, mark=42), snapshot(), found,
                                lambda uid: "root")
    assert entry["session"] is None and entry["user"] == "root" and entry["uid"] == 0
    assert entry["shared_cgroup"] == ["10-1"]


def test_nested_logins_of_one_uid_name_the_user_not_a_session(run_dir):
    live(run_dir, "10-1", 1001, "alice", 100.0)
    live(run_dir, "11-1", 1001, "alice", 150.0)       # su - alice inside it
    found = records.find_by_cgroup(run_dir, 42, at=300.0, uid=1001)
    entry = denials.build_entry(packet(uid=1001, mark=42), snapshot(), found, None)
    assert entry["session"] is None and entry["user"] == "alice"
    assert entry["shared_cgroup"] == ["10-1", "11-1"]
    assert "shared_cgroup=10-1,11-1" in denials.text_line(entry)
    # without a uid in the copy (ingress): the candidates' uid, since they agree
    unknown = records.find_by_cgroup(run_dir, 42, at=300.0, uid=None)
    assert unknown["uid"] == 1001 and unknown.get("key") is None


def test_without_a_uid_candidates_that_disagree_name_nobody(run_dir):
    live(run_dir, "10-1", 1001, "alice", 100.0)
    live(run_dir, "20-1", 1002, "bob", 200.0)
    found = records.find_by_cgroup(run_dir, 42, at=300.0)
    entry = denials.build_entry(packet(uid=None, mark=42), snapshot(), found, None)
    assert entry["session"] is None and entry["uid"] is None and entry["user"] is None
    assert entry["shared_cgroup"] == ["10-1", "20-1"]


def test_a_nested_login_closed_before_the_packet_is_not_a_candidate(run_dir):
    live(run_dir, "10-1", 1001, "alice", 100.0)
    closed(run_dir, "20-1", 1001, "alice", 150.0, 160.0)
    assert records.find_by_cgroup(run_dir, 42, at=300.0, uid=1001)["key"] == "10-1"


def test_a_record_closed_long_before_the_packet_is_not_named(run_dir):
    closed(run_dir, "1-1", 1001, "alice", 10.0, 20.0)
    closed(run_dir, "2-1", 1002, "bob", 30.0, 40.0)
    assert records.find_by_cgroup(run_dir, 42, at=15.0)["key"] == "1-1"
    assert records.find_by_cgroup(run_dir, 42, at=35.0)["key"] == "2-1"
    assert records.find_by_cgroup(run_dir, 42, at=25.0) is None        # nobody then
    assert records.find_by_cgroup(run_dir, 42, at=500.0) is None
    assert records.find_by_cgroup(run_dir, 42, at=5.0) is None


def test_a_copy_that_raced_the_close_still_matches(run_dir):
    closed(run_dir, "1-1", 1001, "alice", 10.0, 20.0)
    assert records.find_by_cgroup(run_dir, 42, at=21.5, uid=1001)["key"] == "1-1"


def test_a_closed_record_of_another_boot_is_never_named(run_dir, monkeypatch):
    closed(run_dir, "1-1", 1001, "alice", 10.0, 20.0)
    assert records.list_closed(run_dir)[0]["closed_boot_id"] == BOOT
    monkeypatch.setattr(records_closed, "boot_id", lambda: "another-boot")
    assert records.find_by_cgroup(run_dir, 42, at=15.0) is None


def test_a_record_opened_before_this_boot_is_never_named(run_dir, monkeypatch):
    # a session of the previous boot closed by gc after the reboot: this boot's id
    closed(run_dir, "1-1", 1001, "alice", 10.0, 500.0)
    monkeypatch.setattr(records_closed, "boot_started", lambda: 400.0)
    assert records.find_by_cgroup(run_dir, 42, at=450.0) is None
