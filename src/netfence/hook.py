"""The program pam_exec runs at every session open and close (docs/hook.md).

    session required pam_exec.so seteuid quiet /usr/lib/netfence/netfence-hook [ARGS]

ARGS: state_dir=DIR run_dir=DIR on_error=deny|allow timeout_ms=N debug fastpath=c|python
(unknown or invalid ones are logged and ignored, as PAM modules do).

Reads only PAM_TYPE, PAM_USER, PAM_SERVICE, PAM_TTY and PAM_RHOST from the
environment, and only the copies pam_exec itself appended (see pam_items); an
environment that is not pam_exec's for a session (no PAM_TYPE, not last, another type,
unreadable) is a failure, never "nothing to do". Exit 0 lets the session go on; exit 1
makes pam_exec fail, which with `required` refuses the login. Under the static launcher
(c_ext/hook_launcher.c) the last argument is `launcher_fd=N`: the hook reports its
budget and on_error there, and the launcher kills it if it overruns (tell_launcher).

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

from .errors import HookInputError, KernelError, NetfenceError, StateError

STATE_DIR = "/var/lib/netfence"
RUN_DIR = "/run/netfence"
LOGIN_FILE = "login.marshal"
DEFAULT_TIMEOUT_MS = 2000
MAX_TIMEOUT_MS = 60000
LOG_ERR, LOG_WARNING, LOG_INFO = 3, 4, 6

ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
SERVICE_CHARS = ALNUM | frozenset("_.-")
RHOST_CHARS = ALNUM | frozenset(".:%_-")
TTY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset("\"'`;\\")


class HookTimeout(NetfenceError):
    """The hook ran out of its time budget (timeout_ms)."""


# ---- arguments and PAM items ------------------------------------------------------

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
            warnings.append(f"ignored argument {_show(arg)}")
    return opts, warnings


def _abs_path(value):
    return (value.startswith("/") and len(value) < 4096 and "\0" not in value
            and value.isprintable())


def _show(value, limit=64):
    """repr of a truncated value: safe to put in a log line."""
    return repr(value[:limit] + ("..." if len(value) > limit else ""))


def validate_items(user, service, tty, rhost):
    """Raise HookInputError naming the first invalid PAM item.

    PAM_USER is only ever given to getpwnam (the account's canonical name and uid are
    used afterwards), so any name NSS may resolve passes: `host$` (Samba machine
    accounts), `DOMAIN\\user` (winbind), `a+b`, non-ASCII. Refused is only what
    cannot be a name: empty, over USER_MAX_BYTES bytes, or holding a control
    character (NUL, newline, tab, ESC, DEL, C1)."""
    problem = user_name_problem(user)
    if problem:
        raise HookInputError(f"invalid PAM_USER {_show(user)}: {problem}")
    if not (0 < len(service) <= 64 and set(service) <= SERVICE_CHARS):
        raise HookInputError(f"invalid PAM_SERVICE {_show(service)}")
    if not (len(tty) <= 64 and set(tty) <= TTY_CHARS):
        raise HookInputError(f"invalid PAM_TTY {_show(tty)}")
    if not _valid_rhost(rhost):
        raise HookInputError(f"invalid PAM_RHOST {_show(rhost)}")


USER_MAX_BYTES = 256


def user_name_problem(user):
    """Why `user` cannot be an account name, or "" when it can be."""
    if not user:
        return "empty"
    if len(user.encode("utf-8", "surrogateescape")) > USER_MAX_BYTES:
        return f"longer than {USER_MAX_BYTES} bytes"
    for char in user:
        code = ord(char)
        if code < 0x20 or 0x7F <= code < 0xA0:
            return "control character"
    return ""


def _valid_rhost(rhost):
    if len(rhost) > 255:
        return False
    if rhost.startswith("[") and rhost.endswith("]") and len(rhost) > 2:
        rhost = rhost[1:-1]
    return set(rhost) <= RHOST_CHARS


# pam_exec appends these after the PAM environment, in this order (unset ones
# skipped), then PAM_TYPE: see pam_exec.c. Anything named PAM_* before that block came
# from the PAM environment (pam_env reads ~/.pam_environment with user_readenv=1) and
# must not be taken for the real item. os.environ cannot tell: it keeps the first of
# duplicate names; so the hook reads the environment block as the kernel gave it.
PAM_EXEC_ITEMS = ("PAM_SERVICE", "PAM_USER", "PAM_TTY", "PAM_RHOST", "PAM_RUSER")


def pam_items(entries):
    """(items, ignored names) from environment entries (bytes "NAME=value", in order).

    items holds PAM_TYPE and those of PAM_EXEC_ITEMS that pam_exec itself set.
    """
    names = [e.partition(b"=")[0] for e in entries]
    if b"PAM_TYPE" not in names:
        return {}, []
    end = len(names) - 1 - names[::-1].index(b"PAM_TYPE")
    items = {"PAM_TYPE": _text(entries[end].partition(b"=")[2])}
    rank = len(PAM_EXEC_ITEMS)
    first = end
    while first > 0:
        name = names[first - 1].decode("ascii", "replace")
        if name not in PAM_EXEC_ITEMS or PAM_EXEC_ITEMS.index(name) >= rank:
            break
        rank = PAM_EXEC_ITEMS.index(name)
        items[name] = _text(entries[first - 1].partition(b"=")[2])
        first -= 1
    ignored = sorted({n.decode("ascii", "replace") for i, n in enumerate(names)
                      if n.startswith(b"PAM_") and not first <= i <= end})
    return items, ignored


def read_environment():
    """The environment block as the kernel passed it: [b"NAME=value", ...], all of
    it; None when it cannot be read."""
    try:
        fd = posix.open("/proc/self/environ", posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return None
    from .records import read_all
    try:
        data = read_all(fd)
    except OSError:
        return None
    return [e for e in data.split(b"\0") if e]


def _text(value):
    return value.decode("utf-8", "surrogateescape")


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


# ---- main -------------------------------------------------------------------------

def main(argv):
    start = time.monotonic()
    _own_alarm()
    _clean_environment()
    argv, report_fd = launcher_pipe(argv)
    launcher = posix.getppid() if report_fd >= 0 else 0
    opts, warnings = parse_args(argv)
    entries = read_environment()
    problem = None
    if entries is None:
        problem = "cannot read the environment (/proc/self/environ)"
        entries = []
    env, ignored = pam_items(entries)
    pam_type = env.get("PAM_TYPE")
    if problem is None:
        problem = environment_problem(entries, pam_type)
    event = {"open_session": "open", "close_session": "close"}.get(pam_type, "-")
    log = _Log(opts["debug"], event, start)
    if problem:                             # not a session this hook can act on: never
        log.line(LOG_ERR, result="invalid", error=problem)      # exit 0 for it
        return 1
    warnings += ignored_warnings(ignored)
    budget = _Budget(start)
    budget.arm(opts["timeout_ms"] or DEFAULT_TIMEOUT_MS)
    on_error = opts["on_error"] or "deny"
    try:
        for warning in warnings:
            log.warn(warning)
        items = {"user": env.get("PAM_USER", ""), "service": env.get("PAM_SERVICE", ""),
                 "tty": env.get("PAM_TTY", ""), "rhost": env.get("PAM_RHOST", "")}
        validate_items(items["user"], items["service"], items["tty"], items["rhost"])
        log.fields.update(user=items["user"], service=items["service"],
                          rhost=items["rhost"], tty=items["tty"])
        if event == "open":
            try:
                login, unusable = load_login(opts["state_dir"]), None
            except StateError as err:
                login, unusable = None, err
            settings = login["settings"] if login else {}
            if opts["on_error"] is None and settings.get("on_error") == "allow":
                on_error = "allow"              # anything but a clear "allow" denies
            timeout = settings.get("hook_timeout_ms")
            if opts["timeout_ms"] is None and isinstance(timeout, int):
                budget.arm(min(max(timeout, 1), MAX_TIMEOUT_MS))
            # before the user lookup, which may hang in NSS: the launcher then applies
            # the policy's budget and on_error
            report_fd = tell_launcher(report_fd, budget.ms, on_error)
            account = lookup_account(items["user"])     # a non-account is refused
            if unusable is not None:                    # whatever the snapshot
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


def environment_problem(entries, pam_type):
    """Why the environment is not one pam_exec made for a session, or None.

    pam_exec appends PAM_TYPE last; anything else at the end means the block was cut
    or rearranged (a launcher that truncates, a flood of PAM_* names), and the items
    before it cannot be trusted."""
    if pam_type is None:
        return "no PAM_TYPE in the environment: not run by pam_exec, or its items lost"
    if not entries or not entries[-1].startswith(b"PAM_TYPE="):
        return "the environment does not end with pam_exec's PAM_TYPE: cut or rearranged"
    if pam_type not in ("open_session", "close_session"):
        return (f"PAM_TYPE {_show(pam_type)}: the hook runs for session open and close "
                f"only (a `session` line of pam_exec)")
    return None


MAX_IGNORED_LINES = 8


def ignored_warnings(ignored):
    """One warning per look-alike PAM_* name from the PAM environment, at most
    MAX_IGNORED_LINES, then one line with the count of the rest."""
    lines = [f"PAM environment sets {name}: ignored" for name in ignored[:MAX_IGNORED_LINES]]
    if len(ignored) > MAX_IGNORED_LINES:
        lines.append(f"PAM environment sets {len(ignored) - MAX_IGNORED_LINES} more PAM_* "
                     f"names: ignored")
    return lines


# ---- the static launcher's deadline -------------------------------------------------

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
    if st.st_mode & 0o170000 != 0o010000:       # S_IFIFO
        return argv, -1
    return argv, int(value)


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


def _own_alarm():
    """SIGALRM delivered and handled here whatever the login program left: a blocked
    mask and SIG_IGN survive exec of setuid su (without the launcher, which resets
    both, nothing else would)."""
    _signal.setitimer(_signal.ITIMER_REAL, 0)            # none inherited either
    _signal.signal(_signal.SIGALRM, _signal.SIG_DFL)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, [_signal.SIGALRM])


def load_login(state_dir):
    """The login part of the last applied snapshot; StateError when unusable."""
    import marshal
    path = f"{state_dir}/{LOGIN_FILE}"
    try:
        # O_NONBLOCK: a FIFO planted there must not hang the login
        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NOFOLLOW
                        | posix.O_NONBLOCK)
    except OSError as err:
        raise StateError(f"{path}: {err.strerror}") from None
    try:
        st = posix.fstat(fd)
        if st.st_mode & 0o170000 != 0o100000 or st.st_uid != 0 or st.st_mode & 0o022:
            raise StateError(f"{path}: not a regular file owned by root and writable "
                             f"only by root")
    except BaseException:
        posix.close(fd)
        raise
    from .records import read_all
    try:
        login = marshal.loads(read_all(fd, 1 << 20))
    except (EOFError, ValueError, TypeError):
        raise StateError(f"{path}: damaged snapshot") from None
    if (not isinstance(login, dict) or login.get("format") != 1
            or not isinstance(login.get("rules"), list)
            or not isinstance(login.get("profiles"), dict)
            or not isinstance(login.get("settings"), dict)):
        raise StateError(f"{path}: not a format 1 login part")
    return login


def lookup_account(name):
    """The passwd entry of PAM_USER: the only use of the name as given. Everything
    after (matching, records, log) uses the entry's canonical pw_name and uid."""
    import pwd
    try:
        return pwd.getpwnam(name)
    except KeyError:
        # not an account (or NSS cannot answer, which pwd does not tell apart): no
        # login program gets this far for it, and there is no uid to fence
        raise HookInputError(f"invalid PAM_USER {_show(name)}: no such account") from None


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


