"""snapshot: the format check of compiled.json, and staged files that a killed reload
leaves being found again (no root needed)."""

import json
import marshal
import os

import pytest

from netfence import formats, snapshot
from netfence.errors import StateError


def snap(policy_id="p1", **extra):
    login = {"format": formats.LOGIN, "policy_id": policy_id, "templates": {"x": b"\0"}}
    return dict({"format": formats.SNAPSHOT, "policy_id": policy_id, "login": login},
                **extra)


def test_a_written_snapshot_reads_back_without_the_templates(tmp_path):
    state_dir = str(tmp_path / "state")
    snapshot.stage(state_dir, snap()).promote()
    applied = snapshot.read_snapshot(state_dir)
    assert applied["policy_id"] == "p1" and "templates" not in applied["login"]
    assert snapshot.login_policy_id(state_dir) == "p1"
    assert sorted(os.listdir(state_dir)) == [snapshot.COMPILED, snapshot.LOGIN]
    assert os.stat(os.path.join(state_dir, snapshot.COMPILED)).st_mode & 0o777 == 0o644


def test_no_snapshot_is_none(tmp_path):
    assert snapshot.read_snapshot(str(tmp_path)) is None


@pytest.mark.parametrize("found, shown", [(formats.SNAPSHOT + 1, repr(formats.SNAPSHOT + 1)),
                                          (0, "0"), (None, "none"), ("1", "'1'")])
def test_another_format_is_refused_naming_both_and_the_fix(tmp_path, found, shown):
    body = {"policy_id": "p1", "login": {}}
    if found is not None:
        body["format"] = found
    path = tmp_path / snapshot.COMPILED
    path.write_text(json.dumps(body))
    with pytest.raises(StateError) as info:
        snapshot.read_snapshot(str(tmp_path))
    assert str(info.value) == (f"{path}: snapshot format {shown}, this netfence reads "
                               f"format {formats.SNAPSHOT}: run `netfence reload` to "
                               f"rewrite it")


@pytest.mark.parametrize("data", [b"[1, 2]", b"null", b"7"])
def test_json_that_is_no_snapshot_is_refused(data):
    with pytest.raises(StateError, match="compiled.json: snapshot format none"):
        snapshot.parse_raw(data)


def test_damaged_json_is_refused():
    with pytest.raises(StateError, match="compiled.json: unreadable snapshot"):
        snapshot.parse_raw(b'{"format": 1,')


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / snapshot.COMPILED)
    with pytest.raises(StateError, match="compiled.json: not a regular file"):
        snapshot.read_snapshot(str(tmp_path))


def test_staged_files_of_a_killed_reload_are_found(tmp_path):
    """The temp names stage() writes are those roll_forward and remove_stale look for."""
    state_dir = str(tmp_path)
    snapshot.stage(state_dir, snap("old")).promote()
    staged = snapshot.stage(state_dir, snap("new"))     # killed before promote()
    assert len(os.listdir(state_dir)) == 4
    assert snapshot.roll_forward(state_dir, "new")
    assert snapshot.login_policy_id(state_dir) == "new"
    assert snapshot.remove_stale(state_dir) == 1        # compiled.json's temp
    assert sorted(os.listdir(state_dir)) == [snapshot.COMPILED, snapshot.LOGIN]
    staged.files = []


def test_roll_forward_takes_only_the_applied_policy(tmp_path):
    state_dir = str(tmp_path)
    snapshot.stage(state_dir, snap("old")).promote()
    snapshot.stage(state_dir, snap("other"))
    assert not snapshot.roll_forward(state_dir, "new")
    assert snapshot.login_policy_id(state_dir) == "old"
    assert snapshot.remove_stale(state_dir) == 2


def test_a_damaged_login_part_is_named(tmp_path):
    (tmp_path / snapshot.LOGIN).write_bytes(marshal.dumps({"policy_id": "p"})[:-3])
    with pytest.raises(StateError, match="login.marshal: damaged"):
        snapshot.login_policy_id(str(tmp_path))


def test_a_failed_stage_leaves_nothing(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    os.symlink("/nonexistent", f"{state_dir / snapshot.LOGIN}.tmp.{os.getpid()}")
    with pytest.raises(StateError, match="cannot write the new snapshot"):
        snapshot.stage(str(state_dir), snap())
    assert os.listdir(state_dir) == []
