"""The denial log's reader and `netfence log` against hostile or odd input: stored
times out of range, --since values, rotations racing the reader, a log directory
others control."""

import os

import pytest

from netfence import denial_log, denials
from netfence.errors import StateError, UsageError


def entry(n, **extra):
    return {"time": 1764500000.0 + n, "user": "alice", "uid": 1001, "session": f"1-{n}",
            "profile": "web", **extra}


@pytest.mark.parametrize("stored", [1e20, -1e20, float("nan"), float("inf")])
def test_an_out_of_range_stored_time_is_shown_raw(stored):
    line = denials.text_line(entry(0, time=stored))
    assert line.split(" ")[0] == repr(stored) or line.startswith(str(stored))


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e999", "-5", "0",
                                  "99999999999", "0001-01-01", "9999-12-31"])
def test_a_since_out_of_range_is_a_usage_error(text):
    with pytest.raises(UsageError):
        denial_log.parse_since(text)


def test_eight_digits_are_a_basic_iso_date_not_an_epoch():
    import datetime
    assert denial_log.parse_since("20261130") == datetime.datetime(2026, 11, 30).timestamp()
    assert denial_log.parse_since("1764500000") == 1764500000.0


def test_cmd_log_exits_2_on_a_bad_time(tmp_path, capsys):
    from types import SimpleNamespace
    from netfence import log_cli
    args = SimpleNamespace(user=None, session=None, profile=None, since="nan",
                           json=False, follow=False)
    assert log_cli.cmd_log(args, SimpleNamespace(state_dir=str(tmp_path))) == 2
    assert "--since" in capsys.readouterr().err


def test_entries_sees_every_file_when_a_rotation_falls_between_the_opens(tmp_path,
                                                                         monkeypatch):
    store = denial_log.DenialLog(str(tmp_path))
    store.append(entry(1))
    store.rotate()
    store.append(entry(2))                 # .1 holds 1, the current file 2
    real, opened = denial_log._open_for_reading, []
    def racing(*args):
        handle = real(*args)
        if not opened:                     # after the first open: a rotation
            store.rotate()
            store.append(entry(3))
        opened.append(args)
        return handle
    monkeypatch.setattr(denial_log, "_open_for_reading", racing)
    seen = [e["session"] for e in denial_log.entries(str(tmp_path))]
    assert "1-2" in seen and "1-3" in seen


def test_follow_keeps_a_line_appended_to_the_old_file_just_before_the_rotation(
        tmp_path, monkeypatch):
    store = denial_log.DenialLog(str(tmp_path))
    store.append(entry(1))
    real, done = denial_log._rotated, []
    def rotating(handle, path):
        if not done:                       # after an empty read, before the check
            done.append(1)
            store.append(entry(2))         # into the old file
            store.rotate()
            store.append(entry(3))
        return real(handle, path)
    monkeypatch.setattr(denial_log, "_rotated", rotating)
    got = []
    for found in denial_log.follow(str(tmp_path), stop=lambda: len(got) >= 2,
                                   poll_s=0):
        got.append(found["session"])
        if found["session"] == "1-3":
            break
    assert got == ["1-2", "1-3"]


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")
def test_the_reader_refuses_a_log_directory_others_control(tmp_path):
    state = tmp_path / "state"
    elsewhere = tmp_path / "elsewhere"
    os.mkdir(state)
    os.mkdir(elsewhere)
    os.chmod(state, 0o777)
    os.chmod(elsewhere, 0o777)
    fd = os.open(elsewhere / "denials.jsonl", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'{"time": 1764500000.0, "user": "forged"}\n')
    os.close(fd)
    os.symlink(elsewhere, state / "log")
    with pytest.raises(StateError):
        list(denial_log.entries(str(state)))
    with pytest.raises(StateError):
        next(denial_log.follow(str(state), stop=lambda: False, poll_s=0))


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")
def test_the_reader_refuses_a_writable_log_directory(tmp_path):
    store = denial_log.DenialLog(str(tmp_path))
    store.append(entry(1))
    os.chmod(tmp_path / "log", 0o777)
    with pytest.raises(StateError, match="writable"):
        list(denial_log.entries(str(tmp_path)))