def do_open(opts, login, items, entry, ppid, budget, log, retry=True):
    from . import matcher
    user, uid = entry.pw_name, entry.pw_uid
    log.fields.update(user=user, uid=uid)
    weekday = minute = 0
    if any(rule["time"] for rule in login["rules"]):    # tzset reads /etc/localtime
        now = time.localtime()
        weekday, minute = now.tm_wday, now.tm_hour * 60 + now.tm_min
    decision = matcher.match_login(login, user, uid, _Groups(user, entry.pw_gid),
                                   items["service"], items["rhost"], items["tty"],
                                   weekday, minute)
    log.fields["profiles"] = _profiles_field(decision)
    if decision.empty:
        log.fields["result"] = "none"
        return
    log.use(opts["fastpath"])                 # loads the C extension: only now
    from . import sessions
    info = dict(items, user=user, uid=uid)
    try:
        record = sessions.open_session(opts["run_dir"], login, info,
                                       decision.user_profiles, decision.session_profiles,
                                       ppid=ppid, timeout_ms=budget.left_ms())
    except KernelError as err:
        # A reload that renamed or removed a profile committed between our reading
        # login.marshal and our batch: its sets are gone (ENOENT), the open was put
        # back, and the new snapshot is in place. Match again against it, once.
        fresh = _changed_login(opts, login) if retry and err.errno == errno.ENOENT else None
        if fresh is None:
            raise
        log.fields["policy_changed"] = fresh.get("policy_id", "-")
        return do_open(opts, fresh, items, entry, ppid, budget, log, retry=False)
    budget.disarm()                         # committed: a late alarm must not undo it
    log.fields.update(session=record["key"], cgroup=record["cgroup"] or "-",
                      rules=",".join(str(i + 1) for i in decision.matched), result="ok")


