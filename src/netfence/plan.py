"""What a login or a logout must do, computed from what was read: pure.

sessions reads (the records, the liveness of other sessions, the user's cgroups),
asks this module what follows from it, writes the intent, sends the batch and commits.
Nothing here touches a file, the kernel or /proc, so that every decision can be
tested alone and read in one place:

  open_plan      the session record, the user record and the cgroup references to
                 write, the elements to send, and those the open adds that no live
                 record had (what an undo may take back)
  close_plan     what a close destroys, whether the user is released, whether the
                 session cgroup is ours to remove, and the records to write first
  releasing / after_pending
                 the records of a user release and of a finished pending destroy
  run_record     the record of a `netfence run` tree (closed with close_plan too)
  account_elements / counted / totals
                 accounting: the elements that count a cgroup (docs/hook.md,
                 "Accounting"), those of a record, and its totals from the counters

Elements are {set name: [hex key, ...]} (records.py); union, merge_into and subtract
are their algebra, shared with reload. Timed elements (rules with `time`: sets with a
kernel timeout) are never in these lists: a record keeps their keys in "timed" (the
user record its sessions' user-scope entries in "timed", and every key in
"timed_keys"), and timed.py says which are open and until when.
Light on purpose (the hook imports it): setkinds and timed (time).
"""

from . import setkinds, timed

DEFAULT_CGROUP_BASE = "netfence"


# ---- element sets as {set: [hex]} -------------------------------------------------

def union(parts):
    """{set: [key]} holding every key of every part once, in first-seen order; linear
    in the number of keys (reload unions tens of thousands of records)."""
    merged = {}
    for elements in parts:
        for set_name, keys in elements.items():
            merged.setdefault(set_name, {}).update(dict.fromkeys(keys))
    return {set_name: list(keys) for set_name, keys in merged.items()}


def merge_into(target, elements):
    """Add elements to target ({set: [key]}), each key once per set, in order."""
    for set_name, keys in elements.items():
        present = target.setdefault(set_name, [])
        seen = set(present)
        for key in keys:
            if key not in seen:
                seen.add(key)
                present.append(key)
    return target


def subtract(elements, other):
    """The elements not in other; sets left empty are dropped."""
    out = {}
    for set_name, keys in elements.items():
        left = [k for k in keys if k not in other.get(set_name, ())]
        if left:
            out[set_name] = left
    return out


def _copy(elements):
    return {set_name: list(keys) for set_name, keys in elements.items()}


# ---- open -------------------------------------------------------------------------

def cgroup_base(login):
    """The first component of netfence's own cgroups, from the snapshot's settings."""
    return login.get("settings", {}).get("cgroup_base", DEFAULT_CGROUP_BASE)


def elements_for(profiles, user_profiles, session_profiles, uid, cgroup, guards=None,
                 kinds=setkinds.KINDS):
    """(user elements, session elements) of one login, as {set: [hex key]}.

    Each set kind (kinds: setkinds.KINDS, or WINDOW_KINDS for a rule with `time`) of
    a profile gets the login's key when the profile restricts one of the kind's
    directions: the uid, the user cgroup's id or the session cgroup's id, by the
    kind's level. guards: the login part's "guards" ({field: guard set}): every key
    that goes into a profile's set goes into the matching guard set too, which the
    base chains test first, so that unrestricted traffic costs two lookups however
    many profiles there are. Being ordinary elements of the login, they are shared
    and released exactly like the profile elements. A kind whose field the profile
    (or guards) lacks adds nothing there: the compiler makes window sets only for
    profiles a rule with `time` names.
    """
    numbers = {None: uid, setkinds.USER_LEVEL: cgroup["user_id"],
               setkinds.SESSION_LEVEL: cgroup["id"]}
    guards = guards or {}
    out = {"user": {}, "session": {}}
    for scope, names in (("user", user_profiles), ("session", session_profiles)):
        for name in names:
            profile = profiles[name]
            for kind in kinds:
                if (kind.scope != scope or not profile.get(kind.field)
                        or not any(profile[d] for d in kind.directions)):
                    continue
                key = kind.key(numbers[kind.level])
                merge_into(out[scope], {profile[kind.field]: [key]})
                if guards.get(kind.field):
                    merge_into(out[scope], {guards[kind.field]: [key]})
    return out["user"], out["session"]


