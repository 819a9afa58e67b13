"""denial_log.py: the store's modes and trust, rotation, the reader's filters and
--since, follow across a rotation, and the record lookup of a cgroup."""

import datetime
import json
import os
import time

import pytest

from netfence import denial_log
from netfence.errors import StateError, UsageError


def entry(n, **extra):
    return {"time": 1764500000.0 + n, "user": "alice", "uid": 1001, "session": f"1-{n}",
            "profile": "web", **extra}


def test_append_creates_a_private_store_and_writes_whole_lines(tmp_path):
    store = denial_log.DenialLog(str(tmp_path))
    store.append(entry(1))
    store.append(entry(2, rhost="x\ny"))
    path = denial_log.log_path(str(tmp_path))
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert os.stat(path).st_mode & 0o777 == 0o600
    lines = open(path, "rb").read().split(b"\n")
    assert len(lines) == 3 and lines[2] == b""      # one line each, the newline escaped
    assert [e["session"] for e in denial_log.entries(str(tmp_path))] == ["1-1", "1-2"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_foreign_or_writable_store_is_refused(tmp_path):
    os.mkdir(tmp_path / "log", 0o700)
    os.chmod(tmp_path / "log", 0o777)
    with pytest.raises(StateError, match="writable by"):
        denial_log.DenialLog(str(tmp_path)).append(entry(1))
    os.chmod(tmp_path / "log", 0o700)
    os.chown(tmp_path / "log", 65534, 65534)
    with pytest.raises(StateError, match="owned by uid 65534"):
        denial_log.DenialLog(str(tmp_path)).append(entry(1))
    os.chown(tmp_path / "log", 0, 0)
    path = denial_log.log_path(str(tmp_path))
    open(path, "w").close()
    os.chown(path, 65534, 65534)             # planted by someone else: not read either
    with pytest.raises(StateError, match="owned by uid 65534"):
        list(denial_log.entries(str(tmp_path)))
    os.unlink(path)
    os.symlink("/etc/passwd", path)
    with pytest.raises(OSError):
        denial_log.DenialLog(str(tmp_path)).append(entry(1))
    with pytest.raises(StateError, match="cannot read the denial log"):
        list(denial_log.entries(str(tmp_path)))


def test_rotation_by_size_keeps_one_previous_file(tmp_path):
    store = denial_log.DenialLog(str(tmp_path), max_bytes=300)
    for n in range(12):
        store.append(entry(n))
    path = denial_log.log_path(str(tmp_path))
    assert os.path.getsize(path) < 300 + 200 and os.path.exists(path + ".1")
    kept = [e["session"] for e in denial_log.entries(str(tmp_path))]
    assert kept == [f"1-{n}" for n in range(12 - len(kept), 12)] and len(kept) < 12


def test_rotation_by_age_also_after_a_restart(tmp_path):
    old = {"time": time.time() - 90000, "user": "x"}
    store = denial_log.DenialLog(str(tmp_path))
    store.append(old)
    store.close()
    again = denial_log.DenialLog(str(tmp_path))      # a new watch: the first line's age
    again.append({"time": time.time(), "user": "y"})
    path = denial_log.log_path(str(tmp_path))
    assert [json.loads(line)["user"] for line in open(path + ".1")] == ["x"]
    assert [json.loads(line)["user"] for line in open(path)] == ["y"]


def test_lines_that_are_no_entries_are_skipped(tmp_path):
    denial_log.DenialLog(str(tmp_path)).append(entry(1))
    with open(denial_log.log_path(str(tmp_path)), "ab") as handle:
        handle.write(b'{"time": "soon"}\n[1]\n{"time": 5, "us')   # cut short by a crash
    assert len(list(denial_log.entries(str(tmp_path)))) == 1


def test_since():
    now = 1764500000.0
    assert denial_log.parse_since("1h", now) == now - 3600
    assert denial_log.parse_since("30m", now) == now - 1800
    assert denial_log.parse_since("2d", now) == now - 172800
    assert denial_log.parse_since("1764400000", now) == 1764400000.0
    assert denial_log.parse_since("2026-11-30T10:00:00+00:00") == datetime.datetime(
        2026, 11, 30, 10, tzinfo=datetime.timezone.utc).timestamp()
    assert denial_log.parse_since("2026-11-30 10:00") > 0
    for bad in ("yesterday", "1w", "", "-1h"):
        with pytest.raises(UsageError):
            denial_log.parse_since(bad, now)


def test_matches():
    one = entry(1)
    assert denial_log.matches(one, uid=1001, session="1-1", profile="web", since=0)
    assert not denial_log.matches(one, uid=0)
    assert not denial_log.matches(one, session="1-2")
    assert not denial_log.matches(one, profile="db")
    assert not denial_log.matches(one, since=one["time"] + 1)


def test_follow_sees_new_entries_across_a_rotation(tmp_path):
    store = denial_log.DenialLog(str(tmp_path))
    store.append(entry(0))                  # before follow: not shown
    stream = denial_log.follow(str(tmp_path), poll_s=0.01)
    store.append(entry(1))
    assert next(stream)["session"] == "1-1"
    store.append(entry(2))
    store.rotate()
    store.append(entry(3))
    assert [next(stream)["session"] for _ in range(2)] == ["1-2", "1-3"]


def test_follow_waits_for_a_store_that_does_not_exist_yet(tmp_path):
    calls = []
    stream = denial_log.follow(str(tmp_path), stop=lambda: len(calls) > 3,
                               poll_s=0.001)
    calls.append(1)
    store = denial_log.DenialLog(str(tmp_path))
    store.append(entry(5))
    assert next(stream)["session"] == "1-5"
