"""`netfence run`: fence one process tree by a cgroup of its own (the post's
--pid-owner, done right; docs/run.md).

    netfence run --profile P [--profile Q] [--user U] [--name NAME] -- CMD ARGS...

The tree's cgroup is /<cgroup_base>/run/<NAME>-<KEY> (setkinds.SESSION_LEVEL), KEY
the run process's "<pid>-<start time>". Every profile applies at session scope, keyed
by that cgroup, so the compiled scg-P sets and their rules serve it as they serve a
login. In order, under the records lock, as sessions.open_session does:
  the cgroup -> the record (runs/KEY, kind "run": intent first) -> one add batch ->
  the run process joins the cgroup.
Then, outside the lock, it drops to U (initgroups, setgid, setuid) and execs CMD:
`run` IS the command from then on (same pid, exit status and signals). Anything that
fails before the exec is put back (_Undo); a failed exec exits 127/126 like a shell.

A tree lives while its cgroup holds any task (liveness.has_processes: cgroup.events),
not while the first pid does: a daemon that double-forks and setsid()s stays fenced,
and no process of the tree can move itself out (the cgroup.procs files are root's,
and moving needs write access to the common ancestor). gc (collect.py) closes a run
record once its cgroup is empty: close_tree, the same plan.close_plan as a session's.
"""

import errno
import os
import signal
import sys
import time

from . import cgroups, fastpath, plan, records
from .errors import NetfenceError, StateError, UsageError
from .liveness import has_processes, proc_starttime
from .records import Lock
from .records import stamp_boot
from .sessions import UNDO_TIMEOUT_MS, finish_pending, keep_history, known_refused

NAME_CHARS = cgroups.BASE_CHARS
MAX_NAME = 64
NOT_FOUND, CANNOT_EXECUTE = 127, 126          # as a shell says it


class CommandError(NetfenceError):
    """CMD cannot be executed; status: the exit status a shell would give."""

    def __init__(self, status, message):
        self.status = status
        super().__init__(message)


# ---- pure parts: arguments ----------------------------------------------------------

def tree_name(name, argv):
    """The tree's name: NAME, or CMD's basename. UsageError when it is not one of
    [A-Za-z0-9_.-], at most 64 characters (it becomes part of a cgroup's name)."""
    if not argv or not argv[0]:
        raise UsageError("no command: netfence run --profile P [--user U] "
                         "[--name NAME] -- CMD [ARGS...]")
    if name is None:
        name = argv[0].rstrip("/").rsplit("/", 1)[-1]
    if (not name or name in (".", "..") or not set(name) <= NAME_CHARS
            or len(name) > MAX_NAME):
        raise UsageError(f"invalid name {name!r}: [A-Za-z0-9_.-], at most {MAX_NAME} "
                         f"characters (give one with --name)")
    return name


def check_profiles(login, wanted):
    """The profiles asked for, each once, in order; UsageError naming the first one
    the applied snapshot does not have, and the ones it has."""
    if not wanted:
        raise UsageError("at least one --profile is needed")
    known = sorted(login.get("profiles", {}))
    for name in wanted:
        if name not in known:
            raise UsageError(f"unknown profile {name!r}: the applied policy has "
                             f"{', '.join(known) or 'none'} (`netfence reload` applies "
                             f"the policy files)")
    return list(dict.fromkeys(wanted))


def user_environment(env, account):
    """The environment CMD gets as account, as `runuser -u U --` sets it."""
    return dict(env, HOME=account.pw_dir, USER=account.pw_name,
                LOGNAME=account.pw_name, SHELL=account.pw_shell or "/bin/sh")


def candidates(command, search_path):
    """The paths execvp would try for command, in order."""
    if "/" in command:
        return [command]
    return [f"{d or '.'}/{command}" for d in search_path.split(":")]


def pick_command(command, search_path, check):
    """The first candidate check(path) accepts (0), as execvp picks it; CommandError
    127 when none exists, 126 when the only ones found cannot be executed."""
    denied = None
    for path in candidates(command, search_path):
        problem = check(path)
        if not problem:
            return path
        if problem != errno.ENOENT and denied is None:
            denied = (path, problem)
    if denied:
        raise CommandError(CANNOT_EXECUTE, f"{denied[0]}: {os.strerror(denied[1])}")
    raise CommandError(NOT_FOUND, f"{command}: command not found")