def account_elements(login, profile_names, cgroup_id):
    """{set: [hex key]} that count one cgroup (docs/hook.md, "Accounting"): when one
    of profile_names counts (its login part has "denied_set"), the cgroup's id goes in
    the login part's "account" sets (acct-out, acct-in) and in denied-P of each
    counting P, whatever the profile's scope or directions: a profile with no rule
    but `account = true` counts too. Nothing for a cgroup id of None (a run tree has no
    user cgroup) or when nothing counts."""
    account = login.get("account") or {}
    denied = [login["profiles"][name]["denied_set"] for name in profile_names
              if login["profiles"].get(name, {}).get("denied_set")]
    if not denied or cgroup_id is None:
        return {}
    names = [account[field] for field in sorted(setkinds.ACCT_FIELDS) if account.get(field)]
    key = setkinds.SCG.key(cgroup_id)      # cgroupsv2, host order: both levels alike
    return {name: [key] for name in dict.fromkeys(names + denied)}


def _login_profiles(user_profiles, session_profiles, timed_rules):
    """Every profile a login may get, its timed rules' included: counting a cgroup
    while a window is closed counts nothing the profile denies (denied-P is only
    reached through P's rules), and the traffic it counts is the session's own."""
    names = list(user_profiles) + list(session_profiles)
    names += [name for _index, _scope, profiles, _windows in timed_rules for name in profiles]
    return list(dict.fromkeys(names))


def counted(elements):
    """The accounting elements among {set: [hex key]} (setkinds.is_counted): what a
    close reads the totals of."""
    return {s: list(keys) for s, keys in elements.items() if keys and setkinds.is_counted(s)}


def totals(counters):
    """A record's totals from counters.read_counters' answer for its counted elements
    ({set: {hex key: (packets, bytes)}}): {"sent_bytes", "sent_packets", "recv_bytes",
    "recv_packets", "denied": {profile: packets}}; None when the kernel held none of
    them (no table, or the elements were gone): unknown, not zero."""
    if not any(counters.values()):
        return None
    def summed(set_name, index):
        return sum(pair[index] for pair in counters.get(set_name, {}).values())
    out, fields = {}, setkinds.ACCT_FIELDS
    for prefix, set_name in (("sent", fields["out"]), ("recv", fields["in"])):
        out[f"{prefix}_bytes"], out[f"{prefix}_packets"] = summed(set_name, 1), summed(set_name, 0)
    out["denied"] = {s[len(setkinds.DENIED_PREFIX):]: summed(s, 0) for s in sorted(counters)
                     if s.startswith(setkinds.DENIED_PREFIX) and counters[s]}
    return out


def timed_entries(login, decided, uid, cgroup):
    """record["timed"] of one login: decided is matcher.Decision.timed ((rule index,
    scope, profiles, windows)); each entry keeps the keys of its window sets whatever
    the clock says (timed.record_elements decides when they are open). An entry
    whose profiles have no window set (an older compiler) is left out."""
    out = []
    for index, scope, profiles, windows in decided:
        in_user = profiles if scope == "user" else ()
        in_session = profiles if scope != "user" else ()
        user_elements, session_elements = elements_for(
            login["profiles"], in_user, in_session, uid, cgroup, login.get("guards"),
            setkinds.WINDOW_KINDS)
        elements = user_elements if scope == "user" else session_elements
        if elements:
            out.append({"rule": index, "scope": scope, "profiles": list(profiles),
                        "elements": elements, "windows": [list(w) for w in windows]})
    return out


