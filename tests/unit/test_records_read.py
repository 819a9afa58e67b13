"""How reload reads the records: once per attempt (read_live), each file in one read,
and the same elements and timed entries as reading them twice did (no root)."""

import os
import random

import pytest

from netfence import formats, ir, plan, records, timed_apply
from netfence.errors import StateError


@pytest.fixture
def run_dir(tmp_path):
    path = str(tmp_path / "run")
    records.ensure_dirs(path)
    return path


def session(key, uid, **extra):
    record = {"key": key, "user": f"u{uid}", "uid": uid, "service": "sshd", "rhost": "",
              "tty": "ssh", "ppid": int(key.split("-")[0]), "starttime": 1,
              "cgroup": f"/nf/user-{uid}/session-{key}", "cgroup_id": 1000 + uid,
              "created": True, "opened_at": float(uid),
              "session_elements": {"scg-web": [(1000 + uid).to_bytes(8, "little").hex()]},
              "user_elements": {"uid-web": [uid.to_bytes(4, "little").hex()]}}
    record.update(extra)
    return record


def fill(run_dir, count, windows=False):
    for i in range(count):
        uid = 2000 + i
        extra = {}
        if windows and i % 3 == 0:
            extra["timed"] = [{"rule": 1, "scope": "session", "windows": [[0x7f, 0, 1440]],
                               "elements": {"tscg-web": [(1000 + uid).to_bytes(8, "little")
                                                         .hex()]}}]
        record = session(f"{100 + i}-1", uid, **extra)
        records.write(records.session_path(run_dir, record["key"]), record)
        records.write(records.user_path(run_dir, uid), {
            "uid": uid, "user": f"u{uid}", "elements": record["user_elements"],
            "sessions": [record["key"]], "user_cgroups": [f"/nf/user-{uid}"]})


@pytest.mark.parametrize("size", [0, 1, records.RECORD_READ - 1, records.RECORD_READ,
                                  records.RECORD_READ + 1, 3 * records.RECORD_READ])
def test_a_record_of_any_size_reads_whole(run_dir, size):
    """One read takes a record; a longer one is read on until a short read."""
    record = session("1-2", 1001, note="x" * size)
    records.write(records.session_path(run_dir, "1-2"), record)
    assert records.read_session(run_dir, "1-2") == dict(record, format=formats.RECORDS)


def test_a_fifo_or_a_symlink_in_place_of_a_record_is_refused(run_dir, tmp_path):
    os.mkfifo(records.session_path(run_dir, "1-2"))
    with pytest.raises(StateError, match="not a regular file"):
        records.read_session(run_dir, "1-2")          # without hanging on the FIFO
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    os.symlink(target, records.session_path(run_dir, "3-4"))
    with pytest.raises(StateError):
        records.read_session(run_dir, "3-4")


def test_read_live_gives_what_the_listings_give(run_dir):
    fill(run_dir, 30)
    live = records.read_live(run_dir)
    assert records.list_sessions(run_dir, strict=True, live=live) == \
        records.list_sessions(run_dir, strict=True)
    assert records.list_users(run_dir, strict=True, live=live) == \
        records.list_users(run_dir, strict=True)
    assert records.live_elements(run_dir, live=live) == records.live_elements(run_dir)
    assert len(records.live_elements(run_dir)["scg-web"]) == 30


def test_read_live_is_strict(run_dir):
    fill(run_dir, 3)
    with open(records.user_path(run_dir, 2001), "wb") as handle:
        handle.write(b"\x00damaged")
    with pytest.raises(StateError, match="damaged record"):
        records.read_live(run_dir)


def test_timed_sets_from_records_read_once_are_the_same(run_dir, tmp_path):
    fill(run_dir, 12, windows=True)
    state_dir = str(tmp_path / "state")
    os.makedirs(state_dir)
    table = ir.TableDef(sets=(ir.SetDef("tscg-web", "cgroupsv2", timeout=True),),
                        chains=(), rules=())
    now = 1_800_000_000.0
    alone = timed_apply.desired_timeouts(run_dir, state_dir, table, now=now)
    shared = timed_apply.desired_timeouts(run_dir, state_dir, table, now=now,
                                          live=records.read_live(run_dir))
    assert shared == alone and len(alone["tscg-web"]) == 4


def test_the_records_union_is_plans():
    rnd = random.Random(5)
    for _ in range(300):
        parts = [{rnd.choice("abc"): [rnd.choice("0123456789") for _ in range(rnd.randrange(4))]
                  for _ in range(rnd.randrange(3))} for _ in range(rnd.randrange(6))]
        assert records._union(parts) == plan.union(parts)
