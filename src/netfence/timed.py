"""Elements with a kernel timeout: time windows, grants and restrictions. Pure.

Every element of a timed set (setkinds.TIMED_KINDS) is computed, never recorded with
its expiry: from the session and run records (the rules with `time` a login matched,
with the elements they would add, in record["timed"]), the grants (grants.json) and
the clock. Whoever writes these sets (the hook at open, reload, gc, watch, `grant`)
asks `desired` (or `record_elements`) and sends each key with the time left until its
expiry, so the kernel removes it on time even when nothing netfence runs:

  a time window   until the windows of the rule stop covering the clock (a rule with
                  Mo-Fr 08:00-20:00 matched at 19:55 expires at 20:00; adjacent windows
                  run on), at most HORIZON_DAYS ahead (gc and watch refresh it)
  a grant / restriction  until its "expires"

One key may have several sources (two sessions of one user matched by rules with
different windows, the guard of several profiles): a window key expires with ONE
open_until over the union of the windows of every entry holding it (elements_of:
windows of two rules that meet run on), a grant's with the last of them
(merge_max). A user record keeps its sessions' user-scope entries ("timed") until
its release: a user-scope window follows the user, as user elements do. Light on
purpose (the hook imports it): time and setkinds only.

A record's timed entries, written at open (plan.session_record):
  {"rule": index, "scope": "user"|"session", "windows": [[days, start, end]...],
   "elements": {set name: [hex key]}}     # the keys, whatever the clock says
A grant (grants.py): {"id", "kind": "grant"|"restrict", "profile", "uid", "user" or
"session" (key) with "cgroup_id", "expires" (epoch seconds), "reason", "by", ...}.
"""

import time

from . import setkinds

HORIZON_DAYS = 7            # an expiry further than this is cut here and refreshed
MINUTES_PER_DAY = 1440


# ---- the clock --------------------------------------------------------------------

def time_matches(windows, weekday, minute):
    """Whether one of the windows ([[days mask, start, end]], minutes since local
    midnight) holds at weekday (0 = Monday) and minute; no windows: always."""
    if not windows:
        return True
    yesterday = (weekday - 1) % 7
    for days, start, end in windows:
        if start < end:
            if days >> weekday & 1 and start <= minute < end:
                return True
        else:                       # crosses midnight
            if days >> weekday & 1 and minute >= start:
                return True
            if days >> yesterday & 1 and minute < end:
                return True
    return False


def _local(now):
    lt = time.localtime(now)
    return lt.tm_wday, lt.tm_hour * 60 + lt.tm_min, lt