def session_record(login, info, session, user_profiles, session_profiles, cgroup, now,
                   timed_rules=()):
    """The record of one login. session: {"key", "ppid", "starttime"} of its PAM
    application; cgroup: what cgroups.open_session_cgroup returned; now: time.time();
    info: the account's user and uid and pamitems.login_items' items; timed_rules:
    matcher.Decision.timed (its "timed" entries, see timed_entries)."""
    user_elements, session_elements = elements_for(
        login["profiles"], user_profiles, session_profiles, info["uid"], cgroup,
        login.get("guards"))
    every = _login_profiles(user_profiles, session_profiles, timed_rules)
    merge_into(user_elements, account_elements(login, every, cgroup["user_id"]))
    merge_into(session_elements, account_elements(login, every, cgroup["id"]))
    return {
        **info,                     # user, uid and every PAM item the login matched on
        "key": session["key"], "ppid": session["ppid"], "starttime": session["starttime"],
        "policy_id": login.get("policy_id", ""),
        "user_profiles": list(user_profiles), "session_profiles": list(session_profiles),
        "cgroup": cgroup["path"], "cgroup_id": cgroup["id"],
        "user_cgroup": cgroup["user_path"], "user_cgroup_id": cgroup["user_id"],
        "created": cgroup["created"], "origin": cgroup["origin"],
        "base": cgroup_base(login), "session_elements": session_elements,
        "user_elements": user_elements, "opened_at": now,
        "timed": timed_entries(login, timed_rules, info["uid"], cgroup),
    }


def run_record(login, run, profiles, cgroup, now):
    """The record of a `netfence run` tree: kind "run". run: {"key", "pid",
    "starttime", "name", "user", "uid", "argv"} of the run process; cgroup: what
    cgroups.open_run_cgroup returned. Every profile applies at session scope, keyed
    by the tree's own cgroup (SESSION_LEVEL): a tree has no user part, so closing it
    (close_plan with no user) never releases anyone's user elements."""
    _, elements = elements_for(login["profiles"], (), profiles, run["uid"],
                               {"id": cgroup["id"], "user_id": None}, login.get("guards"))
    merge_into(elements, account_elements(login, profiles, cgroup["id"]))
    return {**run, "kind": "run", "profiles": list(profiles),
            "policy_id": login.get("policy_id", ""), "cgroup": cgroup["path"],
            "cgroup_id": cgroup["id"], "created": cgroup["created"],
            "base": cgroup_base(login), "session_elements": elements, "started": now}


def open_plan(record, previous, user, refs, sharing, timed_sources=(), now=0.0):
    """What an open writes and sends.

    record: session_record's; previous: the record of an earlier open by the same PAM
    application (None: first); user: the uid's record (None: none yet); refs: the keys
    of the sessions recorded in the session cgroup; sharing: the live records of the
    other sessions in it; timed_sources: the other live records that may hold one of
    the record's timed keys (the user's sessions); now: time.time(). Returns
    {"record", "user", "refs" (None: unchanged), "send", "timed", "added"}: send is
    every element of the login (the batch), timed the timed elements open at now
    with their expiry (timed_open), added those of both no live record had yet (what
    an undo takes back when the batch's outcome is unknown).
    """
    already = union([user["elements"] if user else {}]
                    + [other.get("session_elements", {}) for other in sharing])
    if previous is not None:
        merge_into(already, previous.get("session_elements", {}))
        record = _with_previous(record, previous)
    key, cgroup_id = record["key"], record["cgroup_id"]
    send = union([record["user_elements"], record["session_elements"]])
    timed_send, timed_added = timed_open(record, list(sharing) + list(timed_sources), now)
    return {"record": record, "user": _user_with(user, record),
            "refs": refs + [key] if cgroup_id and key not in refs else None,
            "send": send, "timed": timed_send,
            "added": union([subtract(send, already), timed_added])}


def timed_open(record, sources, now):
    """({set: {hex key: expires}}, {set: [hex key]}): the record's timed elements open
    at now, each expiring with the last of its sources (this record and the other live
    records given: the open sends an exact expiry, which must not cut another
    session's window short), and those no other source needs at now."""
    own = timed.record_elements(record, now)
    if not own:
        return {}, {}
    needed = timed.elements_of(sources, now)
    every = timed.elements_of([record] + list(sources), now)   # one union per key
    send = {s: {k: every[s][k] for k in keys} for s, keys in own.items()}
    added = subtract({s: list(keys) for s, keys in own.items()},
                     {s: list(keys) for s, keys in needed.items()})
    return send, added


