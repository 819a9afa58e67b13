"""The shared file helpers and the table of set kinds (no root needed)."""

import os
import subprocess
import sys
import time

import pytest

from netfence import fsutil, setkinds
from netfence.errors import StateError


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    path = str(tmp_path / "f")
    fsutil.write_atomic(path, b"old")
    fsutil.write_atomic(path, b"new" * 100000, mode=0o644)
    assert open(path, "rb").read() == b"new" * 100000
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert os.listdir(tmp_path) == ["f"]


def test_write_atomic_failure_keeps_old_content(tmp_path):
    path = str(tmp_path / "f")
    fsutil.write_atomic(path, b"old")
    os.mkdir(fsutil.temp_path(path) + "x")          # unrelated name: untouched
    os.symlink("/nonexistent", fsutil.temp_path(path))   # O_NOFOLLOW refuses the temp
    with pytest.raises(OSError):
        fsutil.write_atomic(path, b"new")
    assert open(path, "rb").read() == b"old"


def test_read_regular_refuses_fifo_without_blocking(tmp_path):
    path = str(tmp_path / "fifo")
    os.mkfifo(path)
    with pytest.raises(StateError, match="not a regular file"):
        fsutil.read_regular(path)
    assert fsutil.read_regular(str(tmp_path / "absent")) is None


def test_read_regular_root_owned(tmp_path):
    path = str(tmp_path / "f")
    fsutil.write_atomic(path, b"x", mode=0o666)
    os.chmod(path, 0o666)
    if os.geteuid() == 0:
        with pytest.raises(StateError, match="writable by group and others"):
            fsutil.read_regular(path, root_owned=True)
        os.chmod(path, 0o644)
        assert fsutil.read_regular(path, root_owned=True) == b"x"
    else:
        with pytest.raises(StateError, match="owned by uid"):
            fsutil.read_regular(path, root_owned=True)


def test_owner_problem_names_the_problem():
    class St:
        st_uid, st_mode = 0, 0o100644
    assert fsutil.owner_problem(St) == ""
    St.st_mode = 0o100664
    assert fsutil.owner_problem(St) == "writable by group (mode 0664)"
    St.st_uid = 1000
    assert fsutil.owner_problem(St) == "owned by uid 1000, not 0"


@pytest.mark.parametrize("kind", ["lockf", "flock"])
def test_lock_excludes_another_process_and_gives_up(tmp_path, kind):
    path = str(tmp_path / "lock")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from netfence.fsutil import Lock\n"
        f"with Lock({path!r}, {kind!r}):\n"
        "    print('held', flush=True); time.sleep(30)\n")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        started = time.monotonic()
        with pytest.raises(StateError, match="held by another netfence process"):
            with fsutil.Lock(path, kind, max_wait_s=0.2):
                pass
        assert 0.2 <= time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.wait()
    with fsutil.Lock(path, kind, max_wait_s=1):
        pass


def test_flock_excludes_another_open_file_in_the_same_process(tmp_path):
    path = str(tmp_path / "lock")
    with fsutil.Lock(path, "flock"):
        with pytest.raises(StateError, match="held"):
            with fsutil.Lock(path, "flock", max_wait_s=0.1):
                pass


def test_set_kinds_are_the_table():
    assert [k.name for k in setkinds.KINDS] == ["uid", "ucg", "scg"]
    assert setkinds.profile_sets("web") == {"uid_set": "uid-web", "ucg_set": "ucg-web",
                                            "scg_set": "scg-web"}
    assert setkinds.guards() == {"uid_set": "any-uid", "ucg_set": "any-ucg",
                                 "scg_set": "any-scg"}
    assert setkinds.UID.key(1001) == (1001).to_bytes(4, sys.byteorder).hex()
    assert setkinds.SCG.key(77) == (77).to_bytes(8, sys.byteorder).hex()
    assert setkinds.key_number(setkinds.UCG.key(2 ** 40 + 5)) == 2 ** 40 + 5
    assert (setkinds.UCG.level, setkinds.SCG.level) == (2, 3)