# ---- records and kernel: open and close a tree ---------------------------------------

def open_tree(run_dir, login, run, profiles, mount,
              timeout_ms=fastpath.DEFAULT_TIMEOUT_MS):
    """Make the tree's cgroup, write its record, add its elements, move run["pid"]
    into the cgroup; all under the records lock, so that gc never sees the record
    with an empty cgroup. Returns the record; raises with everything put back."""
    records.ensure_dirs(run_dir)
    with Lock(run_dir):
        cgroup = cgroups.open_run_cgroup(mount, plan.cgroup_base(login),
                                         f"{run['name']}-{run['key']}")
        undo = _Undo(run_dir, run["key"], mount, cgroup["path"])
        try:
            undo.record = stamp_boot(plan.run_record(login, run, profiles, cgroup,
                                                     time.time()))
            records.write(records.run_path(run_dir, run["key"]), undo.record)
            undo.sent = True
            fastpath.add_elements(login.get("templates"), undo.record["session_elements"],
                                  timeout_ms)
            cgroups.join(mount, cgroup["path"], run["pid"])
        except BaseException as err:
            undo.run(err)
            raise
    return undo.record


class _Undo:
    """Puts a failed open back, records first: the elements the batch may have added
    stay in the record as a pending "destroy" until they are gone (gc finishes it)."""

    def __init__(self, run_dir, key, mount, path):
        self.run_dir, self.key, self.mount, self.path = run_dir, key, mount, path
        self.record, self.sent = None, False

    def run(self, err):
        record_file = records.run_path(self.run_dir, self.key)
        try:
            pending = (self.record["session_elements"]
                       if self.sent and not known_refused(err) else {})
            if not pending:
                records.delete(record_file)
                return
            records.write(record_file, dict(self.record, closing=True, destroy=pending))
            try:
                finish_pending(self.run_dir, record_file, UNDO_TIMEOUT_MS)
            except Exception:                     # noqa: BLE001 - gc finishes it
                return
        finally:
            fastpath.cg_rmdir(self.mount + self.path)


def close_tree(run_dir, key, mount, timeout_ms=fastpath.DEFAULT_TIMEOUT_MS, leaving=()):
    """Close the tree KEY once its cgroup holds no task (leaving: the run process
    itself after a failed exec, moved out first). Intent first, as a session close:
    the record marked closing with its elements, the batch, rmdir, the record gone.
    Returns "absent", "alive" or "closed"."""
    record_file = records.run_path(run_dir, key)
    with Lock(run_dir):
        finish_pending(run_dir, record_file, timeout_ms)
        record = records.read(record_file)
        if record is None:
            return "absent"
        if leaving:
            cgroups.leave(mount, record.get("origin"), leaving)
        if has_processes(mount, record["cgroup"]):
            return "alive"
        todo = plan.close_plan(record, [], [], None, False, {})
        records.write(record_file, todo["closing"])
        keep_history(run_dir, record)           # totals and closed record, as a session's
        fastpath.destroy_elements(todo["destroy"], timeout_ms)
        if todo["ours"]:
            cgroups.remove(mount, record["cgroup"])
        records.delete(record_file)
    return "closed"


def list_trees(run_dir, mount=None):
    """The trees for status: name, pid, user, profiles, cgroup, since, and (with the
    cgroup2 mount) whether a task is left in the tree ("ended": gc closes it)."""
    return [{"name": r["name"], "pid": r["pid"], "user": r.get("user"),
             "profiles": r["profiles"], "cgroup": r["cgroup"], "since": r["started"],
             "ended": None if mount is None else not has_processes(mount, r["cgroup"])}
            for r in records.list_runs(run_dir) if not r.get("closing")]


# ---- the process: account, command, exec --------------------------------------------

