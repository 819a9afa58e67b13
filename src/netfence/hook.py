"""The program pam_exec runs at every session open and close (docs/hook.md).

    session required pam_exec.so seteuid quiet /usr/lib/netfence/netfence-hook [ARGS]

ARGS: state_dir=DIR run_dir=DIR on_error=deny|allow timeout_ms=N debug fastpath=c|python
(unknown or invalid ones are logged and ignored, as PAM modules do).

One login reads from main() down: pam_exec's items (pamitems: an environment that is
not pam_exec's for a session is a failure, never "nothing to do"), the time budget, the
snapshot (load_login), the account (accounts), then do_open (matcher, then
sessions.open_session) or do_close (sessions.close_session), and one log line
(hooklog). Exit 0 lets the session go on; exit 1 makes pam_exec fail, which with
`required` refuses the login. Under the static launcher (c_ext/hook_launcher.c) the
last argument is `launcher_fd=N`: the hook reports its budget and on_error there, and
the launcher kills it if it overruns (tell_launcher).

Import cost is the point of this module's shape: it runs under `python3 -I -S` before
every login, within 1.5x of a bare interpreter start. So: `posix` not `os` (~2 ms),
`_signal` not `signal` (~10 ms, enum), no json, re, socket, ipaddress, dataclasses;
grp only when a rule names groups, the C extension only when there is something to
send, time.localtime only when a rule has a time window, syslog by hand over _socket.
"""

import errno
import posix
import sys
import time

import _signal

from . import formats, fsutil, pamitems
from .errors import HookInputError, KernelError, NetfenceError, StateError
from .hooklog import LOG_ERR, LOG_INFO, Log, show, timed_field, totals_fields

STATE_DIR = "/var/lib/netfence"
RUN_DIR = "/run/netfence"
LOGIN_FILE = "login.marshal"
SNAPSHOT_CHUNK = 1 << 20        # one read() for any snapshot a policy makes
SNAPSHOT_WAIT_S = 0.5           # for the one a reload renames in (_changed_login)
DEFAULT_TIMEOUT_MS = 2000
MAX_TIMEOUT_MS = 60000
EVENTS = {"open_session": "open", "close_session": "close"}


class HookTimeout(NetfenceError):
    """The hook ran out of its time budget (timeout_ms)."""


def run(argv):
    """main(), then exit at once: the work is done and nothing is buffered but stderr
    (flushed here), so skipping interpreter teardown saves pam_exec 5-15 ms."""
    code = main(argv)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    posix._exit(code)


def main(argv):
    start = time.monotonic()
    _own_alarm()
    _clean_environment()
    argv, report_fd = launcher_pipe(argv)
    launcher = posix.getppid() if report_fd >= 0 else 0
    opts, warnings = parse_args(argv)
    env, ignored, problem = pamitems.session_environment()
    log = Log(opts["debug"], EVENTS.get(env.get("PAM_TYPE"), "-"), start)
    if problem:                             # not a session this hook can act on: never
        log.line(LOG_ERR, result="invalid", error=problem)      # exit 0 for it
        return 1
    budget = _Budget(start)
    budget.arm(opts["timeout_ms"] or DEFAULT_TIMEOUT_MS)
    on_error = opts["on_error"] or "deny"
    try:
        for warning in warnings + pamitems.ignored_warnings(ignored):
            log.warn(warning)
        items = pamitems.login_items(env)
        log.fields.update(items)
        if log.fields["event"] == "open":
            login, unusable = _read_snapshot(opts["state_dir"])
            on_error = _apply_settings(opts, login, budget)
            # before the user lookup, which may hang in NSS: the launcher then applies
            # the policy's budget and on_error
            report_fd = tell_launcher(report_fd, budget.ms, on_error)
            from .accounts import lookup_account                # open only: not at close
            account = lookup_account(items["user"])             # a non-account is refused
            if unusable is not None:                            # whatever the snapshot
                raise unusable
            do_open(opts, login, items, account, pam_application(launcher), budget, log)
        else:
            report_fd = tell_launcher(report_fd, budget.ms, on_error)
            do_close(opts, pam_application(launcher), launcher, budget, log)
        budget.disarm()
    except HookInputError as err:
        budget.disarm()
        log.line(LOG_ERR, result="invalid", error=str(err))
        return 1                            # whatever on_error says: hostile input
    except (NetfenceError, OSError) as err:
        budget.disarm()
        return log.failed(on_error, err)
    except Exception as err:                # noqa: BLE001 - a bug must not hang or
        budget.disarm()                     # crash the login; on_error decides
        return log.failed(on_error, err, internal=True)
    log.line(LOG_INFO)
    return 0


