"""The denial store: state_dir/log/denials.jsonl, one JSON entry a line (denials.py).

    state_dir/log/          root 0700; refused when another uid owns it or others may
                            write it (like records' run_dir)
      denials.jsonl         0600, appended by `netfence watch`, one os.write a line (a
                            reader never sees half an entry but after a crash)
      denials.jsonl.1       the previous file

Rotation: before an append, when the file's first entry is older than MAX_AGE_S (24 h)
or the file is MAX_BYTES (16 MiB) or more, it becomes denials.jsonl.1 (the older .1
goes) and a new file starts: so `netfence log` answers for at least the last day
while the rate limit holds it under the cap, and the store never exceeds 2 x MAX_BYTES.

Reading (`entries`, `follow`) skips lines that are not entries (a line cut by a crash
or a full disk) instead of failing. `follow` polls (FOLLOW_POLL_S) and survives a
rotation: it finishes the renamed file through its open descriptor, then opens the new.
"""

import datetime
import json
import os
import re
import time

from . import fsutil
from .errors import StateError, UsageError

LOG_DIR, FILE_NAME = "log", "denials.jsonl"
MAX_BYTES = 16 << 20
MAX_AGE_S = 86400.0
FOLLOW_POLL_S = 0.2
RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def log_path(state_dir):
    return os.path.join(state_dir, LOG_DIR, FILE_NAME)


def ensure_dir(state_dir):
    """Create state_dir/log (0700) and refuse a directory (or state_dir) another uid
    owns or others may write: they could plant or edit what the admin reads."""
    path = os.path.join(state_dir, LOG_DIR)
    for where in (state_dir, path):
        try:
            os.mkdir(where, 0o700 if where == path else 0o755)
        except FileExistsError:
            pass
        except OSError as err:
            raise StateError(f"mkdir {where}: {err.strerror}") from None
        _check_trusted(where, dir_wanted=True)
    return path


def _check_trusted(path, dir_wanted, st=None):
    st = st or os.lstat(path)
    is_dir = fsutil.S_IFMT & st.st_mode == fsutil.S_IFDIR
    problem = ("not a directory" if dir_wanted and not is_dir
               else "not a regular file" if not dir_wanted and st.st_mode & fsutil.S_IFMT
               != fsutil.S_IFREG else fsutil.owner_problem(st, os.geteuid()))
    if problem:
        raise StateError(f"{path}: {problem}: refusing the denial log there")


class DenialLog:
    """The writer (one: `netfence watch`). append() writes and flushes one entry."""

    def __init__(self, state_dir, max_bytes=MAX_BYTES, max_age_s=MAX_AGE_S):
        self.path = log_path(state_dir)
        self.state_dir, self.max_bytes, self.max_age_s = state_dir, max_bytes, max_age_s
        self.fd, self.started = None, None

    def _open(self, now):
        ensure_dir(self.state_dir)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            st = os.fstat(fd)
            _check_trusted(self.path, dir_wanted=False, st=st)
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.size = fd, st.st_size
        first = _first_time(self.path) if st.st_size else None
        self.started = now if first is None else first

    def append(self, entry):
        """OSError (ENOSPC, ...) and StateError reach the caller, which counts the loss."""
        now = time.time()
        if self.fd is None:
            self._open(now)
        if self.size >= self.max_bytes or now - self.started >= self.max_age_s:
            self.rotate(now)
        line = json.dumps(entry, sort_keys=True, ensure_ascii=True).encode() + b"\n"
        self.size += os.write(self.fd, line)

    def rotate(self, now=None):
        self.close()
        os.replace(self.path, self.path + ".1")
        self._open(time.time() if now is None else now)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _first_time(path):
    try:
        with open(path, "rb") as handle:
            entry = parse_line(handle.readline())
    except OSError:
        return None
    return entry["time"] if entry else None


def parse_line(line):
    """The entry on one line, or None when the line is not one (cut short, foreign)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("time"), (int, float)):
        return None
    return entry


# ---- reading ------------------------------------------------------------------------

def _open_for_reading(path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as err:                 # EACCES (not root), ELOOP (a symlink)
        raise StateError(f"{path}: cannot read the denial log: {err.strerror}") from None
    try:
        _check_trusted(path, dir_wanted=False, st=os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def entries(state_dir):
    """Every stored entry, oldest first (.1, then the current file)."""
    path = log_path(state_dir)
    for name in (path + ".1", path):
        handle = _open_for_reading(name)
        if handle is None:
            continue
        with handle:
            for line in handle:
                entry = parse_line(line)
                if entry is not None:
                    yield entry


def follow(state_dir, stop=lambda: False, poll_s=FOLLOW_POLL_S):
    """The entries appended from the call on (not from the first next()), as they
    come, until stop() is true."""
    path = log_path(state_dir)
    handle = _open_for_reading(path)
    if handle is not None:
        handle.seek(0, os.SEEK_END)
    return _follow(path, handle, stop, poll_s)


def _follow(path, handle, stop, poll_s):
    pending = b""
    while not stop():
        if handle is None:
            handle = _open_for_reading(path)
        chunk = handle.read() if handle is not None else b""
        pending += chunk or b""
        *lines, pending = pending.split(b"\n")
        for line in lines:
            entry = parse_line(line)
            if entry is not None:
                yield entry
        if handle is not None and not chunk and _rotated(handle, path):
            handle.close()                 # what the old file had was read above
            handle, pending = _open_for_reading(path), b""
            continue
        if not chunk:
            time.sleep(poll_s)


def _rotated(handle, path):
    try:
        return os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return True


# ---- filters --------------------------------------------------------------------------

def parse_since(text, now=None):
    """--since: an epoch ("1764500000"), ISO 8601 ("2026-11-30T17:00", local time
    unless it says its zone) or a time ago ("30m", "1h", "2d", "45s") -> epoch.
    UsageError otherwise."""
    now = time.time() if now is None else now
    text = text.strip()
    relative = RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * UNIT_SECONDS[relative.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UsageError(f"--since {text!r}: not an epoch, an ISO 8601 time "
                         "(2026-11-30T17:00) or a time ago (30m, 1h, 2d)") from None


def matches(entry, uid=None, session=None, profile=None, since=None):
    return ((uid is None or entry.get("uid") == uid)
            and (session is None or entry.get("session") == session)
            and (profile is None or entry.get("profile") == profile)
            and (since is None or entry["time"] >= since))