def run(paths, wanted, user, name, argv):
    """Fence and exec. Returns an exit status only when CMD could not be started
    (1 for netfence's own failures is the caller's: they raise NetfenceError)."""
    from .hook import load_login
    if os.geteuid() != 0:
        raise UsageError("needs root: it makes a cgroup, writes netfence's records and "
                         "changes the table (run it as root, with --user for the command)")
    name = tree_name(name, argv)
    login = load_login(paths.state_dir)
    profiles = check_profiles(login, wanted)
    account = lookup_account(user) if user else None
    env = user_environment(os.environ, account) if account else dict(os.environ)
    with _credentials_of(account):
        path = pick_command(argv[0], env.get("PATH", os.defpath), _exec_problem)
    mount = cgroups.cgroup2_mount()
    record = open_tree(paths.run_dir, login, _run_info(name, account, argv), profiles,
                       mount)
    try:
        _become(account)
        _restore_signals()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException as err:
        _put_back(paths.run_dir, record, mount)
        if isinstance(err, OSError):
            raise StateError(f"cannot become {user}: {err.strerror}") from None
        raise
    try:
        os.execve(path, argv, env)
    except OSError as err:
        print(f"netfence run: {path}: {err.strerror}", file=sys.stderr)
        _put_back(paths.run_dir, record, mount)
        return NOT_FOUND if err.errno == errno.ENOENT else CANNOT_EXECUTE


def lookup_account(user):
    """The passwd entry of --user; UsageError when there is no such account."""
    import pwd
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"--user {user!r}: no such account") from None


def _run_info(name, account, argv):
    import pwd
    pid = os.getpid()
    start = proc_starttime(pid)
    if start is None:
        raise StateError(f"/proc/{pid}/stat: unreadable")
    if account is None:
        try:
            account = pwd.getpwuid(os.getuid())
        except KeyError:
            account = None
    return {"key": f"{pid}-{start}", "pid": pid, "starttime": start, "name": name,
            "user": account.pw_name if account else str(os.getuid()),
            "uid": account.pw_uid if account else os.getuid(), "argv": list(argv),
            "origin": cgroups.proc_cgroup(pid)}


class _credentials_of:
    """Effective uid, gid and groups of account for the block (root may switch back):
    the command is looked up with the permissions it will be executed with."""

    def __init__(self, account):
        self.account = account

    def __enter__(self):
        if self.account is None:
            return
        self.saved = (os.getegid(), os.getgroups())
        os.setgroups(os.getgrouplist(self.account.pw_name, self.account.pw_gid))
        os.setegid(self.account.pw_gid)
        os.seteuid(self.account.pw_uid)

    def __exit__(self, *exc):
        if self.account is None:
            return
        os.seteuid(0)
        os.setegid(self.saved[0])
        os.setgroups(self.saved[1])


def _exec_problem(path):
    """0 when path is a file the effective ids may execute, else an errno."""
    import stat
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return errno.ENOENT
    except OSError as err:
        return err.errno
    if not stat.S_ISREG(mode) or not os.access(path, os.X_OK, effective_ids=True):
        return errno.EACCES
    return 0


def _become(account):
    """Drop to account for good: groups, then gid, then uid (in that order: after
    setuid nothing else could be changed)."""
    if account is None:
        return
    os.initgroups(account.pw_name, account.pw_gid)
    os.setgid(account.pw_gid)
    os.setuid(account.pw_uid)


def _restore_signals():
    """Python ignores SIGPIPE and SIGXFSZ; an exec keeps ignored signals ignored."""
    for number in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(number, signal.SIG_DFL)


def _put_back(run_dir, record, mount):
    """Remove what the tree added when CMD never ran. Only root can: once the ids
    are dropped, the run process leaves an empty cgroup when it exits, and gc
    closes the tree."""
    if os.geteuid() != 0:
        print("netfence run: `netfence gc` removes this tree's entries", file=sys.stderr)
        return
    try:
        close_tree(run_dir, record["key"], mount, leaving=(record["pid"],))
    except NetfenceError as err:
        print(f"netfence run: {err}; `netfence gc` removes them", file=sys.stderr)
