"""Policy files → model.Policy: secure reading, validation, file:line problems.

`load_policy(config_dir)` reads `<config_dir>/netfence.toml`, then
`<config_dir>/netfence.d/*.toml` in bytewise (C locale) order, refusing files and
directories others could have written (like sudo and sshd's StrictModes), and hands the
texts to `parse_policy_text`, the pure part. Every problem in every file is collected and
raised as one PolicyError of (path, line, message). The language is in docs/policy.md.
"""

import difflib
import errno
import os
import stat

from . import model
from .errors import PolicyError
from .policy_text import (ItemError, Locator, TomlSyntaxError, account_name, boolean,
                          check_profile_name, choice, integer, items_of, load_toml,
                          path_component, peer, port_range, rhost, service_name, shown,
                          tty_glob, unique)
from .timespec import TimeSpecError, parse_window

MAIN_FILE = "netfence.toml"
DROPIN_DIR = "netfence.d"
DROPIN_SUFFIX = ".toml"
MAX_FILE_BYTES = 1 << 20
NO_SUCH_DIRECTORY = "no such directory"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY


# ---- reading files -------------------------------------------------------------------

def load_policy(config_dir, check_ownership=True):
    """Read, check and parse the policy in config_dir; raise PolicyError listing problems.

    check_ownership=False skips the owner and mode checks (unit tests as non-root);
    symbolic links to policy files are refused either way.
    """
    problems = []
    files = _read_files(config_dir, check_ownership, problems)
    try:
        policy = parse_policy_text(files)
    except PolicyError as err:
        raise PolicyError(problems + err.problems) from None
    if problems:
        raise PolicyError(problems)
    return policy


class _Refused(Exception):
    def __init__(self, path, message):
        super().__init__(message)
        self.problem = (path, 0, message)


def _read_files(config_dir, check, problems):
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
    if not check:
        return
    if st.st_uid != 0:
        raise _Refused(path, f"refusing: not owned by root (owner uid {st.st_uid})")
    writers = [who for who, bit in (("group", stat.S_IWGRP), ("others", stat.S_IWOTH))
               if st.st_mode & bit]
    if writers:
        raise _Refused(path, f"refusing: writable by {' and '.join(writers)} "
                             f"(mode {stat.S_IMODE(st.st_mode):04o})")


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
        _check_fd(fd, path, regular=True, check=check)
        data = _read_limited(fd, path)
    except _Refused as err:
        problems.append(err.problem)
        return
    finally:
        os.close(fd)
    try:
        files.append((path, _decode(data)))
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        problems.append((path, line, f"not valid UTF-8 (byte 0x{data[err.start]:02x})"))


def _read_limited(fd, path):
    chunks, size = [], 0
    while size <= MAX_FILE_BYTES:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise _Refused(path, f"refusing: larger than {MAX_FILE_BYTES} bytes")


def _decode(data):
    text = data.decode("utf-8")
    return text[1:] if text.startswith("\ufeff") else text


# ---- parsing -------------------------------------------------------------------------

def parse_policy_text(files):
    """[(path, text), ...] in reading order → model.Policy, or PolicyError with all problems."""
    state = _State()
    for path, text in files:
        _parse_file(state, path, text)
    _check_references(state)
    if state.problems:
        order = {path: number for number, (path, _) in enumerate(files)}
        raise PolicyError(sorted(state.problems, key=lambda p: (order.get(p[0], -1), p[1])))
    return model.Policy(settings=model.Settings(**state.settings),
                        profiles=dict(state.profiles), rules=tuple(state.rules),
                        files=tuple(path for path, _ in files))


class _State:
    """What the files define so far, and every problem found."""

    def __init__(self):
        self.problems = []
        self.settings, self.settings_where = {}, {}
        self.profiles, self.profile_where = {}, {}
        self.rules, self.references = [], []
        self.rule_count = 0


