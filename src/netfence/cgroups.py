"""Session cgroups (cgroup v2): find, create, join, leave and remove them.

Paths inside the hierarchy are absolute ("/netfence/user-1001/session-KEY"), as in
/proc/PID/cgroup; directories are <cgroup2 mount> + path. The kernel compares cgroup
ids, which are the directories' inode numbers.

Session cgroups sit at setkinds.SESSION_LEVEL (3) and user cgroups at USER_LEVEL (2),
the levels the compiler matches sockets at (docs/architecture.md):
  - logind's /user.slice/user-UID.slice/session-N.scope when the PAM application is
    already in one (pam_systemd ran first): used as is, never created or removed;
  - /<cgroup_base>/user-UID/session-KEY otherwise, created here, and the PAM
    application (the hook's parent) moved into it; a login from inside a netfence
    session of the same uid (`su - $USER`) joins that session instead (docs/hook.md);
  - /<cgroup_base>/run/<NAME>-<KEY> for a `netfence run` tree (runtree.py): created
    here, joined by the run process itself; its parent /<cgroup_base>/run is no user
    cgroup, and `own_dirs` (user-*/session-*) never lists it: gc finds these with
    `run_dirs`.

Light on purpose (the hook imports it): posix and errno only, files read through
fsutil, the system calls go through fastpath, errors become CgroupError here.
"""

import errno
import posix

from . import fastpath
from .errors import CgroupError
from .fsutil import read_text
from .setkinds import SESSION_LEVEL, USER_LEVEL

MOUNTINFO = "/proc/self/mountinfo"
RUN_PARENT = "run"          # /<base>/run holds the `netfence run` trees' cgroups
BASE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


# ---- reading the system ----------------------------------------------------------

def parse_mountinfo(text):
    """Mount point of the first cgroup2 file system in mountinfo text, or None."""
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep or tail.split(" ", 1)[0] != "cgroup2":
            continue
        fields = head.split(" ")
        if len(fields) >= 5:
            return _unescape(fields[4])
    return None


def _unescape(field):
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    if "\\" not in field:
        return field
    out, i = bytearray(), 0
    raw = field.encode()
    while i < len(raw):
        if raw[i] == 0x5C and raw[i + 1:i + 4].isdigit() and len(raw[i + 1:i + 4]) == 3:
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def cgroup2_mount(mountinfo=MOUNTINFO):
    try:
        text = read_text(mountinfo)
    except OSError as err:
        raise CgroupError(f"{mountinfo}: {err.strerror}") from None
    mount = parse_mountinfo(text)
    if mount is None:
        raise CgroupError("no cgroup2 file system is mounted (see /proc/self/mountinfo)")
    return mount


def parse_proc_cgroup(text):
    """The cgroup v2 path from /proc/PID/cgroup text (the "0::/path" line), or None."""
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:] or "/"
    return None


def proc_cgroup(pid):
    """cgroup v2 path of a process, or None when the process is gone."""
    try:
        return parse_proc_cgroup(read_text(f"/proc/{pid}/cgroup"))
    except (FileNotFoundError, ProcessLookupError):
        return None


def components(path):
    return [part for part in path.split("/") if part]


def is_logind_scope(path):
    """/user.slice/user-N.slice/session-X.scope (SESSION_LEVEL)."""
    parts = components(path)
    return (len(parts) == SESSION_LEVEL and _is_logind_user(parts)
            and parts[2].startswith("session-") and parts[2].endswith(".scope"))


def is_logind_slice(path):
    """/user.slice/user-N.slice (USER_LEVEL): logind's user cgroup, which a login of
    another uid (su inside a logind session) shares."""
    parts = components(path)
    return len(parts) == USER_LEVEL and _is_logind_user(parts)


def _is_logind_user(parts):
    """Whether parts begin with /user.slice/user-N.slice."""
    return (parts[0] == "user.slice" and parts[1].startswith("user-")
            and parts[1].endswith(".slice") and parts[1][5:-6].isdigit())


def is_own_session(path, base, uid):
    """/<base>/user-UID/session-KEY of this very uid (SESSION_LEVEL)."""
    parts = components(path)
    return (len(parts) == SESSION_LEVEL and parts[0] == base
            and parts[1] == f"user-{uid}" and parts[2].startswith("session-"))


def check_base(base):
    if (not base or base in (".", "..") or not set(base) <= BASE_CHARS
            or len(base) > 64):
        raise CgroupError(f"invalid cgroup_base {base!r}: one path component "
                          f"of [A-Za-z0-9_.-], at most 64 characters")
    return base


def cgroup_id(mount, path):
    rc, ident = fastpath.cg_id(mount + path)
    if rc:
        raise CgroupError(f"stat {mount + path}: {posix.strerror(-rc)}")
    return ident


def parent_path(path):
    return "/" + "/".join(components(path)[:-1])


# ---- open -------------------------------------------------------------------------

