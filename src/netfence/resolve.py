"""Always rules -> the uid and gid ranges of their static sets, through NSS.

reload calls `resolve` after compiling (the ranges go into the same transaction as
the table, and into compiled.json as "resolved"); gc calls it again and `widen`s the
applied resolution by what NSS newly lists (a new account in a range, a user added to
a group). gc never narrows it: NSS answers "no such entry" when LDAP or SSSD is
unreachable, so an id that disappeared stays fenced until the admin's next reload
(fail closed). Impure only in `SystemNss`: the rest is plain data in, plain data out,
tested with a fake Nss.

What an always rule matches (docs/policy.md, "scope = always"):
  uids  users (named accounts, looked up by name; "*" = every uid but 0, without
        NSS), uids ranges, and every member of its groups (supplementary: the group
        entry's member list, looked up by name; primary: the passwd entries with that
        gid, which only an enumerable NSS source lists), root excepted unless named;
        minus the "!" users and the members of the "!" groups
  gids  its groups' gids minus the "!" groups': the socket's effective gid
        (meta skgid), the post's --gid-owner. Never gid 0 (root's daemons): reload
        and check refuse a group with gid 0 (root_group_problems)
"""

import time

from .model import MAX_ID

EVERY_USER = [[1, MAX_ID]]          # users = ["*"]: the post's `! --uid-owner 0`


class Nss:
    """Account lists (a fake NSS in tests): users [(name, uid, gid)], groups
    {name: (gid, [member names])}. SystemNss asks the system instead."""

    def __init__(self, users, groups):
        self.users = list(users)
        self.groups = dict(groups)
        self.uid_of = {name: uid for name, uid, _gid in self.users}

    @staticmethod
    def from_system():
        return SystemNss()

    def uid(self, name):
        """The uid of a user name, None when NSS does not know it."""
        return self.uid_of.get(name)

    def group(self, name):
        """(gid, [member names]) of a group name, None when NSS does not know it."""
        return self.groups.get(name)

    def primary_members(self, gid):
        """uids of the accounts whose primary group is `gid`."""
        return [uid for _name, uid, user_gid in self.users if user_gid == gid]

    def members(self, group):
        """{uid: "primary" | "supplementary"} of a group (empty when unknown)."""
        entry = self.group(group)
        if entry is None:
            return {}
        gid, names = entry
        found = {uid: "supplementary" for uid in map(self.uid, names) if uid is not None}
        found.update({uid: "primary" for uid in self.primary_members(gid)})
        return found


class SystemNss(Nss):
    """The system's NSS. Names are looked up one by one (getpwnam, getgrnam): that
    reaches every source, also SSSD and LDAP with enumeration off (SSSD's default
    `enumerate = false`, where getpwall lists local accounts only). Primary-group
    members need the passwd enumeration: only enumerable sources provide them."""

    def __init__(self):
        super().__init__([], {})
        self._everyone = None

    def uid(self, name):
        import pwd
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            return None

    def group(self, name):
        import grp
        try:
            entry = grp.getgrnam(name)
        except KeyError:
            return None
        return entry.gr_gid, list(entry.gr_mem)

    def primary_members(self, gid):
        import pwd
        if self._everyone is None:
            self._everyone = [(p.pw_uid, p.pw_gid) for p in pwd.getpwall()]
        return [uid for uid, user_gid in self._everyone if user_gid == gid]


def merge(ranges):
    """Sorted, merged inclusive ranges: overlapping and adjacent ones become one (the
    kernel refuses overlapping intervals; adjacent ones would share a key)."""
    out = []
    for low, high in sorted(ranges):
        if out and low <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], high)
        else:
            out.append([low, high])
    return out


def subtract(ranges, removed):
    """Merged ranges minus the ids in `removed` (merged too)."""
    out = []
    for low, high in merge(ranges):
        for cut_low, cut_high in merge(removed):
            if cut_high < low or cut_low > high:
                continue
            if cut_low > low:
                out.append([low, cut_low - 1])
            low = cut_high + 1
            if low > high:
                break
        if low <= high:
            out.append([low, high])
    return out


def _points(ids):
    return [[i, i] for i in ids]


def rule_ranges(rule, nss):
    """(uid ranges, gid ranges, names not found) of one always rule."""
    include, exclude = rule["users"]
    groups, not_groups = rule["groups"]
    uid_of = {n: nss.uid(n) for n in include + exclude if n != "*"}
    group_of = {g: nss.group(g) for g in groups + not_groups}
    unknown = [n for n, uid in uid_of.items() if uid is None]
    unknown += [g for g, entry in group_of.items() if entry is None]
    # a group's listed members NSS cannot find (LDAP users of a local group, LDAP
    # down): named, so that a reload that drops them says so, and gc reports them lost
    unknown += [f"{g}:{member}" for g in groups + not_groups if group_of[g]
                for member in group_of[g][1] if nss.uid(member) is None]
    uids = [list(r) for r in rule["uids"]]
    uids += EVERY_USER if "*" in include else []
    uids += _points(uid_of[n] for n in include if uid_of.get(n) is not None)
    uids += _points(uid for g in groups for uid in nss.members(g) if uid != 0)
    removed = _points(uid_of[n] for n in exclude if uid_of.get(n) is not None)
    removed += _points(uid for g in not_groups for uid in nss.members(g))
    gids = _points(group_of[g][0] for g in groups if group_of[g] and group_of[g][0] != 0)
    not_gids = _points(group_of[g][0] for g in not_groups if group_of[g])
    return subtract(uids, removed), subtract(gids, not_gids), unknown


