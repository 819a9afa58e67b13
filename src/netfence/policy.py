"""Policy files → model.Policy: secure reading, validation, file:line problems.

`load_policy(config_dir)` reads `<config_dir>/netfence.toml`, then
`<config_dir>/netfence.d/*.toml` in bytewise (C locale) order, refusing files and
directories others could have written (like sudo and sshd's StrictModes), and hands the
texts to `parse_policy_text`, the pure part. Every problem in every file is collected and
raised as one PolicyError of (path, line, message). The language is in docs/policy.md.
"""

from . import model
from .errors import PolicyError
from .policy_files import read_files
from .policy_always import check_always, parse_uids, scope_fits
from .policy_text import Locator, TomlSyntaxError, load_toml
from .policy_values import (ItemError, boolean, check_profile_name, choice, group_pattern,
                            integer, items_of, path_component, peer, port_range, rhost,
                            service_name, shown, tty_glob, unique, user_pattern)
from .timespec import TimeSpecError, parse_window

__all__ = ["load_policy", "parse_policy_text"]


def load_policy(config_dir, check_ownership=True):
    """Read, check and parse the policy in config_dir; raise PolicyError listing problems.

    check_ownership=False skips the owner and mode checks (unit tests as non-root);
    symbolic links to policy files are refused either way.
    """
    problems = []
    files = read_files(config_dir, check_ownership, problems)
    try:
        policy = parse_policy_text(files)
    except PolicyError as err:
        raise PolicyError(problems + err.problems) from None
    if problems:
        raise PolicyError(problems)
    return policy


# ---- parsing -------------------------------------------------------------------------

def parse_policy_text(files):
    """[(path, text), ...] in reading order → model.Policy, or PolicyError with all problems."""
    state = _State()
    for path, text in files:
        _parse_file(state, path, text)
    _check_references(state)
    check_always(state)
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
        self.always = []                    # (rule, path, line of its profiles)
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
        import difflib                  # errors only: not on a valid policy's path
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
    "mode": lambda v, k: choice(v, k, model.MODES),
    "account": boolean,
    "log_group": lambda v, k: integer(v, k, 1, 65535),
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

_PROFILE_KEYS = ("egress", "egress_default", "ingress", "ingress_default", "log", "mode",
                 "account")
_PEER_KEY = {"egress": "to", "ingress": "from"}
_PEER_KEYS = tuple(_PEER_KEY.values())
_NET_KEYS = ("action", "proto", "ports")
_PORT_PROTOS = ("tcp", "udp")


def _action(value, key):
    return choice(value, key, model.ACTIONS)


_PROFILE_CHECKS = {"log": boolean, "account": boolean,
                   "mode": lambda v, k: choice(v, k, model.MODES)}


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
            check = _PROFILE_CHECKS.get(key, _action)
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
        if key in allowed:
            fields[key] = _check(doc, keys + (key,), context, _NET_VALUES[key], value, key)
            continue
        if key in _PEER_KEYS:
            other = "ingress" if direction == "egress" else "egress"
            doc.error(keys + (key,), f"{context}: {key!r} is for {other} rules; "
                                     f"{direction} rules use {peer_key!r}")
        else:
            doc.unknown(keys + (key,), allowed, context)
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

_RULE_KEYS = ("users", "uids", "groups", "services", "rhosts", "ttys", "time", "scope",
              "profiles")
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
    if not scope_fits(doc, keys, context, item, fields):
        ok = False
    if not ok or None in fields.values():
        return None
    rule = model.MatchRule(index=index, **fields, where=doc.where(*keys))
    if rule.scope == "always":
        state.always.append((rule, doc.path, doc.locator.line(*keys, "profiles")))
    return rule


def _matches_somebody(doc, keys, context, item, fields):
    """Refuse rules without a positive users/groups item: a typo must not fence everyone."""
    given = [fields.get(key) for key in ("users", "groups") if key in item]
    if None in given or ("uids" in item and fields.get("uids") is None):
        return True                       # already reported
    if any(patterns.include for patterns in given) or fields.get("uids"):
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
        import difflib
        close = difflib.get_close_matches(name, list(state.profile_where), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        state.problems.append((path, line, f"{context}: unknown profile {name!r}{hint}"))


_RULE_VALUES = {
    "users": _patterns(user_pattern, _NAMES_EMPTY),
    "uids": parse_uids,
    "groups": _patterns(group_pattern, _NAMES_EMPTY),
    "services": _patterns(lambda name, negated: service_name(name), _ANY_EMPTY),
    "rhosts": _patterns(lambda name, negated: rhost(name), _ANY_EMPTY),
    "ttys": _patterns(lambda name, negated: tty_glob(name), _ANY_EMPTY),
    "time": _times,
    "scope": _scope,
}