SNAPSHOT_WAIT_S = 0.5


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


def do_close(opts, ppid, launcher, budget, log):
    from . import records, sessions
    key, _ = sessions.session_key(ppid)
    log.fields["session"] = key
    if not records.exists(opts["run_dir"], key):
        log.fields["result"] = "none"
        return
    log.use(opts["fastpath"])
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
    if result["gone_sets"]:
        log.fields["gone_sets"] = ",".join(result["gone_sets"])


def _profiles_field(decision):
    parts = []
    if decision.user_profiles:
        parts.append("user:" + ",".join(decision.user_profiles))
    if decision.session_profiles:
        parts.append("session:" + ",".join(decision.session_profiles))
    return " ".join(parts) or "-"


def group_names(user, gid):
    """Names of every group of the user (NSS, supplementary included); a gid without a
    name stands as its number."""
    import grp
    names = set()
    for group in posix.getgrouplist(user, gid):
        try:
            names.add(grp.getgrgid(group).gr_name)
        except KeyError:
            names.add(str(group))
    return frozenset(names)


class _Groups:
    """The user's group names (NSS, supplementary included), looked up on first use:
    most policies never ask, and `grp` costs an extension module load."""

    __slots__ = ("_user", "_gid", "_names")

    def __init__(self, user, gid):
        self._user, self._gid, self._names = user, gid, None

    def _load(self):
        if self._names is None:
            self._names = group_names(self._user, self._gid)
        return self._names

    def __contains__(self, name):
        return name in self._load()

    def __iter__(self):
        return iter(self._load())

    def __len__(self):
        return len(self._load())


