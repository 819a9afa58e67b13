"""Always rules -> the uid and gid ranges of their static sets, through NSS.

reload calls `resolve` after compiling (the ranges go into the same transaction as
the table, and into compiled.json as "resolved"); gc calls it again and changes the
kernel's ranges by the difference when NSS changed (a new account in a range, a user
added to a group). Impure only in `Nss.from_system` (pwd.getpwall, grp.getgrall): the
rest is plain data in, plain data out, tested with a fake Nss.

What an always rule matches (docs/policy.md, "scope = always"):
  uids  users (named accounts; "*" = every uid but 0, without NSS), uids ranges, and
        every member of its groups (primary: the passwd entries with that gid;
        supplementary: the group entry's member list), root excepted unless named;
        minus the "!" users and the members of the "!" groups
  gids  its groups' gids minus the "!" groups': the socket's effective gid
        (meta skgid), the post's --gid-owner
"""

import time

from .model import MAX_ID

EVERY_USER = [[1, MAX_ID]]          # users = ["*"]: the post's `! --uid-owner 0`


class Nss:
    """The account lists a resolution reads: users [(name, uid, gid)], groups
    {name: (gid, [member names])}."""

    def __init__(self, users, groups):
        self.users = list(users)
        self.groups = dict(groups)
        self.uid_of = {name: uid for name, uid, _gid in self.users}

    @classmethod
    def from_system(cls):
        import grp
        import pwd
        return cls([(p.pw_name, p.pw_uid, p.pw_gid) for p in pwd.getpwall()],
                   {g.gr_name: (g.gr_gid, list(g.gr_mem)) for g in grp.getgrall()})

    def members(self, group):
        """{uid: "primary" | "supplementary"} of a group (empty when unknown)."""
        if group not in self.groups:
            return {}
        gid, names = self.groups[group]
        found = {self.uid_of[n]: "supplementary" for n in names if n in self.uid_of}
        found.update({uid: "primary" for _name, uid, user_gid in self.users if user_gid == gid})
        return found


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
    unknown = [n for n in include + exclude if n != "*" and n not in nss.uid_of]
    unknown += [g for g in groups + not_groups if g not in nss.groups]
    uids = [list(r) for r in rule["uids"]]
    uids += EVERY_USER if "*" in include else []
    uids += _points(nss.uid_of[n] for n in include if n in nss.uid_of)
    uids += _points(uid for g in groups for uid in nss.members(g) if uid != 0)
    removed = _points(nss.uid_of[n] for n in exclude if n in nss.uid_of)
    removed += _points(uid for g in not_groups for uid in nss.members(g))
    gids = _points(nss.groups[g][0] for g in groups if g in nss.groups)
    not_gids = _points(nss.groups[g][0] for g in not_groups if g in nss.groups)
    return subtract(uids, removed), subtract(gids, not_gids), unknown


def resolve(always, nss=None, now=None):
    """{"at": epoch seconds, "sets": {set name: ranges}, "unknown": [names]} for the
    always part of a compiled snapshot (compiler.build_always). Merged uid ranges are
    split: ranges of two uids or more go to the interval set (auid), single uids to
    the hash set (suid), so that 10,000 named users cost one hash lookup."""
    at = int(now if now is not None else time.time())
    if not always or not always.get("profiles"):
        return {"at": at, "sets": {}, "unknown": []}
    nss = nss or Nss.from_system()
    owners = dict(always["profiles"], **{"": always["guards"]})    # "": the guards
    uids = {owner: [] for owner in owners}
    gids = {owner: [] for owner in owners}
    unknown = []
    for rule in always["rules"]:
        rule_uids, rule_gids, missing = rule_ranges(rule, nss)
        unknown += [name for name in missing if name not in unknown]
        for owner in [""] + [p for p in rule["profiles"] if p in always["profiles"]]:
            uids[owner] += rule_uids
            gids[owner] += rule_gids
    sets = {}
    for owner, names in owners.items():
        merged = merge(uids[owner])
        sets[names["auid"]] = [r for r in merged if r[0] < r[1]]
        sets[names["suid"]] = [r for r in merged if r[0] == r[1]]
        sets[names["agid"]] = merge(gids[owner])
    return {"at": at, "sets": sets, "unknown": unknown}


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
    gids = [f"{g} (gid {nss.groups[g][0]})" for g in groups if g in nss.groups
            and g not in not_groups]
    return why, gids


def _shown(pair):
    low, high = pair
    return str(low) if low == high else f"{low}-{high}"
