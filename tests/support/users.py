"""Throwaway local users and groups for end-to-end tests (root only).

    with throwaway_user(groups=("students",)) as alice:
        alice.name, alice.uid, alice.gid, alice.home
        alice.groups["students"]          # the real (unique) name of the created group

Every user and group gets a unique name (``nftu1a2b3c``, ``students-1a2b3c``), so tests
never collide with real accounts or with each other, and policy files must use the
real names from the yielded object. On exit, even after a failure: every process of
the uid is SIGKILLed, the user, its home, its mail spool and its private group are
removed (``userdel -r``), then the groups this helper created.
"""

import grp
import os
import pwd
import secrets
import subprocess
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

__all__ = ["User", "Group", "throwaway_user", "throwaway_group", "kill_user_processes",
           "user_processes"]

NAME_MAX = 32


@dataclass(frozen=True)
class Group:
    name: str
    gid: int


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    password: str = None
    groups: dict = field(default_factory=dict)   # logical name -> real group name

    def __str__(self):
        return self.name


def _run(argv):
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def _unique(base, suffix_len=6):
    suffix = secrets.token_hex(suffix_len // 2)
    return f"{base[:NAME_MAX - len(suffix) - 1]}{suffix}"


def _exists_user(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _exists_group(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def user_processes(uid, zombies=False):
    """pids whose real, effective or saved uid is `uid` (from /proc); zombies are
    left out unless asked for (they are dead, their parent has not reaped them yet)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                state = None
                for line in f:
                    if line.startswith("State:"):
                        state = line.split()[1]
                    elif line.startswith("Uid:"):
                        uids = [int(x) for x in line.split()[1:4]]
                        if uid in uids and (zombies or state != "Z"):
                            pids.append(int(entry))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return pids


def kill_user_processes(uid, timeout=10.0):
    """SIGKILL every process of `uid` until none is left (new ones may be forking)."""
    deadline = time.monotonic() + timeout
    while True:
        subprocess.run(["pkill", "-KILL", "-U", str(uid)], capture_output=True)
        subprocess.run(["pkill", "-KILL", "-u", str(uid)], capture_output=True)
        left = user_processes(uid)
        if not left:
            return
        # zombies of a parent that is itself gone are reaped by init; give them time
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of uid {uid} survive SIGKILL: {left}")
        time.sleep(0.05)


@contextmanager
def throwaway_group(prefix="nftg"):
    """A new group with a unique name starting with `prefix`; yields a Group."""
    name = _unique(prefix)
    _run(["groupadd", name])
    try:
        yield Group(name, grp.getgrnam(name).gr_gid)
    finally:
        if _exists_group(name):
            _run(["groupdel", name])


@contextmanager
def throwaway_user(prefix="nft", groups=(), password=None, shell="/bin/bash", suffix=""):
    """A new local user ``<prefix>u<hex><suffix>`` with a home directory and the given
    shell. `prefix`/`suffix` may hold characters Debian's useradd accepts beyond the
    portable set (``$`` as in Samba machine accounts, ``+``, ``\\`` as in winbind's
    ``DOMAIN\\user``), for tests of such names.

    `groups`: supplementary groups. A string creates a new throwaway group named
    ``<string>-<hex>`` (yielded as ``user.groups[string]``); a Group (for instance from
    `throwaway_group`, to share one group between users) or ``("name",)`` tuple of an
    existing group is joined but not removed afterwards.
    `password`: if given, set with chpasswd (otherwise the account has no password,
    which key-based ssh, su from root and pam_permit stacks do not need).
    """
    with ExitStack() as stack:
        real_groups = {}
        for g in groups:
            if isinstance(g, Group):
                real_groups[g.name] = g.name
            elif isinstance(g, tuple):
                real_groups[g[0]] = g[0]
            else:
                created = stack.enter_context(throwaway_group(f"{g}-"))
                real_groups[g] = created.name
        name = _unique(f"{prefix}u")
        name = name[:NAME_MAX - len(suffix)] + suffix
        if _exists_user(name) or _exists_group(name):
            raise RuntimeError(f"random name collision: {name}")
        argv = ["useradd", "-m", "-s", shell]
        if real_groups:
            argv += ["-G", ",".join(real_groups.values())]
        _run(argv + [name])
        stack.callback(_remove_user, name)
        if password is not None:
            subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True,
                           check=True, capture_output=True)
        pw = pwd.getpwnam(name)
        yield User(name=name, uid=pw.pw_uid, gid=pw.pw_gid, home=pw.pw_dir,
                   shell=pw.pw_shell, password=password, groups=real_groups)


def _remove_user(name):
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return
    kill_user_processes(pw.pw_uid)
    proc = subprocess.run(["userdel", "-r", name], capture_output=True, text=True)
    # userdel -r exits 12 when only the mail spool was missing; the user is gone anyway
    if _exists_user(name):
        proc = subprocess.run(["userdel", "-r", "-f", name], capture_output=True, text=True)
        if _exists_user(name):
            raise RuntimeError(f"userdel {name} failed: {proc.stderr.strip()}")
    if os.path.isdir(pw.pw_dir) and pw.pw_dir.startswith("/home/"):
        subprocess.run(["rm", "-rf", "--one-file-system", pw.pw_dir], check=True)
    if _exists_group(name):
        subprocess.run(["groupdel", name], capture_output=True)
