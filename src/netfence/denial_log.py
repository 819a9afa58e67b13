"""The denial store: state_dir/log/denials.jsonl, one JSON entry a line (denials.py).

    state_dir/log/          root 0700; refused when another uid owns it or others may
                            write it (like records' run_dir)
      denials.jsonl         0600, appended by `netfence watch`, one os.write a line (a
                            reader never sees half an entry but after a crash)
      denials.jsonl.1       the previous file

Rotation: before an append, when the file's first entry is older than MAX_AGE_S (24 h)
or the file is MAX_BYTES (16 MiB) or more, it becomes denials.jsonl.1 (the older .1
goes) and a new file starts: so `netfence log` answers for at least the last day
while the rate limit holds it under the cap, and the store never exceeds 2 x MAX_BYTES
by more than one entry (the size is checked before an append).

Reading (`entries`, `follow`) applies the writer's checks to state_dir and log/ (no
symlink, ours, writable by nobody else) and opens the files through the checked
directory; it skips lines that are not entries (a line cut by a crash or a full disk)
instead of failing. `entries` opens the current file before .1, so that a rotation
between the opens is seen (.1 is then the file already open). `follow` polls
(FOLLOW_POLL_S) and survives a rotation: it reads the renamed file once more through
its open descriptor (what was appended between its last read and the rotation), then
opens the new.
"""

import datetime
import json
import math
import os
import re
import time

from . import fsutil
from .denials import TIME_RANGE
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

def _open_log_dir(state_dir):
    """A descriptor of state_dir/log after the writer's checks on state_dir and on it
    (no symlink, ours, writable by nobody else): else another uid could plant what the
    admin reads. None when either does not exist yet."""
    fds = []
    try:
        for name in (state_dir, LOG_DIR):
            fd = _open_checked(name, os.O_DIRECTORY, fds[-1] if fds else None)
            if fd is None:
                return None
            fds.append(fd)
        return fds.pop()
    finally:
        for fd in fds:
            os.close(fd)


def _open_checked(name, flags, dir_fd=None):
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | flags,
                     dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as err:                 # EACCES (not root), ELOOP (a symlink)
        raise StateError(f"{name}: cannot read the denial log: {err.strerror}") from None
    try:
        _check_trusted(name, dir_wanted=bool(flags), st=os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_for_reading(dir_fd, name):
    fd = _open_checked(name, 0, dir_fd)
    return None if fd is None else os.fdopen(fd, "rb")


def _open_files(state_dir, names):
    """Handles of names (None for a missing one) in the checked log directory."""
    dir_fd = _open_log_dir(state_dir)
    if dir_fd is None:
        return [None] * len(names)
    try:
        return [_open_for_reading(dir_fd, name) for name in names]
    finally:
        os.close(dir_fd)


def entries(state_dir):
    """Every stored entry, oldest first (.1, then the current file). The current file
    is opened first: a rotation between the two opens then shows as .1 being the file
    already open, and the new current file is opened too; no file is missed."""
    current, previous = _open_files(state_dir, (FILE_NAME, FILE_NAME + ".1"))
    if _same_file(current, previous):
        previous.close()
        previous, current = current, _open_files(state_dir, (FILE_NAME,))[0]
    for handle in (previous, current):
        if handle is None:
            continue
        with handle:
            for line in handle:
                entry = parse_line(line)
                if entry is not None:
                    yield entry


def _same_file(one, other):
    return (one is not None and other is not None
            and os.fstat(one.fileno()).st_ino == os.fstat(other.fileno()).st_ino)


def follow(state_dir, stop=lambda: False, poll_s=FOLLOW_POLL_S):
    """The entries appended from the call on (not from the first next()), as they
    come, until stop() is true."""
    (handle,) = _open_files(state_dir, (FILE_NAME,))
    if handle is not None:
        handle.seek(0, os.SEEK_END)
    return _follow(state_dir, handle, stop, poll_s)


def _follow(state_dir, handle, stop, poll_s):
    path, pending = log_path(state_dir), b""
    while not stop():
        if handle is None:
            (handle,) = _open_files(state_dir, (FILE_NAME,))
        chunk = (handle.read() if handle is not None else b"") or b""
        rotated = handle is not None and not chunk and _rotated(handle, path)
        if rotated:                        # what the old file got after the read above
            chunk = (handle.read() or b"") + b"\n"
            handle.close()
            handle = _open_files(state_dir, (FILE_NAME,))[0]
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            entry = parse_line(line)
            if entry is not None:
                yield entry
        if not chunk:
            time.sleep(poll_s)


def _rotated(handle, path):
    try:
        return os.stat(path, follow_symlinks=False).st_ino != os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return True


# ---- filters --------------------------------------------------------------------------

def parse_since(text, now=None):
    """--since: an epoch ("1764500000"), ISO 8601 ("2026-11-30T17:00", local time
    unless it says its zone; 8 digits are a basic ISO date, 20261130, not an epoch) or
    a time ago ("30m", "1h", "2d", "45s") -> epoch, within denials.TIME_RANGE (1970
    to 2242). UsageError otherwise."""
    now = time.time() if now is None else now
    text = text.strip()
    when = _since_value(text, now)
    if when is None:
        raise UsageError(f"--since {text!r}: not an epoch, an ISO 8601 time "
                         "(2026-11-30T17:00) or a time ago (30m, 1h, 2d)")
    if not (math.isfinite(when) and TIME_RANGE[0] < when < TIME_RANGE[1]):
        raise UsageError(f"--since {text!r}: out of range (1970 to 2242)")
    return when


def _since_value(text, now):
    """The epoch text says, nan when it names a time out of range, None if unread."""
    relative = RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * UNIT_SECONDS[relative.group(2)]
    if not (len(text) == 8 and text.isdigit()):
        try:
            return float(text)
        except ValueError:
            pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except (OverflowError, OSError):
        return math.nan
    except ValueError as err:
        return math.nan if "out of range" in str(err) else None


def matches(entry, uid=None, session=None, profile=None, since=None):
    return ((uid is None or entry.get("uid") == uid)
            and (session is None or entry.get("session") == session)
            and (profile is None or entry.get("profile") == profile)
            and (since is None or entry["time"] >= since))
