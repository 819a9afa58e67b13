"""The PAM items a login is matched on, read from the environment pam_exec built
(docs/hook.md, "Environment"), and checked before anything uses them.

pam_exec appends its items after the PAM environment, in PAM_EXEC_ITEMS order (unset
ones skipped), then PAM_TYPE (see pam_exec.c). Anything named PAM_* before that block
came from the PAM environment (pam_env reads ~/.pam_environment with user_readenv=1)
and must not be taken for the real item. os.environ cannot tell: it keeps the first of
duplicate names; so the environment block is read as the kernel gave it.

Light on purpose (the hook imports it): posix and fsutil only, no `re`.
"""

import posix

from . import fsutil
from .errors import HookInputError
from .hooklog import show

PAM_EXEC_ITEMS = ("PAM_SERVICE", "PAM_USER", "PAM_TTY", "PAM_RHOST", "PAM_RUSER")
# The items a login is matched on: (key, pam_exec's name), in the log line's order.
# A new one (with its check in validate_items) reaches the log, the records' info and
# matcher.LoginFacts without a change in the hook.
LOGIN_ITEMS = (("user", "PAM_USER"), ("service", "PAM_SERVICE"), ("rhost", "PAM_RHOST"),
               ("tty", "PAM_TTY"))
SESSION_TYPES = ("open_session", "close_session")
MAX_IGNORED_LINES = 8
USER_MAX_BYTES = 256

ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
SERVICE_CHARS = ALNUM | frozenset("_.-")
RHOST_CHARS = ALNUM | frozenset(".:%_-")
TTY_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset("\"'`;\\")


# ---- the environment block ----------------------------------------------------------

def session_environment():
    """(items, ignored names, problem): pam_exec's items (PAM_TYPE included), the
    look-alike PAM_* names before them, and why this is not an environment pam_exec
    made for a session, or None when it is."""
    entries = read_environment()
    if entries is None:
        return {}, [], "cannot read the environment (/proc/self/environ)"
    items, ignored = pam_items(entries)
    return items, ignored, environment_problem(entries, items.get("PAM_TYPE"))


def read_environment():
    """The environment block as the kernel passed it: [b"NAME=value", ...], all of
    it; None when it cannot be read."""
    try:
        data = fsutil.read_all(posix.open("/proc/self/environ",
                                          posix.O_RDONLY | posix.O_CLOEXEC))
    except OSError:
        return None
    return [e for e in data.split(b"\0") if e]


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


def _text(value):
    return value.decode("utf-8", "surrogateescape")


def environment_problem(entries, pam_type):
    """Why the environment is not one pam_exec made for a session, or None.

    pam_exec appends PAM_TYPE last; anything else at the end means the block was cut
    or rearranged (a launcher that truncates, a flood of PAM_* names), and the items
    before it cannot be trusted."""
    if pam_type is None:
        return "no PAM_TYPE in the environment: not run by pam_exec, or its items lost"
    if not entries or not entries[-1].startswith(b"PAM_TYPE="):
        return "the environment does not end with pam_exec's PAM_TYPE: cut or rearranged"
    if pam_type not in SESSION_TYPES:
        return (f"PAM_TYPE {show(pam_type)}: the hook runs for session open and close "
                f"only (a `session` line of pam_exec)")
    return None


def ignored_warnings(ignored):
    """One warning per look-alike PAM_* name from the PAM environment, at most
    MAX_IGNORED_LINES, then one line with the count of the rest."""
    lines = [f"PAM environment sets {name}: ignored" for name in ignored[:MAX_IGNORED_LINES]]
    if len(ignored) > MAX_IGNORED_LINES:
        lines.append(f"PAM environment sets {len(ignored) - MAX_IGNORED_LINES} more PAM_* "
                     f"names: ignored")
    return lines


# ---- the login's items --------------------------------------------------------------

def login_items(items):
    """{"user", "service", "rhost", "tty"} from pam_exec's items ("" when unset);
    HookInputError names the first invalid one."""
    values = {key: items.get(name, "") for key, name in LOGIN_ITEMS}
    validate_items(**values)
    return values


def validate_items(user, service, tty, rhost):
    """Raise HookInputError naming the first invalid PAM item.

    PAM_USER is only ever given to getpwnam (the account's canonical name and uid are
    used afterwards), so any name NSS may resolve passes: `host$` (Samba machine
    accounts), `DOMAIN\\user` (winbind), `a+b`, non-ASCII. Refused is only what
    cannot be a name: empty, over USER_MAX_BYTES bytes, or holding a control
    character (NUL, newline, tab, ESC, DEL, C1)."""
    problem = user_name_problem(user)
    if problem:
        raise HookInputError(f"invalid PAM_USER {show(user)}: {problem}")
    if not (0 < len(service) <= 64 and set(service) <= SERVICE_CHARS):
        raise HookInputError(f"invalid PAM_SERVICE {show(service)}")
    if not (len(tty) <= 64 and set(tty) <= TTY_CHARS):
        raise HookInputError(f"invalid PAM_TTY {show(tty)}")
    if not _valid_rhost(rhost):
        raise HookInputError(f"invalid PAM_RHOST {show(rhost)}")


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