def _with_previous(record, previous):
    """A second open by the same PAM application keeps what the first one added, and
    who made the cgroup when it is the same one."""
    record = dict(record,
                  session_elements=merge_into(_copy(record["session_elements"]),
                                              previous.get("session_elements", {})),
                  user_elements=merge_into(_copy(record["user_elements"]),
                                           previous.get("user_elements", {})),
                  timed=previous.get("timed", []) + [
                      e for e in record.get("timed", []) if e not in previous.get("timed", [])])
    if previous.get("cgroup_id") == record["cgroup_id"]:
        record["created"], record["origin"] = previous["created"], previous["origin"]
    return record


def _user_with(user, record):
    """The user record once this session's login is added to it."""
    user = dict(user or {"uid": record["uid"], "user": record["user"], "elements": {},
                         "sessions": [], "user_cgroups": [], "live_cgroups": []})
    user["elements"] = union([user["elements"], record["user_elements"]])
    # every user-scope timed key of its sessions, open or not: what a release destroys
    # once the session records that know them are gone
    user_timed = timed.record_keys(record, "user")
    if user_timed or "timed_keys" in user:
        user["timed_keys"] = union([user.get("timed_keys", {}), user_timed])
    # and the user-scope entries themselves: a user-scope key stays open while the
    # user does (a process left behind), not only while the session that made it does
    entries = [e for e in record.get("timed", ()) if e["scope"] == "user"]
    if entries or "timed" in user:
        kept = list(user.get("timed", []))
        user["timed"] = kept + [e for e in entries if e not in kept]
    if record["key"] not in user["sessions"]:
        user["sessions"] = user["sessions"] + [record["key"]]
    own = record["user_cgroup"]
    if record["created"] and own not in user.get("user_cgroups", []):
        user["user_cgroups"] = user.get("user_cgroups", []) + [own]
    if own not in user.get("live_cgroups", []):
        user["live_cgroups"] = user.get("live_cgroups", []) + [own]
    user["updated_at"] = record["opened_at"]
    return user


# ---- close ------------------------------------------------------------------------

def close_plan(record, refs, sharing, user, user_in_use, others, now=0.0):
    """What closing the session of `record` does.

    refs: the keys recorded in its cgroup; sharing: the live records of the other
    sessions there (a nested login shares its cgroup); user: the uid's record (None:
    none); user_in_use: the uid has another live session or a task left in its user
    cgroups; others: the elements other users' records hold that this user's may
    share (su inside a logind session shares the caller's user slice), their timed
    keys included; now: time.time().
    Timed keys: the session-scope ones of the record minus those a sharing record
    needs at now; on a release the user's "timed_keys" too (a user-scope key stays
    while the user does, until its kernel timeout, as user elements do).
    Returns {"destroy", "release", "ours", "user", "closing" (the session record to
    write first), "refs" (None: no cgroup id), "user_after" (None: nothing to write)}.
    """
    key = record["key"]
    keep = union([other.get("session_elements", {}) for other in sharing]
                 + [_keys(timed.record_elements(other, now)) for other in sharing])
    destroy = subtract(union([record.get("session_elements", {}),
                              timed.record_keys(record, "session")]), keep)
    release = user is not None and not user_in_use
    if release:
        merge_into(destroy, user["elements"])
        merge_into(destroy, user.get("timed_keys", {}))
        destroy = subtract(destroy, others)
    after = None
    if user is not None and not release:
        after = dict(user, sessions=[k for k in user["sessions"] if k != key])
    return {"destroy": destroy, "release": release, "user": user,
            "ours": bool(record.get("created") and record.get("cgroup") and not sharing),
            "closing": dict(record, closing=True, destroy=destroy),
            "refs": [k for k in refs if k != key] if record["cgroup_id"] else None,
            "user_after": after}


def _keys(elements):
    """{set: [hex key]} of {set: {hex key: expires}}."""
    return {set_name: list(keys) for set_name, keys in elements.items()}


def releasing(user):
    """The user record of a release, before its batch: closing, all its elements
    (timed keys included) pending (what no live record needs goes, see
    after_pending)."""
    return dict(user, closing=True,
                destroy=union([user["elements"], user.get("timed_keys", {})]))


def after_pending(record):
    """The record once its pending "destroy" is done: None (delete it) when it was
    closing, else the record without the pending list."""
    if record.get("closing"):
        return None
    return {k: v for k, v in record.items() if k != "destroy"}