# ---- the process state pam_exec left ----------------------------------------------

def _own_alarm():
    """SIGALRM delivered and handled here whatever the login program left: a blocked
    mask and SIG_IGN survive exec of setuid su (without the launcher, which resets
    both, nothing else would)."""
    _signal.setitimer(_signal.ITIMER_REAL, 0)            # none inherited either
    _signal.signal(_signal.SIGALRM, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [_signal.SIGALRM])


def _clean_environment():
    """Keep only PAM_* in the process environment, as the launcher does (a hook run
    without it gets the whole PAM environment, which pam_env fills from
    ~/.pam_environment). libc and NSS modules read variables on their own: TZ would
    move the clock out of a rule's time window, LDAPCONF/LDAPRC redirect an in-process
    LDAP user lookup, LOCALDOMAIN/RES_OPTIONS the resolver. The hook itself reads the
    items from /proc/self/environ, which this does not change."""
    names = [name for name in posix.environ if not name.startswith(b"PAM_")]
    for name in names:
        posix.unsetenv(name)
        del posix.environ[name]
    if b"TZ" in names:
        time.tzset()                        # the machine's /etc/localtime again


# ---- arguments --------------------------------------------------------------------

LAUNCHER_FD_ARG = "launcher_fd="


def launcher_pipe(argv):
    """(argv without the launcher's argument, fd of the launcher's pipe or -1).

    The static launcher appends `launcher_fd=N` (last), N the write end of a pipe it
    reads the effective budget from. Only a last argument naming an inherited pipe is
    taken; the environment plays no part."""
    if not argv or not argv[-1].startswith(LAUNCHER_FD_ARG):
        return argv, -1
    value = argv[-1][len(LAUNCHER_FD_ARG):]
    argv = argv[:-1]
    if not (value.isascii() and value.isdigit() and 3 <= int(value) < 65536):
        return argv, -1
    try:
        st = posix.fstat(int(value))
    except OSError:
        return argv, -1
    if st.st_mode & fsutil.S_IFMT != fsutil.S_IFIFO:
        return argv, -1
    return argv, int(value)


def parse_args(argv):
    """(options, warnings): lenient like PAM modules; bad arguments are ignored."""
    opts = {"state_dir": STATE_DIR, "run_dir": RUN_DIR, "on_error": None,
            "timeout_ms": None, "debug": False, "fastpath": "c"}
    warnings = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if arg == "debug":
            opts["debug"] = True
        elif name in ("state_dir", "run_dir") and sep and _abs_path(value):
            opts[name] = value.rstrip("/") or "/"
        elif name == "on_error" and value in ("deny", "allow"):
            opts["on_error"] = value
        elif (name == "timeout_ms" and value.isascii() and value.isdigit()
              and 1 <= int(value) <= MAX_TIMEOUT_MS):
            opts["timeout_ms"] = int(value)
        elif name == "fastpath" and value in ("c", "python"):
            opts["fastpath"] = value
        else:
            warnings.append(f"ignored argument {show(arg)}")
    return opts, warnings


def _abs_path(value):
    return (value.startswith("/") and len(value) < 4096 and "\0" not in value
            and value.isprintable())


# ---- time budget ------------------------------------------------------------------

