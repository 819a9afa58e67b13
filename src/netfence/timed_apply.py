"""Timed sets in the kernel: make them hold what timed.py computes.

Every element of a timed set (setkinds.TIMED_KINDS: time windows, grants,
restrictions) is computed from the session and run records, grants.json and the
clock (timed.desired), never read back from a record with its expiry. This module
reads those inputs, dumps what the kernel holds (with the time each element has
left, NFTA_SET_ELEM_EXPIRATION) and sends the difference in ONE transaction:

  a key not desired          destroyed
  a desired key missing      added with the time left until its expiry
  an expiry off by > SLACK   destroyed and added again in the same batch (a NEWSETELEM
                             alone may keep the old timeout: only destroy + add sets
                             an exact one, atomically); an expiry at the 7-day
                             horizon is right within AT_CAP (it moves with the clock)

reconcile runs under the records lock (no login between our read and our write) and
is what gc, watch (at window openings), grant/restrict/revoke call. reload carries
the same elements over inside its own transaction (desired_timeouts), and drift
(status, gc) compares keys with key_drift.
"""

import time

from . import grants, records, setkinds, snapshot, timed
from .errors import NetfenceError, StateError
from .hooklog import field

SLACK = 1.0         # seconds: a kernel expiry this close to the desired one is right
AT_CAP = 86400.0    # seconds: an expiry at the horizon this close to it is right
SETTLING = 2.0      # seconds: a key expiring this soon is about to change (drift)


class TableMissing(NetfenceError):
    """No table inet netfence to put timed elements in."""


class NoPolicyApplied(TableMissing):
    """No policy applied (none yet, or flushed): no table is expected."""


def desired_inputs(run_dir, state_dir, now, without_grants=False, live=None):
    """(records, grants in force): the live session, run and user records, strictly
    read (a damaged record raises StateError: its window keys cannot be known, and
    destroying them would unfence its login), and grants.active (StateError when
    grants.json cannot be trusted; without_grants: the last-good copy's restrictions
    then, logged, see grants_or_kept)."""
    live, active, untrusted = _inputs(run_dir, state_dir, now, live)
    if untrusted is not None and not without_grants:
        raise untrusted
    return live, active


def _inputs(run_dir, state_dir, now, read=None):
    """(live records, grants or kept restrictions, None or the StateError). read:
    records.read_live's answer when the caller read the records already (reload)."""
    # strict: a damaged record raises (its window keys cannot be known)
    live = (records.list_sessions(run_dir, strict=True, live=read)
            + records.list_runs(run_dir, strict=True, live=read)
            + [dict(u, kind="user") for u in records.list_users(run_dir, strict=True,
                                                                live=read)])
    return (live, *grants_or_kept(state_dir, now))


def grants_or_kept(state_dir, now):
    """(grants in force, None), or when grants.json cannot be trusted (the last-good
    copy's restrictions in force, the StateError, logged with restrictions_kept=N):
    never "no grants", which would lift every restriction (grants.kept_restrictions)."""
    try:
        return grants.active(state_dir, now), None
    except StateError as err:
        kept = grants.kept_restrictions(state_dir, now)
        from .apply import log_event
        log_event(f"event=grants-untrusted restrictions_kept={len(kept)} "
                  f"error={field(str(err))}")
        return kept, StateError(f"{err} (restrictions_kept={len(kept)}: the "
                                f"restrictions of {grants.GOOD_FILE} in force)")


def desired_now(run_dir, state_dir, now, sets=None, without_grants=False, live=None):
    """{set: {hex key: expires epoch}} at now, only sets named in `sets` when given
    (a grant of a profile a reload removed has no set to go to)."""
    want = _desired_from(*desired_inputs(run_dir, state_dir, now, without_grants, live),
                         now)
    return {s: keys for s, keys in want.items() if sets is None or s in sets}


def desired_timeouts(run_dir, state_dir, table, now=None, without_grants=False,
                     live=None):
    """{set: {hex key: ms left}}: what reload puts in the new table's timed sets.
    without_grants (gc restoring a missing table): an untrusted grants.json leaves
    the grants out (keeping the last-good copy's restrictions) instead of keeping
    every login's fence away; gc's reconcile then fails naming the file, and reload
    refuses it. live: records.read_live's answer, read already by the caller."""
    now = time.time() if now is None else now
    sets = {s.name for s in table.sets if s.timeout}
    return timed.timeouts_ms(
        desired_now(run_dir, state_dir, now, sets, without_grants, live), now)


def plan_changes(want, have, now):
    """(destroy {set: [key]}, add {set: {key: ms}}, counts) that make `have` ({set:
    {key: ms left or None}}, the kernel's dump) hold `want` ({set: {key: expires}}).
    Sets the kernel lacks are left out: there is nowhere to put their keys."""
    destroy, add_until = {}, {}
    counts = {"added": 0, "refreshed": 0, "removed": 0}
    for set_name, keys in have.items():
        wanted = want.get(set_name, {})
        for key, left_ms in keys.items():
            if key not in wanted:
                destroy.setdefault(set_name, []).append(key)
                counts["removed"] += 1
            elif not _expiry_right(left_ms, wanted[key], now):
                destroy.setdefault(set_name, []).append(key)
                add_until.setdefault(set_name, {})[key] = wanted[key]
                counts["refreshed"] += 1
        for key, until in wanted.items():
            if key not in keys:
                add_until.setdefault(set_name, {})[key] = until
                counts["added"] += 1
    return destroy, timed.timeouts_ms(add_until, now), counts