class _File:
    def __init__(self, path, text, problems):
        self.path = path
        self.locator = Locator(text)
        self.problems = problems

    def where(self, *keys):
        return model.Location(self.path, self.locator.line(*keys))

    def error(self, keys, message):
        self.problems.append((self.path, self.locator.line(*keys), message))

    def unknown(self, keys, allowed, context):
        key = keys[-1]
        close = difflib.get_close_matches(str(key), allowed, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join(allowed)}"
        self.error(keys, f"unknown key {shown(key)} in {context}; {hint}")


def _parse_file(state, path, text):
    try:
        data = load_toml(text)
    except TomlSyntaxError as err:
        state.problems.append((path, err.line, err.message))
        return
    doc = _File(path, text, state.problems)
    sections = {"settings": _settings, "profile": _profiles, "rule": _rules}
    for key, value in data.items():
        if key in sections:
            sections[key](state, doc, value)
        else:
            doc.unknown((key,), list(sections), "the top level")


# ---- helpers --------------------------------------------------------------------------

def _check(doc, keys, context, check, *args):
    """Run check(*args); on ItemError record it at keys and return None."""
    try:
        return check(*args)
    except (ItemError, TimeSpecError) as err:
        doc.error(keys, f"{context}: {err}")
        return None


# ---- [settings] ----------------------------------------------------------------------

_SETTINGS = {
    "on_error": lambda v, k: choice(v, k, ("deny", "allow")),
    "hook_timeout_ms": lambda v, k: integer(v, k, 100, 60000),
    "log_rate": lambda v, k: integer(v, k, 1, 10000),
    "cgroup_base": path_component,
}


def _settings(state, doc, table):
    if not isinstance(table, dict):
        doc.error(("settings",), "settings must be a table: [settings]")
        return
    for key, value in table.items():
        keys = ("settings", key)
        if key not in _SETTINGS:
            doc.unknown(keys, list(_SETTINGS), "[settings]")
        elif key in state.settings_where:
            doc.error(keys, f"settings: {key} is already set at {state.settings_where[key]}")
        else:
            state.settings_where[key] = doc.where(*keys)
            checked = _check(doc, keys, "settings", _SETTINGS[key], value, key)
            if checked is not None:
                state.settings[key] = checked


def _each(doc, keys, context, value, check, empty):
    """items_of(value) mapped through check; a bad item is reported at its own line."""
    try:
        items = items_of(value, keys[-1], empty=empty)
    except ItemError as err:
        doc.error(keys, f"{context}: {err}")
        return None
    results, ok = [], True
    for number, item in enumerate(items):
        try:
            results.append(check(item))
        except (ItemError, TimeSpecError) as err:
            doc.error(keys + (number,) if isinstance(value, list) else keys, f"{context}: {err}")
            ok = False
    return results if ok else None


# ---- [profile.NAME] ------------------------------------------------------------------

_PROFILE_KEYS = ("egress", "egress_default", "ingress", "ingress_default", "log")
_PEER_KEY = {"egress": "to", "ingress": "from"}
_NET_KEYS = ("action", "proto", "ports")
_PORT_PROTOS = ("tcp", "udp")


def _action(value, key):
    return choice(value, key, model.ACTIONS)


def _profiles(state, doc, table):
    if not isinstance(table, dict):
        doc.error(("profile",), "profile must hold named tables: [profile.NAME]")
        return
    for name, body in table.items():
        _profile(state, doc, name, body)