class _Budget:
    def __init__(self, start):
        self.start = start
        self.ms = DEFAULT_TIMEOUT_MS
        self.done = False

    def arm(self, ms):
        """(Re)arm the one-shot alarm so that it fires `ms` after the hook started."""
        self.ms = ms
        left = ms / 1000 - (time.monotonic() - self.start)
        _signal.signal(_signal.SIGALRM, self._expired)
        _signal.setitimer(_signal.ITIMER_REAL, max(left, 0.001))

    def disarm(self):
        self.done = True
        _signal.setitimer(_signal.ITIMER_REAL, 0)

    def left_ms(self):
        return max(1, int(self.ms - (time.monotonic() - self.start) * 1000))

    def _expired(self, signum, frame):
        if not self.done:
            raise HookTimeout(f"timed out after {self.ms} ms")


# ---- the snapshot -----------------------------------------------------------------

def _read_snapshot(state_dir):
    """(login part, None), or (None, the StateError), raised only after the user
    lookup: a non-account is refused whatever the snapshot."""
    try:
        return load_login(state_dir), None
    except StateError as err:
        return None, err


def load_login(state_dir):
    """The login part of the last applied snapshot; StateError when unusable, among
    others when it is of a format this hook does not read (formats.py)."""
    import marshal
    path = f"{state_dir}/{LOGIN_FILE}"
    try:
        fd = fsutil.open_regular(path, root_owned=True)
    except StateError as err:
        raise StateError(f"{err} ({LOGIN_FILE} must be a regular file owned by root "
                         f"and writable only by root)") from None
    if fd is None:
        raise StateError(f"{path}: No such file or directory: run `netfence reload`")
    try:
        login = marshal.loads(fsutil.read_all(fd, SNAPSHOT_CHUNK))
    except (EOFError, ValueError, TypeError):
        raise StateError(f"{path}: damaged snapshot") from None
    if not isinstance(login, dict):
        raise StateError(f"{path}: not a login part")
    if login.get("format") != formats.LOGIN:
        raise StateError(f"{path} is format {login.get('format')!r:.20}, this hook "
                         f"reads format {formats.LOGIN}: run `netfence reload` with "
                         f"the installed netfence")
    if (not isinstance(login.get("rules"), list)
            or not isinstance(login.get("profiles"), dict)
            or not isinstance(login.get("settings"), dict)):
        raise StateError(f"{path}: not a format {formats.LOGIN} login part")
    return login


def _apply_settings(opts, login, budget):
    """The snapshot's on_error and hook_timeout_ms where the PAM line gives none: the
    budget is re-armed, the on_error in effect returned."""
    settings = login["settings"] if login else {}
    on_error = opts["on_error"] or "deny"
    if opts["on_error"] is None and settings.get("on_error") == "allow":
        on_error = "allow"                  # anything but a clear "allow" denies
    timeout = settings.get("hook_timeout_ms")
    if opts["timeout_ms"] is None and isinstance(timeout, int):
        budget.arm(min(max(timeout, 1), MAX_TIMEOUT_MS))
    return on_error


def tell_launcher(fd, timeout_ms, on_error):
    """Send the launcher the budget and on_error in effect (once; then the pipe is
    closed, so forked helpers do not hold it). Returns -1, the new value of fd."""
    if fd < 0:
        return -1
    try:
        posix.write(fd, f"timeout_ms={timeout_ms} on_error={on_error}\n".encode())
    except OSError:
        pass
    try:
        posix.close(fd)
    except OSError:
        pass
    return -1


# ---- open and close ---------------------------------------------------------------

def pam_application(launcher):
    """pid of the PAM application (su, sshd's monitor): the hook's parent, or with the
    static launcher in between (launcher = its pid) the launcher's parent, which waits
    for the launcher while the hook runs."""
    if not launcher:
        return posix.getppid()
    from .liveness import proc_parent
    ppid = proc_parent(launcher)
    if ppid is None:
        raise NetfenceError(f"launcher {launcher} is gone")
    return ppid                 # pid 1 (init adopted us) is refused by session_key