def _expiry_right(left_ms, until, now):
    """Whether a kernel expiry (ms left, None: no timeout) is the desired one. An
    expiry at the horizon (a window covering the whole week) moves with the clock:
    any expiry within AT_CAP of it is right, or it would be rewritten every run."""
    if left_ms is None:
        return False
    have = now + left_ms / 1000
    if until >= now + timed.HORIZON_DAYS * 86400 - SLACK:
        return until - AT_CAP <= have <= until + SLACK
    return abs(have - until) <= SLACK


def key_drift(want, have, now):
    """(missing, extra) {set: [key]} between desired and kernel keys, leaving out
    keys whose desired or kernel expiry is within SETTLING of now: they are about
    to change (the kernel removes them, or a window just closed)."""
    missing, extra = {}, {}
    for set_name, keys in have.items():
        wanted = want.get(set_name, {})
        gone = sorted(k for k, left in keys.items() if k not in wanted
                      and (left is None or left / 1000 > SETTLING))
        lost = sorted(k for k, until in wanted.items() if k not in keys
                      and until - now > SETTLING)
        if gone:
            extra[set_name] = gone
        if lost:
            missing[set_name] = lost
    return missing, extra


def table_drift(table, run_dir, state_dir, ruleset, now=None):
    """(missing, extra) keys {set: [hex key]} of the kernel's timed sets against what
    the records, grants.json and the clock want (key_drift: keys about to change are
    left out); expiries are reconcile's business, not drift's."""
    now = time.time() if now is None else now
    sets = {s.name for s in table.sets if s.timeout}
    if not sets:
        return {}, {}
    want = desired_now(run_dir, state_dir, now, sets)
    return key_drift(want, ruleset.read_expiries(sets, table.name), now)


def applied_timed_sets(state_dir):
    """The timed sets of the applied snapshot's table; NoPolicyApplied when no
    policy is applied (none yet, or flushed)."""
    applied = snapshot.read_snapshot(state_dir)
    if not applied or applied.get("flushed") or not applied.get("table"):
        raise NoPolicyApplied("no policy is applied (table inet netfence is not ours to "
                           "fill): run `netfence reload`")
    return sorted(s["name"] for s in applied["table"]["sets"] if s.get("timeout"))


def reconcile(run_dir, state_dir, *, now=None):
    """Make the timed sets hold timed.desired at now, in one batch, under the records
    lock (callers must not hold it). Returns {"added", "refreshed", "removed",
    "next_change"}. TableMissing without a table; the kernel's KernelError when it
    refuses (nothing changed then: one transaction). With grants.json untrusted the
    window sets are still reconciled, the last-good copy's restrictions added or
    refreshed, nothing in a grant or restriction set destroyed, and then the
    StateError raised (gc exits 1 naming the file). Keys are cgroup ids, which the
    kernel never reuses: a gone session's key matches nothing until its timeout."""
    from .nftnl import Ruleset
    sets = applied_timed_sets(state_dir)
    records.ensure_dirs(run_dir)
    with records.Lock(run_dir), Ruleset() as ruleset:
        now = time.time() if now is None else now
        live, active, untrusted = _inputs(run_dir, state_dir, now)
        want = _desired_from(live, active, now)
        if not ruleset.table_exists(setkinds.TABLE):
            raise TableMissing("table inet netfence is missing: nothing is enforced "
                               "(`netfence gc` restores it)")
        have = ruleset.read_expiries(sets, setkinds.TABLE)
        destroy, add, result = plan_changes(want, have, now)
        if untrusted is not None:
            destroy = keep_grant_sets(destroy, add, result)
        ruleset.set_timed(destroy, add, setkinds.TABLE)
    if untrusted is not None:
        raise StateError(f"{untrusted}; window sets reconciled, grant and restriction "
                         f"elements in the kernel kept")
    result["next_change"] = timed.next_change(live, now)
    return result


def keep_grant_sets(destroy, add, counts):
    """destroy without the keys of grant and restriction sets (guid/gucg/gscg/ruid,
    any-ruid) that are not re-added in the same batch: with grants.json untrusted,
    what the kernel holds there stays until its own timeout."""
    kept = {}
    for set_name, keys in destroy.items():
        if is_grant_set(set_name):
            refreshed = add.get(set_name, {})
            counts["removed"] -= sum(1 for k in keys if k not in refreshed)
            keys = [k for k in keys if k in refreshed]
        if keys:
            kept[set_name] = keys
    return kept


def is_grant_set(set_name):
    kinds = setkinds.GRANT_KINDS + setkinds.RESTRICT_KINDS
    return any(set_name.startswith(k.prefix) or set_name == k.guard for k in kinds)


def _desired_from(live, active, now):
    """live: session, run and user records (desired_inputs marks the user ones)."""
    sessions = [r for r in live if r.get("kind") not in ("run", "user")]
    runs = [r for r in live if r.get("kind") == "run"]
    users = [r for r in live if r.get("kind") == "user"]
    return timed.desired(sessions, runs, active, now, users)