def _profile(state, doc, name, body):
    keys = ("profile", name)
    if name in state.profile_where:
        first = state.profile_where[name]
        doc.error(keys, f"profile {shown(name)} is already defined at {first}")
        return
    state.profile_where[name] = where = doc.where(*keys)
    if _check(doc, keys, "profile", check_profile_name, name) is None:
        return
    if not isinstance(body, dict):
        doc.error(keys, f"profile {name} must be a table: [profile.{name}]")
        return
    fields = {}
    for key, value in body.items():
        if key not in _PROFILE_KEYS:
            doc.unknown(keys + (key,), _PROFILE_KEYS, f"profile {name}")
        elif key in _PEER_KEY:
            fields[key] = _net_rules(doc, name, key, value)
        else:
            check = boolean if key == "log" else _action
            checked = _check(doc, keys + (key,), f"profile {name}", check, value, key)
            if checked is not None:
                fields[key] = checked
    state.profiles[name] = model.Profile(name=name, **fields, where=where)


def _net_rules(doc, name, direction, value):
    keys = ("profile", name, direction)
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        example = '{ action = "allow", proto = "tcp", ports = [443] }'
        doc.error(keys, f"profile {name}: {direction} must be an array of rules, "
                        f"e.g. {direction} = [ {example} ]")
        return ()
    rules = [_net_rule(doc, f"profile {name} {direction} rule {number + 1}",
                       keys + (number,), item, direction)
             for number, item in enumerate(value)]
    return tuple(rule for rule in rules if rule is not None)


def _net_rule(doc, context, keys, item, direction):
    peer_key = _PEER_KEY[direction]
    allowed = _NET_KEYS + (peer_key,)
    fields, ok = {}, "action" in item
    for key, value in item.items():
        if key in _PEER_KEY.values() and key != peer_key:
            other = "ingress" if direction == "egress" else "egress"
            doc.error(keys + (key,), f"{context}: {key!r} is for {other} rules; "
                                     f"{direction} rules use {peer_key!r}")
        elif key not in allowed:
            doc.unknown(keys + (key,), allowed, context)
        else:
            fields[key] = _check(doc, keys + (key,), context, _NET_VALUES[key], value, key)
            continue
        ok = False
    if "action" not in item:
        doc.error(keys, f"{context}: action is required (allow, deny or reject)")
    fits = _ports_fit(doc, keys, context, fields)
    if not (ok and fits) or None in fields.values():
        return None
    return model.NetRule(action=fields["action"], protos=fields.get("proto", ()),
                         ports=fields.get("ports", ()), peers=fields.get(peer_key, ()),
                         where=doc.where(*keys))


def _ports_fit(doc, keys, context, fields):
    """Ports only mean something for tcp and udp; anything else is an error."""
    if not fields.get("ports") or fields.get("proto", ()) is None:
        return True
    protos = fields.get("proto", ())
    if not protos:
        doc.error(keys + ("ports",), f"{context}: ports need proto = \"tcp\" or \"udp\" "
                                     "(without proto the rule is for every protocol)")
        return False
    others = [p for p in protos if p not in _PORT_PROTOS]
    if others:
        doc.error(keys + ("ports",), f"{context}: ports only apply to tcp and udp, "
                                     f"not {', '.join(others)}")
        return False
    return True


def _protos(value, key):
    words = unique(items_of(value, key, empty="leave proto out for any protocol"))
    for word in words:
        choice(word, key, model.PROTOS + ("any",))
    if "any" not in words:
        return words
    if len(words) > 1:
        raise ItemError('proto "any" cannot be combined with other protocols')
    return ()


_NET_VALUES = {
    "action": _action,
    "proto": _protos,
    "ports": lambda value, key: unique(port_range(v) for v in items_of(value, key, (int, str))),
    "to": lambda value, key: unique(peer(v) for v in items_of(value, key)),
    "from": lambda value, key: unique(peer(v) for v in items_of(value, key)),
}


# ---- [[rule]] ------------------------------------------------------------------------

_RULE_KEYS = ("users", "groups", "services", "rhosts", "ttys", "time", "scope", "profiles")
_NAMES_EMPTY = 'give at least one name (users = ["*"] is every user but root)'
_ANY_EMPTY = "leave the key out to match any"