def open_session_cgroup(mount, base, uid, key, ppid):
    """Find or make the session cgroup of the login whose PAM application is ppid.

    Returns {"path", "id", "user_path", "user_id", "created", "origin"}: created is
    True when this call made the directory and moved ppid into it (from origin).
    """
    check_base(base)
    origin = proc_cgroup(ppid)
    if origin is None:
        raise CgroupError(f"PAM application {ppid} is gone")
    if is_logind_scope(origin) or is_own_session(origin, base, uid):
        path, created = origin, False
    else:
        path, created = f"/{base}/user-{uid}/session-{key}", True
        _make_dirs(mount, (f"/{base}", parent_path(path), path))
    made = {"path": path, "created": created, "origin": origin}
    try:
        # The hook's alarm can strike right after the move (it waits in the kernel
        # for an RCU grace period: cgroups' rwsem): whatever happens from the mkdir
        # on puts the application back and removes the directory.
        if created:
            rc = fastpath.cg_move(f"{mount}{path}/cgroup.procs", ppid)
            if rc:
                raise CgroupError(f"move process {ppid} into {mount + path}: "
                                  f"{posix.strerror(-rc)}")
        return dict(made, id=cgroup_id(mount, path), user_path=parent_path(path),
                    user_id=cgroup_id(mount, parent_path(path)))
    except BaseException:                  # includes the hook's timeout
        undo_open(mount, made, ppid)
        raise


def _make_dirs(mount, levels):
    for level in levels:
        rc = fastpath.cg_mkdir(mount + level, 0o755)
        if rc and rc != -errno.EEXIST:
            raise CgroupError(f"mkdir {mount + level}: {posix.strerror(-rc)}")


def undo_open(mount, cgroup, ppid):
    """Put ppid back where it came from and remove what open_session_cgroup made."""
    if cgroup and cgroup["created"]:
        leave(mount, cgroup["origin"], (ppid,))
        fastpath.cg_rmdir(mount + cgroup["path"])


# ---- close ------------------------------------------------------------------------

def leave(mount, origin, pids):
    """Move pids to origin (their cgroup before the session), or to the root if it
    is gone. Processes that exited meanwhile are fine."""
    target = origin if origin and _exists(mount + origin) else "/"
    for pid in pids:
        rc = fastpath.cg_move(f"{mount}{target}/cgroup.procs", pid)
        if rc == -errno.ENOENT and target != "/":
            rc = fastpath.cg_move(f"{mount}/cgroup.procs", pid)
        if rc and rc != -errno.ESRCH:
            raise CgroupError(f"move process {pid} to {mount + target}: "
                              f"{posix.strerror(-rc)}")


def _exists(path):
    try:
        posix.stat(path)
    except OSError:
        return False
    return True


def remove(mount, path):
    """rmdir a cgroup: "removed", "busy" (processes or children left) or "gone"."""
    rc = fastpath.cg_rmdir(mount + path)
    if rc == 0:
        return "removed"
    if rc in (-errno.EBUSY, -errno.ENOTEMPTY):
        return "busy"
    if rc == -errno.ENOENT:
        return "gone"
    raise CgroupError(f"rmdir {mount + path}: {posix.strerror(-rc)}")


def own_dirs(mount, base):
    """(user paths, session paths) of netfence's hierarchy under base."""
    users, sessions = [], []
    top = f"{mount}/{check_base(base)}"
    try:
        names = posix.listdir(top)
    except OSError:
        return users, sessions
    for name in names:
        if not name.startswith("user-"):
            continue
        user_path = f"/{base}/{name}"
        users.append(user_path)
        try:
            children = posix.listdir(mount + user_path)
        except OSError:
            continue
        sessions += [f"{user_path}/{c}" for c in children if c.startswith("session-")]
    return users, sessions


# ---- `netfence run` trees ------------------------------------------------------------

def open_run_cgroup(mount, base, leaf):
    """Make /<base>/run/<leaf> (SESSION_LEVEL) for a new tree; an existing directory is
    refused (each tree's leaf is unique: its run process's pid and start time).
    Returns {"path", "id", "created"}."""
    path = f"/{check_base(base)}/{RUN_PARENT}/{leaf}"
    for level in (f"/{base}", f"/{base}/{RUN_PARENT}"):
        rc = fastpath.cg_mkdir(mount + level, 0o755)
        if rc and rc != -errno.EEXIST:
            raise CgroupError(f"mkdir {mount + level}: {posix.strerror(-rc)}")
    rc = fastpath.cg_mkdir(mount + path, 0o755)
    if rc:
        raise CgroupError(f"mkdir {mount + path}: {posix.strerror(-rc)}")
    try:
        return {"path": path, "id": cgroup_id(mount, path), "created": True}
    except BaseException:
        fastpath.cg_rmdir(mount + path)
        raise


def join(mount, path, pid):
    """Move pid into the cgroup at path."""
    rc = fastpath.cg_move(f"{mount}{path}/cgroup.procs", pid)
    if rc:
        raise CgroupError(f"move process {pid} into {mount + path}: {posix.strerror(-rc)}")


def run_dirs(mount, base):
    """The `netfence run` tree cgroups under base (/<base>/run/*)."""
    parent = f"/{check_base(base)}/{RUN_PARENT}"
    try:
        names = posix.listdir(mount + parent)
    except OSError:
        return []
    return [f"{parent}/{name}" for name in names
            if _exists(f"{mount}{parent}/{name}/cgroup.procs")]