# ---- logging ----------------------------------------------------------------------

class _Log:
    """One key=value line per event to syslog (authpriv), and to stderr with debug."""

    def __init__(self, debug, event, start):
        self.debug, self.start, self.impl = debug, start, None
        self.fields = {"event": event}

    def use(self, prefer):
        from . import fastpath
        self.impl = fastpath.get(prefer)

    def warn(self, message):
        self._emit(LOG_WARNING, f"event={self.fields['event']} warning={_show(message, 200)}")

    def failed(self, on_error, err, internal=False):
        code = 0 if on_error == "allow" else 1
        kind = "internal" if internal else type(err).__name__
        self.line(LOG_ERR, result="refused" if code else "allowed-after-error",
                  on_error=on_error, error=f"{kind}: {err}")
        return code

    def line(self, priority, **extra):
        fields = dict(self.fields, **extra)
        fields.setdefault("result", "ok")
        fields["ms"] = f"{(time.monotonic() - self.start) * 1000:.1f}"
        if self.impl is not None:
            fields["fastpath"] = self.impl.name
            if self.impl.reason and self.impl.reason != "requested":
                fields["fastpath_reason"] = self.impl.reason
        self._emit(priority, " ".join(f"{k}={_field(v)}" for k, v in fields.items()))

    def _emit(self, priority, text):
        syslog(priority, text)
        if self.debug:
            try:
                posix.write(2, f"netfence: {text}\n".encode("utf-8", "backslashreplace"))
            except OSError:
                pass


LOG_AUTHPRIV = 10 << 3
SYSLOG_SOCKET = "/dev/log"
KMSG = "/dev/kmsg"
KMSG_MAX = 960                  # bytes of text per kernel log record (1024 with header)


def syslog(priority, text, path=None, kmsg=None):
    """Log one line; returns where it went: "syslog", "kmsg" or None.

    First what glibc's syslog(3) sends (RFC 3164 framing, ident "netfence", the pid),
    over `_socket`, which matcher has loaded already: no syslog or cffi import for the
    logins that match nothing. When /dev/log is missing or refuses (no syslog daemon),
    the kernel log: "<PRI>netfence[PID]: text" written to /dev/kmsg keeps facility and
    priority (dmesg -x, journald and rsyslog's imklog read it), so a refusal always
    leaves a record. `path` and `kmsg` default to SYSLOG_SOCKET and KMSG, read at call
    time (tests point them elsewhere)."""
    import _socket
    path = SYSLOG_SOCKET if path is None else path
    head = f"<{LOG_AUTHPRIV | priority}>"
    tag = f"netfence[{posix.getpid()}]: "
    stamp = time.strftime("%b %e %H:%M:%S ")
    data = (head + stamp + tag + text).encode("utf-8", "backslashreplace")
    for kind in (_socket.SOCK_DGRAM, _socket.SOCK_STREAM):
        try:
            sock = _socket.socket(_socket.AF_UNIX, kind | _socket.SOCK_CLOEXEC)
        except OSError:
            break
        try:
            sock.connect(path)
            sock.send(data if kind == _socket.SOCK_DGRAM else data + b"\0")
            return "syslog"
        except OSError as err:
            if err.errno != errno.EPROTOTYPE:    # a stream socket: try again
                break
        finally:
            sock.close()
    line = (head + tag).encode() + text.encode("utf-8", "backslashreplace")[:KMSG_MAX]
    try:
        fd = posix.open(KMSG if kmsg is None else kmsg,
                        posix.O_WRONLY | posix.O_CLOEXEC | posix.O_NOCTTY | posix.O_NONBLOCK)
    except OSError:
        return None
    try:
        posix.write(fd, line + b"\n")
        return "kmsg"
    except OSError:
        return None
    finally:
        posix.close(fd)


def _field(value):
    text = str(value)
    if text == "":
        return "-"
    if " " in text or "=" in text or '"' in text or not text.isprintable():
        return repr(text)
    return text


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


if __name__ == "__main__":
    run(sys.argv[1:])
