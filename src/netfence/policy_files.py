"""Reading policy files securely: the part of policy.py that touches the file system.

Files and every directory above them must be root-owned and not writable by group or
others (like sudo and sshd's StrictModes); each component is opened with O_NOFOLLOW
relative to the one above and checked with fstat on that descriptor, so nothing can be
swapped in between the check and the read.
"""

import errno
import os
import stat

from . import fsutil
from .errors import PolicyError

MAIN_FILE = "netfence.toml"
DROPIN_DIR = "netfence.d"
DROPIN_SUFFIX = ".toml"
MAX_FILE_BYTES = 1 << 20
NO_SUCH_DIRECTORY = "no such directory"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


class _Refused(Exception):
    def __init__(self, path, message):
        super().__init__(message)
        self.problem = (path, 0, message)


def read_files(config_dir, check, problems):
    """[(path, text)] in reading order; refused or unreadable files go to problems."""
    root = os.path.abspath(config_dir)
    try:
        dir_fd = _open_config_dir(root, check)
    except _Refused as err:
        raise PolicyError([err.problem]) from None
    files = []
    try:
        _read_one(dir_fd, root, MAIN_FILE, check, files, problems, missing_ok=True)
        dropin_fd = _open_dropins(dir_fd, root, check, problems)
    finally:
        os.close(dir_fd)
    if dropin_fd is None:
        return files
    dropin_path = os.path.join(root, DROPIN_DIR)
    try:                     # files are opened relative to the checked directory fd
        for name in _policy_names(os.listdir(dropin_fd)):
            _read_one(dropin_fd, dropin_path, name, check, files, problems)
    finally:
        os.close(dropin_fd)
    return files


def _open_config_dir(root, check):
    """An fd on config_dir; with check, every directory from / down must be safe."""
    if not check:
        return _open_dir(None, root, root, nofollow=False)
    fd = _open_dir(None, "/", "/", nofollow=False)
    path = "/"
    try:
        _check_fd(fd, path)
        for part in [p for p in root.split("/") if p]:
            path = os.path.join(path, part)
            child = _open_dir(fd, part, path, nofollow=True)
            os.close(fd)
            fd = child
            _check_fd(fd, path)
    except _Refused:
        os.close(fd)
        raise
    return fd


def _open_dir(dir_fd, name, path, nofollow):
    """Open a directory (relative to dir_fd); a symbolic link is refused with nofollow."""
    try:
        if nofollow and stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode):
            raise _Refused(path, "refusing: is a symbolic link")
        return os.open(name, _DIR_FLAGS | (os.O_NOFOLLOW if nofollow else 0), dir_fd=dir_fd)
    except FileNotFoundError:
        raise _Refused(path, NO_SUCH_DIRECTORY) from None
    except OSError as err:
        raise _Refused(path, _open_failure(err, "directory")) from None


def _open_failure(err, kind):
    if err.errno == errno.ELOOP:
        return "refusing: is a symbolic link"
    if err.errno == errno.ENOTDIR:
        return f"not a {kind}"
    return f"cannot open: {err.strerror}"


def _check_fd(fd, path, regular=False, check=True):
    """Refuse what is not a regular file (if asked), not root's, or group/other writable."""
    st = os.fstat(fd)
    if regular and not stat.S_ISREG(st.st_mode):
        raise _Refused(path, "refusing: not a regular file")
    problem = fsutil.owner_problem(st) if check else ""
    if problem and st.st_uid != 0:
        # `netfence check` has said it this way since the start (admins grep for it)
        problem = f"not owned by root (owner uid {st.st_uid})"
    if problem:
        raise _Refused(path, f"refusing: {problem}")


def _open_dropins(dir_fd, root, check, problems):
    """An fd on netfence.d, or None when it is absent or refused (refusal recorded)."""
    path = os.path.join(root, DROPIN_DIR)
    try:
        fd = _open_dir(dir_fd, DROPIN_DIR, path, nofollow=True)
    except _Refused as err:
        if err.problem[2] != NO_SUCH_DIRECTORY:
            problems.append(err.problem)
        return None
    try:
        _check_fd(fd, path, check=check)
    except _Refused as err:
        os.close(fd)
        problems.append(err.problem)
        return None
    return fd


def _policy_names(names):
    """*.toml in bytewise (C locale) order; names starting with "." are editor files."""
    wanted = [n for n in names if n.endswith(DROPIN_SUFFIX) and not n.startswith(".")]
    return sorted(wanted, key=os.fsencode)


def _read_one(dir_fd, root, name, check, files, problems, missing_ok=False):
    path = os.path.join(root, name)
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not missing_ok:
            problems.append((path, 0, "vanished while reading"))
        return
    except OSError as err:
        problems.append((path, 0, _open_failure(err, "regular file")))
        return
    try:
        data = _read_checked(fd, path, check)
    except _Refused as err:
        problems.append(err.problem)
        return
    try:
        files.append((path, _decode(data)))
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        problems.append((path, line, f"not valid UTF-8 (byte 0x{data[err.start]:02x})"))


def _read_checked(fd, path, check):
    """The file's bytes once _check_fd passed them (fd is closed); _Refused if not."""
    try:
        _check_fd(fd, path, regular=True, check=check)
    except BaseException:
        os.close(fd)
        raise
    try:
        return fsutil.read_all(fd, limit=MAX_FILE_BYTES)          # closes fd
    except OSError as err:
        if err.errno != errno.EFBIG:
            raise
        raise _Refused(path, f"refusing: larger than {MAX_FILE_BYTES} bytes") from None


def _decode(data):
    text = data.decode("utf-8")
    return text[1:] if text.startswith("\ufeff") else text