def resolve(always, nss=None, now=None):
    """{"at": epoch seconds, "sets": {set name: ranges}, "unknown": [names]} for the
    always part of a compiled snapshot (compiler.build_always)."""
    at = int(now if now is not None else time.time())
    if not always or not always.get("profiles"):
        return {"at": at, "sets": {}, "unknown": []}
    nss = nss or Nss.from_system()
    uids = {owner: [] for owner in _owners(always)}
    gids = {owner: [] for owner in _owners(always)}
    unknown = []
    for rule in always["rules"]:
        rule_uids, rule_gids, missing = rule_ranges(rule, nss)
        unknown += [name for name in missing if name not in unknown]
        for owner in [""] + [p for p in rule["profiles"] if p in always["profiles"]]:
            uids[owner] += rule_uids
            gids[owner] += rule_gids
    return {"at": at, "sets": _sets(always, uids, gids), "unknown": unknown}


def widen(always, old, new):
    """gc's resolution: the applied one (`old`) plus what NSS lists now (`new`),
    never less. Returns (resolution, lost, narrower): lost, the names that resolved
    before and no longer do (an NSS outage, or an account removed: reload decides);
    narrower, the sets of which NSS no longer lists every id (kept until reload)."""
    old_sets = old.get("sets", {})
    uids = {owner: [] for owner in _owners(always)}
    gids = {owner: [] for owner in _owners(always)}
    for owner, names in _owners(always).items():
        for resolution in (old_sets, new["sets"]):
            uids[owner] += resolution.get(names["auid"], []) + resolution.get(names["suid"], [])
            gids[owner] += resolution.get(names["agid"], [])
    old_unknown = old.get("unknown", [])
    lost = [name for name in new["unknown"] if name not in old_unknown]
    narrower = sorted(name for name, ranges in old_sets.items()
                      if subtract(ranges, new["sets"].get(name, [])))
    unknown = [name for name in new["unknown"] if name in old_unknown]
    # names lost since the reload, until NSS knows them again: for status, which must
    # show an outage while gc keeps the fence (the ids stay in the sets)
    still_lost = [n for n in old.get("lost", []) if n in new["unknown"] and n not in lost]
    return ({"at": new["at"], "sets": _sets(always, uids, gids), "unknown": unknown,
             "lost": still_lost + lost}, lost, narrower)


def _owners(always):
    """{owner: {kind: set name}}: every profile's static sets, and the guards ("")."""
    return dict(always["profiles"], **{"": always["guards"]})


def _sets(always, uids, gids):
    """{set: merged ranges}: ranges of two uids or more go to the interval set (auid),
    single uids to the hash set (suid), so that 10,000 named users cost one hash
    lookup."""
    sets = {}
    for owner, names in _owners(always).items():
        merged = merge(uids[owner])
        sets[names["auid"]] = [r for r in merged if r[0] < r[1]]
        sets[names["suid"]] = [r for r in merged if r[0] == r[1]]
        sets[names["agid"]] = merge(gids[owner])
    return sets


def root_group_problems(rules, nss=None):
    """[(path, line, message)] for the always rules' groups that resolve to gid 0: a
    socket's effective gid 0 is every daemon root runs, not a group of users."""
    problems = []
    for rule in (r for r in rules if r.scope == "always"):
        for group in rule.groups.include:
            nss = nss or Nss.from_system()
            entry = nss.group(group)
            if entry is not None and entry[0] == 0:
                problems.append((rule.where.path, rule.where.line, (
                    f"rule {rule.index + 1}: group {group!r} has gid 0: at scope = "
                    f'"always" a group fences every socket with its effective gid, and '
                    f"gid 0 is the gid of root's daemons, which would all be fenced; "
                    f'write users = ["root"] if root\'s own sockets are meant, or name '
                    f"the group's members in users")))
    return problems


def counts(always, resolved):
    """{profile: {"uids": n, "gids": n, "ranges": n}} for status (ranges: the
    elements of its sets, a single uid or gid counting as one)."""
    out = {}
    for profile, sets in (always or {}).get("profiles", {}).items():
        uid_ranges = (resolved["sets"].get(sets["auid"], [])
                      + resolved["sets"].get(sets["suid"], []))
        gid_ranges = resolved["sets"].get(sets["agid"], [])
        out[profile] = {"uids": sum(h - l + 1 for l, h in uid_ranges),
                        "gids": sum(h - l + 1 for l, h in gid_ranges),
                        "ranges": len(uid_ranges) + len(gid_ranges)}
    return out


def reasons(rule, nss, user, uid):
    """Why an always rule fences `user` (uid): phrases, [] when it does not; and the
    phrases for the groups whose gid it matches on sockets (whoever owns them)."""
    include, exclude = rule["users"]
    groups, not_groups = rule["groups"]
    why = [f"uid {uid} in range {_shown(r)}" for r in rule["uids"] if r[0] <= uid <= r[1]]
    if user in include:
        why.append("named in users")
    if "*" in include and uid != 0:
        why.append('users = ["*"] (every uid but 0)')
    for group in groups:
        kind = nss.members(group).get(uid)
        if kind and uid != 0:
            why.append(f"member of group {group} ({kind})")
    if user in exclude:
        why = []
    for group in not_groups:
        if uid in nss.members(group):
            why = []
    gids = [f"{g} (gid {nss.group(g)[0]})" for g in groups
            if nss.group(g) is not None and g not in not_groups]
    return why, gids


def _shown(pair):
    low, high = pair
    return str(low) if low == high else f"{low}-{high}"