def _rules(state, doc, value):
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        doc.error(("rule",), "rule must be an array of tables: write each as [[rule]]")
        return
    for number, item in enumerate(value):
        index = state.rule_count
        state.rule_count += 1
        rule = _rule(state, doc, index, ("rule", number), item)
        if rule is not None:
            state.rules.append(rule)


def _rule(state, doc, index, keys, item):
    context = f"rule {index + 1}"
    fields, ok = {}, "profiles" in item
    for key, value in item.items():
        if key not in _RULE_KEYS:
            doc.unknown(keys + (key,), _RULE_KEYS, context)
            ok = False
            continue
        parse = _RULE_VALUES.get(key, _rule_profiles)
        fields[key] = parse(doc, keys + (key,), context, value)
        if key == "profiles" and fields[key] is not None:
            _remember_references(state, doc, keys + (key,), context, value)
    if "profiles" not in item:
        doc.error(keys, f"{context}: profiles is required: the profiles this rule applies")
    if not _matches_somebody(doc, keys, context, item, fields):
        ok = False
    if not ok or None in fields.values():
        return None
    return model.MatchRule(index=index, **fields, where=doc.where(*keys))


def _matches_somebody(doc, keys, context, item, fields):
    """Refuse rules without a positive users/groups item: a typo must not fence everyone."""
    given = [fields.get(key) for key in ("users", "groups") if key in item]
    if None in given:
        return True                       # already reported
    if any(patterns.include for patterns in given):
        return True
    if given:
        detail = 'users and groups hold only "!" items; add "*" to users for every other user'
    else:
        detail = 'give users or groups (users = ["*"] is every user but root)'
    doc.error(keys, f"{context}: rule matches nobody: {detail}")
    return False


def _patterns(check, empty):
    def parse(doc, keys, context, value):
        pairs = _each(doc, keys, context, value, lambda item: _negatable(item, check), empty)
        if pairs is None:
            return None
        return model.Patterns(include=unique(name for negated, name in pairs if not negated),
                              exclude=unique(name for negated, name in pairs if negated))
    return parse


def _negatable(item, check):
    if item.startswith("!"):
        return True, check(item[1:], True)
    return False, check(item, False)


def _user(name, negated):
    if name != "*":
        return account_name(name, "user")
    if negated:
        raise ItemError('"!*" excludes every user: remove the rule instead')
    return name


def _group(name, negated):
    if name == "*":
        raise ItemError('"*" is for users only: write users = ["*"]')
    return account_name(name, "group")


def _times(doc, keys, context, value):
    windows = _each(doc, keys, context, value, parse_window, "leave time out for always")
    return None if windows is None else unique(windows)


def _scope(doc, keys, context, value):
    return _check(doc, keys, context, choice, value, "scope", model.SCOPES)


def _rule_profiles(doc, keys, context, value):
    names = _each(doc, keys, context, value, check_profile_name, "give at least one profile")
    return None if names is None else unique(names)


def _remember_references(state, doc, keys, context, value):
    for number, name in enumerate(items_of(value, keys[-1])):
        line = doc.locator.line(*(keys + (number,) if isinstance(value, list) else keys))
        state.references.append((name, doc.path, line, context))


def _check_references(state):
    """Every profile a rule names must be defined in some file."""
    for name, path, line, context in state.references:
        if name in state.profile_where:
            continue
        close = difflib.get_close_matches(name, list(state.profile_where), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        state.problems.append((path, line, f"{context}: unknown profile {name!r}{hint}"))


_RULE_VALUES = {
    "users": _patterns(_user, _NAMES_EMPTY),
    "groups": _patterns(_group, _NAMES_EMPTY),
    "services": _patterns(lambda name, negated: service_name(name), _ANY_EMPTY),
    "rhosts": _patterns(lambda name, negated: rhost(name), _ANY_EMPTY),
    "ttys": _patterns(lambda name, negated: tty_glob(name), _ANY_EMPTY),
    "time": _times,
    "scope": _scope,
}
