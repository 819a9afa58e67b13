"""Which match rules apply to one login: pure, and light enough for the PAM hook.

Evaluates the login part of a compiled snapshot (see docs/architecture.md), whose
match rules are already reduced to plain lists, ints and strings. Imports nothing
but `fnmatch`-free helpers and `_socket.inet_pton` for remote-host addresses.
"""

from _socket import AF_INET, AF_INET6, inet_pton

ROOT_UID = 0


class Decision:
    """The outcome for one login: profiles by scope, and the rules that matched.

    timed: the rules with a `time` window whose other conditions match, whatever the
    clock says now, as (rule index, scope, profiles, windows): their profiles apply
    while a window is open (timed.py), including to this session once it is open, so
    the login is recorded even when no window is open yet. A timed rule's profile that
    an untimed rule already applies at the same (or user) scope is left out of it.
    """

    __slots__ = ("user_profiles", "session_profiles", "matched", "timed")

    def __init__(self, user_profiles, session_profiles, matched, timed=()):
        self.user_profiles = user_profiles
        self.session_profiles = session_profiles
        self.matched = matched
        self.timed = timed

    @property
    def empty(self):
        return not (self.user_profiles or self.session_profiles or self.timed)


class LoginFacts:
    """What a login is matched on.

    user, uid: the account's canonical name and uid; groups: the names of every group
    of the user (primary and supplementary; anything answering `in`); service, rhost,
    tty: the PAM items ("" when unset). The clock is no fact: rules with `time` go to
    Decision.timed whatever it says (timed.py follows it). A new rule condition adds
    its fact here, with the value of an unset item as its default (callers that do
    not know it, like explain without an option for it, keep working), and its test
    in _rule_matches.
    """

    __slots__ = ("user", "uid", "groups", "service", "rhost", "tty", "address")

    def __init__(self, *, user, uid, groups, service="", rhost="", tty=""):
        self.user, self.uid, self.groups = user, uid, groups
        self.service, self.rhost, self.tty = service, rhost, tty
        self.address = _parse_address(rhost)       # once, not per rule


def match_login(login, facts):
    """Evaluate every rule for the LoginFacts; all matching rules apply and their
    profiles accumulate. A rule with `time` is matched on everything but the clock
    and goes to Decision.timed (its window is followed by the kernel and watch)."""
    user_profiles, session_profiles, matched, timed = [], [], [], []
    for rule in login["rules"]:
        if not _rule_matches(rule, facts):
            continue
        if rule["time"]:
            timed.append(rule)
            continue
        matched.append(rule["index"])
        target = user_profiles if rule["scope"] == "user" else session_profiles
        for name in rule["profiles"]:
            if name not in target:
                target.append(name)
    # A profile at user scope already covers every socket of the uid.
    session_profiles = [p for p in session_profiles if p not in user_profiles]
    return Decision(tuple(user_profiles), tuple(session_profiles), tuple(matched),
                    _timed_entries(timed, user_profiles, session_profiles))


def _timed_entries(rules, user_profiles, session_profiles):
    entries = []
    for rule in rules:
        covered = user_profiles if rule["scope"] == "user" else (
            user_profiles + session_profiles)
        profiles = tuple(p for p in rule["profiles"] if p not in covered)
        if profiles:
            entries.append((rule["index"], rule["scope"], profiles, rule["time"]))
    return tuple(entries)


def _rule_matches(rule, facts):
    include, exclude = rule["users"]
    named = facts.user in include
    if facts.uid == ROOT_UID and not named:
        return False          # wildcards and groups never match root; naming root does
    groups = facts.groups
    if include or rule["groups"][0]:
        by_user = named or ("*" in include)
        by_group = any(g in groups for g in rule["groups"][0])
        if not (by_user or by_group):
            return False
    if facts.user in exclude or any(g in groups for g in rule["groups"][1]):
        return False
    if not _names_match(rule["services"], facts.service):
        return False
    if not _ttys_match(rule["ttys"], facts.tty):
        return False
    return _rhosts_match(rule["rhosts"], facts.rhost, facts.address)


def _names_match(patterns, value):
    include, exclude = patterns
    if include and value not in include:
        return False
    return value not in exclude


def _ttys_match(patterns, tty):
    include, exclude = patterns
    if include and not any(_glob(p, tty) for p in include):
        return False
    return not any(_glob(p, tty) for p in exclude)


def _rhosts_match(patterns, rhost, address):
    include, exclude = patterns
    if include and not any(_rhost_item(i, rhost, address) for i in include):
        return False
    return not any(_rhost_item(i, rhost, address) for i in exclude)


def _rhost_item(item, rhost, address):
    kind = item[0]
    if kind == "local":
        return rhost == ""
    if kind == "net":
        # A host name is not known to be inside any network: it never matches a CIDR,
        # so it does match a negated one ("!10.0.0.0/8"), the restrictive direction.
        if address is None or address[0] != item[1]:
            return False
        shift = (32 if item[1] == 4 else 128) - item[3]
        return address[1] >> shift == item[2] >> shift
    host = rhost.lower()
    if kind == "name":
        return host == item[1]
    return host.endswith(item[1])          # "suffix": ".example.org"


def _parse_address(rhost):
    """(4 | 6, int) for an IP literal, else None (a host name, or no remote host)."""
    if not rhost:
        return None
    text = rhost[1:-1] if rhost.startswith("[") and rhost.endswith("]") else rhost
    text = text.split("%", 1)[0]           # fe80::1%eth0: the zone does not matter here
    for family, version in ((AF_INET, 4), (AF_INET6, 6)):
        try:
            packed = inet_pton(family, text)
        except OSError:
            continue
        value = int.from_bytes(packed, "big")
        if version == 6 and value >> 32 == 0xFFFF:      # ::ffff:a.b.c.d is IPv4
            return 4, value & 0xFFFFFFFF
        return version, value
    return None


def _glob(pattern, text):
    """fnmatch's * and ? without importing fnmatch (which imports re)."""
    if "*" not in pattern and "?" not in pattern:
        return pattern == text
    return _glob_at(pattern, 0, text, 0)


def _glob_at(pattern, p, text, t):
    while p < len(pattern):
        char = pattern[p]
        if char == "*":
            return any(_glob_at(pattern, p + 1, text, k) for k in range(t, len(text) + 1))
        if t >= len(text) or (char != "?" and char != text[t]):
            return False
        p += 1
        t += 1
    return t == len(text)
