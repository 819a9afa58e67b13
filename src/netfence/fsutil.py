"""Files: how netfence reads, writes, checks and locks them, said once.

  read_all / read_text   a whole file from an fd / a small kernel file (/proc, cgroupfs)
  read_regular           a state file's bytes; never blocks on a FIFO planted there
  write_atomic           temp file next to the target, then rename: readers see the
                         old content or the new, never a cut one
  owner_problem          why a file is not trusted (not root's, writable by others)
  Lock                   an exclusive lock held for a `with` block

Errors are OSError (callers name the file and what they were doing) except where a
function says otherwise. Light on purpose (the hook imports it): posix and errno (built in) only; fcntl is
imported only by a flock()-kind Lock, which the hook never takes.
"""

import errno
import posix

from .errors import StateError

S_IFMT, S_IFREG, S_IFDIR, S_IFIFO = 0o170000, 0o100000, 0o040000, 0o010000
S_ISVTX = 0o1000                 # the sticky bit
CHUNK = 65536


# ---- reading ----------------------------------------------------------------------

def read_all(fd, chunk_size=CHUNK, limit=None):
    """Everything readable from fd, which is closed afterwards (also on error).
    limit: OSError EFBIG as soon as more than `limit` bytes were read (what others
    write may be made large to stall or exhaust the reader)."""
    try:
        chunks, size = [], 0
        while True:
            chunk = posix.read(fd, chunk_size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if limit is not None and size > limit:
                raise OSError(errno.EFBIG, posix.strerror(errno.EFBIG))
    finally:
        posix.close(fd)
    return b"".join(chunks)


def read_text(path):
    """A small kernel file (/proc, cgroupfs) as text; OSError as the kernel gives it."""
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    return read_all(fd).decode("utf-8", "surrogateescape")


def open_regular(path, *, root_owned=False):
    """fd of the regular file at path, opened without following a symlink and without
    blocking (a FIFO planted there must not hang anyone); None when absent.
    root_owned: also refuse a file that is not root's or that others may write.
    StateError names the path and the problem."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NOFOLLOW
                        | posix.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StateError(f"{path}: unreadable: {err.strerror}") from None
    try:
        st = posix.fstat(fd)
        if st.st_mode & S_IFMT != S_IFREG:
            raise StateError(f"{path}: not a regular file")
        problem = owner_problem(st) if root_owned else ""
        if problem:
            raise StateError(f"{path}: {problem}")
    except BaseException:
        posix.close(fd)
        raise
    return fd


def read_regular(path, *, root_owned=False):
    """The bytes of the regular file at path (see open_regular); None when absent."""
    fd = open_regular(path, root_owned=root_owned)
    if fd is None:
        return None
    try:
        return read_all(fd)
    except OSError as err:
        raise StateError(f"{path}: unreadable: {err.strerror}") from None


# ---- ownership --------------------------------------------------------------------

def owner_problem(st, uid=0, sticky_ok=False):
    """Why the file or directory `st` describes cannot be trusted, or "": it must
    belong to `uid` and be writable by nobody else (group and others).
    sticky_ok: a sticky directory (like /tmp) may be writable by others, who cannot
    rename or remove the entries they do not own (for a directory above the file)."""
    if st.st_uid != uid:
        return f"owned by uid {st.st_uid}, not {uid}"
    if sticky_ok and st.st_mode & S_IFMT == S_IFDIR and st.st_mode & S_ISVTX:
        return ""
    writers = [who for who, bit in (("group", 0o020), ("others", 0o002))
               if st.st_mode & bit]
    if writers:
        return (f"writable by {' and '.join(writers)} "
                f"(mode {st.st_mode & 0o7777:04o})")
    return ""


# ---- writing ----------------------------------------------------------------------

def temp_path(path):
    """The temp file a writer of path uses: next to it, named by the writer's pid."""
    return f"{temp_prefix(path)}{posix.getpid()}"


def temp_prefix(path):
    """How every temp file of path starts (to find those a killed writer left)."""
    return f"{path}.tmp."


def write_file(path, data, mode=0o600, sync=False):
    """Create or truncate path and write data whole (a short write is retried, an
    error raised); mode is set whatever the umask; sync: fsync before returning."""
    fd = posix.open(path, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC
                    | posix.O_CLOEXEC | posix.O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[posix.write(fd, view):]
        posix.fchmod(fd, mode)
        if sync:
            posix.fsync(fd)
    finally:
        posix.close(fd)


def write_atomic(path, data, mode=0o600, sync=False):
    """Replace path with data whole, or raise OSError leaving path as it was (no temp
    file left behind). sync: the data and the rename are on disk when it returns."""
    tmp = temp_path(path)
    try:
        write_file(tmp, data, mode, sync)
        posix.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    if sync:
        fsync_dir(path.rpartition("/")[0] or ".")


def remove_quietly(path):
    try:
        posix.unlink(path)
    except OSError:
        pass


def fsync_dir(path):
    fd = posix.open(path, posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC)
    try:
        posix.fsync(fd)
    finally:
        posix.close(fd)


# ---- locking ----------------------------------------------------------------------

class Lock:
    """Exclusive lock on the file at path (created 0600), for a `with` block.

    kind "lockf": a POSIX record lock (needs a writable file; posix only, so the hook
    can take it). kind "flock": a BSD lock, which a read-only file also takes (a
    read-only state directory still serialises reloads, which then fail where they
    write). The two kinds do not exclude each other: each lock file has one kind.
    max_wait_s: None waits as long as it takes; else StateError after that long.
    """

    def __init__(self, path, kind="lockf", max_wait_s=None):
        if kind not in ("lockf", "flock"):
            raise ValueError(f"lock kind {kind!r}")
        self.path, self.kind, self.max_wait_s = path, kind, max_wait_s
        self.fd = -1

    def __enter__(self):
        self.fd = self._open()
        try:
            if self.max_wait_s is None:
                self._take(wait=True)
            else:
                self._wait(self.max_wait_s)
        except BaseException:
            posix.close(self.fd)
            self.fd = -1
            raise
        return self

    def __exit__(self, *exc):
        posix.close(self.fd)            # closing drops the lock
        self.fd = -1

    def _open(self):
        flags = posix.O_CREAT | posix.O_NOFOLLOW | posix.O_CLOEXEC
        try:
            return posix.open(self.path, posix.O_RDWR | flags, 0o600)
        except OSError as err:
            if self.kind == "lockf" or err.errno not in _READ_ONLY_ERRNOS:
                raise StateError(f"{self.path}: cannot open the lock: {err.strerror}"
                                 f" (errno {err.errno}); nothing was changed") from None
        try:
            return posix.open(self.path, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC)
        except OSError as err:
            raise StateError(f"{self.path}: cannot open the lock: {err.strerror}"
                             f" (errno {err.errno}); nothing was changed") from None

    def _take(self, wait):
        if self.kind == "lockf":
            posix.lockf(self.fd, posix.F_LOCK if wait else posix.F_TLOCK, 0)
        else:
            import fcntl
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))

    def _wait(self, seconds):
        import time
        deadline = time.monotonic() + seconds
        while True:
            try:
                self._take(wait=False)
                return
            except (BlockingIOError, PermissionError):      # EAGAIN / EACCES: held
                if time.monotonic() >= deadline:
                    raise StateError(f"{self.path}: held by another netfence process for "
                                     f"more than {seconds:g} s") from None
                time.sleep(0.01)


_READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.ENOSPC)