def do_open(opts, login, items, account, ppid, budget, log, retry=True):
    from . import matcher
    user, uid = account.pw_name, account.pw_uid
    log.fields.update(user=user, uid=uid)
    decision = matcher.match_login(login, login_facts(login, items, account))
    log.fields["profiles"] = _profiles_field(decision)
    if decision.empty:
        log.fields["result"] = "none"
        return
    from . import fastpath, sessions                    # only for a login that sends
    # the first call decides for the whole run (sessions and cgroups use this one);
    # the C extension is loaded only now, when there is something to send
    impl = fastpath.get(opts["fastpath"])
    log.set_fastpath(impl.name, impl.reason)
    info = dict(items, user=user, uid=uid)
    try:
        record = sessions.open_session(opts["run_dir"], login, info,
                                       decision.user_profiles, decision.session_profiles,
                                       ppid=ppid, timeout_ms=budget.left_ms(),
                                       timed_rules=decision.timed)
    except KernelError as err:
        # A reload that renamed or removed a profile committed between our reading
        # login.marshal and our batch: its sets are gone (ENOENT), the open was put
        # back, and the new snapshot is in place. Match again against it, once.
        fresh = _changed_login(opts, login) if retry and err.errno == errno.ENOENT else None
        if fresh is None:
            raise
        log.fields["policy_changed"] = fresh.get("policy_id", "-")
        return do_open(opts, fresh, items, account, ppid, budget, log, retry=False)
    budget.disarm()                         # committed: a late alarm must not undo it
    log.fields.update(session=record["key"], cgroup=record["cgroup"] or "-",
                      rules=",".join(str(i + 1) for i in decision.matched), result="ok")
    if record["timed"]:
        log.fields["timed"] = timed_field(record, time.time())


def login_facts(login, items, account):
    """matcher.LoginFacts of this login: pam_exec's items with the account's canonical
    name and uid and its groups (looked up only if a rule asks). The clock is no fact:
    rules with `time` go to Decision.timed whatever it says (timed.py follows it)."""
    from .accounts import Groups
    from .matcher import LoginFacts
    return LoginFacts(**dict(items, user=account.pw_name), uid=account.pw_uid,
                      groups=Groups(account.pw_name, account.pw_gid))


def _changed_login(opts, login):
    """The snapshot a reload put in place of the one `login` came from. A reload
    renames its snapshot into place right after its commit: wait that long for it."""
    until = time.monotonic() + SNAPSHOT_WAIT_S
    while True:
        try:
            fresh = load_login(opts["state_dir"])
        except StateError:
            return None
        if fresh.get("policy_id") != login.get("policy_id"):
            return fresh
        if time.monotonic() >= until:
            return None
        time.sleep(0.02)


def _profiles_field(decision):
    parts = []
    if decision.user_profiles:
        parts.append("user:" + ",".join(decision.user_profiles))
    if decision.session_profiles:
        parts.append("session:" + ",".join(decision.session_profiles))
    return " ".join(parts) or "-"


def do_close(opts, ppid, launcher, budget, log):
    from . import fastpath, records, sessions
    key, _ = sessions.session_key(ppid)
    log.fields["session"] = key
    if not records.exists(opts["run_dir"], key):
        log.fields["result"] = "none"
        return
    impl = fastpath.get(opts["fastpath"])   # the first call decides, as in do_open
    log.set_fastpath(impl.name, impl.reason)
    # the processes to move out of the session cgroup (pam_exec forked the launcher
    # and the hook inside it); none of them keeps the uid alive
    pids = (ppid, launcher, posix.getpid()) if launcher else (ppid, posix.getpid())
    result = sessions.close_session(opts["run_dir"], key, pids=pids,
                                    timeout_ms=budget.left_ms(), detach=True)
    if result["result"] == "absent":
        log.fields["result"] = "none"
        return
    record = result["record"]
    log.fields.update(uid=record["uid"], result="ok", cgroup=result["cgroup"],
                      released=int(result["released"]),
                      elements=sum(len(k) for k in result["destroyed"].values()))
    log.fields.update(totals_fields(result))
    if result["gone_sets"]:
        log.fields["gone_sets"] = ",".join(result["gone_sets"])


if __name__ == "__main__":
    run(sys.argv[1:])
