"""Is a session, or a user's processes, still alive? Asked by close and gc.

A session is its PAM application: alive while the process with the recorded pid and
start time is (pids are reused; the pair is not).

A user's user-scope restrictions live while any task remains in one of the user cgroups
its fenced logins used (netfence's /<cgroup_base>/user-UID, or logind's
/user.slice/user-UID.slice). That is the kernel's own accounting (`cgroup.events`
"populated"), not a reading of /proc:
  - it counts every task, so a thread-group leader that exited (state Z) while its
    threads run keeps the user alive (cgroup.procs lists such a leader too);
  - its cost is the user's own cgroups and processes, whatever else runs on the host;
  - a process cannot leave these cgroups: their cgroup.procs files are root's, and
    moving a process needs write access to the common ancestor.

Light on purpose (the hook imports it at close): posix only, files read through fsutil.
"""

import posix

from .errors import CgroupError
from .fsutil import read_text


# ---- the PAM application ---------------------------------------------------------

def _stat_field(stat_text, number):
    """Field `number` (1-based, as in proc(5)) of a /proc/PID/stat text, counted after
    the parenthesised command, which may hold spaces and parentheses."""
    rest = stat_text[stat_text.rindex(")") + 2:].split(" ")
    return int(rest[number - 3])


def parse_starttime(stat_text):
    """Field 22 of /proc/PID/stat: the start time, in clock ticks after boot."""
    return _stat_field(stat_text, 22)


def parse_parent(stat_text):
    """Field 4 of /proc/PID/stat: the parent's pid."""
    return _stat_field(stat_text, 4)


def _from_proc_stat(pid, parse):
    """parse(the text of /proc/PID/stat), or None when the process is gone."""
    try:
        return parse(read_text(f"/proc/{pid}/stat"))
    except (OSError, ValueError, IndexError):
        return None


def proc_starttime(pid):
    return _from_proc_stat(pid, parse_starttime)


def proc_parent(pid):
    """The parent's pid, or None when pid is gone."""
    return _from_proc_stat(pid, parse_parent)


def session_key(ppid):
    """(key, start time) of the PAM application: stable between its open and close.

    A parent that is pid 1 is not a PAM application: the application died while
    pam_exec's child was starting and init adopted the hook. Taking init for the
    session would move init into the user's session cgroup, fencing every service it
    starts from then on, and keep the session alive forever (found by the chaos test).
    """
    if ppid <= 1:
        raise CgroupError(f"PAM application gone: the hook's parent is pid {ppid}")
    start = proc_starttime(ppid)
    if start is None:
        raise CgroupError(f"PAM application {ppid} is gone")
    return f"{ppid}-{start}", start


def is_alive(record):
    start = proc_starttime(record["ppid"])
    if start is None:
        return _exists_unseen(record["ppid"])
    return start == record["starttime"]


def _exists_unseen(pid):
    """/proc/PID/stat unreadable: the process is gone, or /proc hides it from us
    (hidepid=2 without CAP_SYS_PTRACE, as netfence-watch.service runs: a su or sudo
    application has the user's real uid). A pid that still exists counts as alive,
    as a zombie does when /proc shows it: closing a live session on a guess would be
    the unsafe mistake. Its start time cannot be checked then: a reused pid keeps the
    session until that process is gone too."""
    try:
        posix.close(posix.pidfd_open(pid))
    except ProcessLookupError:
        return False
    except OSError:
        return True                       # EMFILE and the like: not a proof of exit
    return True


# ---- processes in a cgroup subtree -----------------------------------------------

def parse_populated(events_text):
    """The "populated" field of a cgroup.events text (1 while any task is inside the
    cgroup or below it)."""
    for line in events_text.splitlines():
        name, _, value = line.partition(" ")
        if name == "populated":
            return value.strip() == "1"
    raise ValueError("no populated field")


def has_processes(mount, path, exclude=()):
    """True while a task lives in the cgroup at path or below it, not counting the
    processes in exclude (the closing PAM application and the hook itself).

    A cgroup that does not exist has none. An unreadable cgroup.events or
    cgroup.procs counts as "has processes": releasing restrictions on a guess would
    be the unsafe mistake.
    """
    return _busy(mount + path, {str(pid) for pid in exclude})


def _busy(directory, excluded):
    try:
        if not parse_populated(read_text(f"{directory}/cgroup.events")):
            return False
        procs = read_text(f"{directory}/cgroup.procs").split()
        children = [e.name for e in posix.scandir(directory) if e.is_dir()]
    except FileNotFoundError:
        return False                     # removed meanwhile: nothing lives in it
    except (OSError, ValueError):
        return True
    if any(pid not in excluded for pid in procs):
        return True
    return any(_busy(f"{directory}/{child}", excluded) for child in children)