def _epochs(lt, day_offset, minute):
    """(first, last): the instants at which the local wall clock reaches minute
    `minute` (0..1440) of the day day_offset days after lt's day. Equal but on
    daylight saving nights: a minute the clock skips is reached when it jumps past
    it (first == last); a repeated minute is reached twice (first < last)."""
    if minute == MINUTES_PER_DAY:
        day_offset, minute = day_offset + 1, 0
    noon = time.localtime(time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday + day_offset,
                                       12, 0, 0, 0, 0, -1)))
    target = (noon.tm_year, noon.tm_mon, noon.tm_mday, minute // 60, minute % 60)
    found = sorted({at for at in (time.mktime(target + (0, 0, 0, dst)) for dst in (0, 1))
                    if tuple(time.localtime(at))[:5] == target})
    if found:
        return found[0], found[-1]
    return (_jump_past(target),) * 2


def _jump_past(target):
    """The first whole minute at which the wall clock is past `target`, a minute
    it skips (the daylight saving jump: at most 3 h before mktime's reading)."""
    high = int(time.mktime(target + (0, 0, 0, -1))) // 60     # already past it
    low = high - 180
    while low < high:
        middle = (low + high) // 2
        if tuple(time.localtime(middle * 60))[:5] > target:
            high = middle
        else:
            low = middle + 1
    return float(low * 60)


def _boundaries(windows):
    """The minutes of a day at which the windows may open or close."""
    return sorted({m % MINUTES_PER_DAY for _days, start, end in windows
                   for m in (start, end)})


def _walk(windows, now):
    """(epoch, open) at every boundary after now, for HORIZON_DAYS + 1 days. On a
    repeated wall-clock minute (daylight saving ends) a window opens at its first
    occurrence and closes at its last: the kernel never holds it for less than the
    wall clock says."""
    weekday, minute, lt = _local(now)
    marks = _boundaries(windows)
    for offset in range(HORIZON_DAYS + 2):
        day = (weekday + offset) % 7
        for mark in marks:
            if offset == 0 and mark <= minute:
                continue
            first, last = _epochs(lt, offset, mark)
            is_open = time_matches(windows, day, mark)
            at = first if is_open else last
            if at > now:
                yield at, is_open


def open_until(windows, now):
    """The epoch at which the windows stop covering the clock without a gap from now,
    capped at HORIZON_DAYS ahead; None when none is open at now."""
    weekday, minute, _lt = _local(now)
    if not time_matches(windows, weekday, minute):
        return None
    cap = now + HORIZON_DAYS * 86400
    for at, is_open in _walk(windows, now):
        if at >= cap:
            break
        if not is_open:
            return at
    return cap


def next_opening(windows, now):
    """The epoch at which a window next opens after now (None: within the horizon
    none does, or they cover the clock throughout)."""
    weekday, minute, _lt = _local(now)
    was_open = time_matches(windows, weekday, minute)
    for at, is_open in _walk(windows, now):
        if is_open and not was_open:
            return at
        was_open = is_open
    return None


# ---- elements with an expiry: {set: {hex key: expires epoch}} -----------------------

def merge_max(target, elements):
    """Add {set: {key: expires}} to target, a key keeping its latest expiry."""
    for set_name, keys in elements.items():
        have = target.setdefault(set_name, {})
        for key, until in keys.items():
            if until > have.get(key, 0):
                have[key] = until
    return target


def record_elements(record, now, scope=None):
    """The timed elements of one session, run or user record at now (entries of
    `scope` only when given). A closing record has none."""
    return elements_of([record], now, scope)


def elements_of(records, now, scope=None):
    """{set: {hex key: expires}} of the timed entries of the records (closing ones
    left out) at now. A key held by several entries (two rules, two records) expires
    with ONE open_until over the union of their windows: adjacent windows of
    different rules run on (08:00-12:00 and 12:00-20:00 give 20:00, not 12:00)."""
    held = {}
    for record in records:
        if record.get("closing"):
            continue
        for entry in record.get("timed", ()):
            if scope is not None and entry["scope"] != scope:
                continue
            windows = {tuple(w) for w in entry["windows"]}
            for set_name, keys in entry["elements"].items():
                have = held.setdefault(set_name, {})
                for key in keys:
                    have.setdefault(key, set()).update(windows)
    cache, out = {}, {}
    for set_name, keys in held.items():
        for key, windows in keys.items():
            union = tuple(sorted(windows))
            if union not in cache:          # many keys share a few window lists
                cache[union] = open_until([list(w) for w in union], now)
            if cache[union] is not None:
                out.setdefault(set_name, {})[key] = cache[union]
    return out


def record_keys(record, scope=None):
    """{set: [hex key]} of every timed entry of a record, open or not (what a close
    may have to destroy)."""
    out = {}
    for entry in record.get("timed", ()):
        if scope is None or entry["scope"] == scope:
            for set_name, keys in entry["elements"].items():
                have = out.setdefault(set_name, [])
                have += [k for k in keys if k not in have]
    return out


def grant_elements(grant, sessions):
    """{set: [hex key]} of one grant or restriction; sessions: the live session
    records (a user grant also exempts the ingress of the user cgroups of the user's
    live fenced logins, which a socket on input is matched by)."""
    profile = grant["profile"]
    if grant["kind"] == "restrict":
        key = setkinds.RUID.key(grant["uid"])
        return {setkinds.RUID.set_name(profile): [key], setkinds.RUID.guard: [key]}
    if "session" in grant:
        return {setkinds.GSCG.set_name(profile): [setkinds.GSCG.key(grant["cgroup_id"])]}
    user_cgroups = sorted({r["user_cgroup_id"] for r in sessions
                           if r.get("uid") == grant["uid"] and r.get("user_cgroup_id")
                           and not r.get("closing")})
    out = {setkinds.GUID.set_name(profile): [setkinds.GUID.key(grant["uid"])]}
    if user_cgroups:
        out[setkinds.GUCG.set_name(profile)] = [setkinds.GUCG.key(c) for c in user_cgroups]
    return out


def desired(sessions, runs, grants, now, users=()):
    """{set: {hex key: expires}}: every element the timed sets should hold at now.
    users: the user records, whose user-scope entries outlive the sessions that
    made them (a logout leaving a process behind keeps the user's window keys)."""
    out = elements_of(list(sessions) + list(runs) + list(users), now)
    for grant in grants:
        if grant["expires"] > now:
            merge_max(out, {s: dict.fromkeys(keys, grant["expires"])
                            for s, keys in grant_elements(grant, sessions).items()})
    return out


def timeouts_ms(elements, now):
    """{set: {hex key: ms}}: the kernel timeout of each element (at least 1 ms)."""
    return {s: {k: max(1, int((until - now) * 1000 + 0.999)) for k, until in keys.items()}
            for s, keys in elements.items()}


def next_change(sessions, now):
    """The earliest epoch after now at which a window of a live record (session,
    run or user record) opens (what watch wakes up for; closings are the kernel's),
    or None."""
    times = [next_opening(entry["windows"], now)
             for record in sessions if not record.get("closing")
             for entry in record.get("timed", ())]
    times = [t for t in times if t is not None]
    return min(times) if times else None
