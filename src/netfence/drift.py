"""Drift: is the kernel still what the applied snapshot and the session records say?

`netfence status` reports it (check_steadily), `netfence gc` repairs it (repair_table):
a missing or altered table is restored from the applied snapshot (what the last reload
applied, not the files in /etc) with the records' elements, missing live elements are
added back and elements without a record removed, an interrupted reload is finished.
The always rules' sets hold no record's elements: they are checked against
the snapshot's resolution instead, and gc resolves the rules again (NSS may have
changed) and widens the resolution by what NSS newly lists (resolve.widen: never
narrower, an NSS outage must not unfence anyone; reload narrows). A static set whose
content differs is replaced whole, flushed and filled in one transaction.
"""

import errno
from dataclasses import dataclass, field

from . import ir, records, resolve, snapshot, timed_apply
from .apply import log_event, marker_policy, restore_table, state_lock
from .errors import KernelError, NetfenceError, StateError
from .plan import subtract
from .setkinds import is_static


@dataclass
class Drift:
    applied: bool = False             # a policy is applied (not none, not flushed)
    table_missing: bool = False
    altered: list = field(default_factory=list)       # phrases: what differs
    missing_elements: dict = field(default_factory=dict)   # set -> count
    leaked_elements: dict = field(default_factory=dict)    # set -> count
    login_policy: str = ""            # login.marshal's policy id when it is not compiled.json's
    static_missing: dict = field(default_factory=dict)  # interval set -> elements missing
    static_extra: dict = field(default_factory=dict)    # interval set -> elements not resolved
    timed_missing: dict = field(default_factory=dict)   # timed set -> desired keys missing
    timed_extra: dict = field(default_factory=dict)     # timed set -> keys not desired
    timed_error: str = ""             # why the timed sets could not be checked

    @property
    def ok(self):
        return not (self.table_missing or self.altered or self.missing_elements
                    or self.leaked_elements or self.login_policy or self.static_missing
                    or self.static_extra or self.timed_missing or self.timed_extra
                    or self.timed_error)

    def problems(self):
        out = []
        if self.login_policy.startswith("unreadable"):
            out.append(f"login.marshal is {self.login_policy}: logins follow on_error")
        elif self.login_policy:
            out.append(f"login.marshal holds policy {self.login_policy}, not the applied "
                       f"one: a reload was interrupted")
        if self.table_missing:
            out.append("table inet netfence is missing: nothing is enforced")
        if self.altered:
            out.append("table inet netfence was altered: " + "; ".join(self.altered))
        if self.missing_elements:
            out.append("live entries missing from the kernel: " + ", ".join(
                f"{n} in {s}" for s, n in sorted(self.missing_elements.items())))
        if self.static_missing or self.static_extra:
            out.append("always rules' ranges differ from their last resolution: " + ", ".join(
                f"{s} ({self.static_missing.get(s, 0)} elements missing, "
                f"{self.static_extra.get(s, 0)} extra)"
                for s in sorted(set(self.static_missing) | set(self.static_extra))))
        if self.leaked_elements:
            out.append("entries without a session record: " + ", ".join(
                f"{n} in {s}" for s, n in sorted(self.leaked_elements.items())))
        if self.timed_error:
            out.append(f"timed entries cannot be checked: {self.timed_error}")
        if self.timed_missing or self.timed_extra:
            out.append("timed entries differ from the records, grants and clock: " + ", ".join(
                f"{s} ({self.timed_missing.get(s, 0)} missing, "
                f"{self.timed_extra.get(s, 0)} not due)"
                for s in sorted(set(self.timed_missing) | set(self.timed_extra))))
        return out

    def as_dict(self):
        return {"ok": self.ok, "table_missing": self.table_missing,
                "altered": list(self.altered),
                "missing_elements": dict(self.missing_elements),
                "leaked_elements": dict(self.leaked_elements),
                "static_missing": dict(self.static_missing),
                "static_extra": dict(self.static_extra),
                "timed_missing": dict(self.timed_missing),
                "timed_extra": dict(self.timed_extra),
                "timed_error": self.timed_error or None,
                "login_policy": self.login_policy or None,
                "problems": self.problems()}


def check_table(applied, run_dir, ruleset, state_dir=None):
    """Compare the kernel with the applied snapshot and the records, and login.marshal
    with compiled.json (read only)."""
    from .nftnl import differences, expected_summary
    drift = Drift()
    if state_dir is not None and applied:
        try:
            login_id = snapshot.login_policy_id(state_dir) or "none"
        except StateError as err:
            login_id = f"unreadable ({err})"
        if login_id != applied.get("policy_id"):
            drift.login_policy = login_id
    if not applied or applied.get("flushed") or not applied.get("table"):
        return drift
    drift.applied = True
    table = ir.TableDef.from_json(applied["table"])
    got = ruleset.summary(table.name)
    if got is None:
        drift.table_missing = True
        return drift
    drift.altered = differences(expected_summary(table), got)
    if marker_policy(got["marker"]) != applied["policy_id"]:
        drift.altered.insert(0, "not the applied policy's table (marker "
                             f"{marker_policy(got['marker']) or 'absent'}, applied "
                             f"{applied['policy_id']})")
    if drift.altered:
        return drift
    add, remove = element_drift(table, run_dir, ruleset)
    drift.missing_elements = {s: len(keys) for s, keys in add.items()}
    drift.leaked_elements = {s: len(keys) for s, keys in remove.items()}
    add, remove = static_drift(table, applied, ruleset)
    drift.static_missing = {s: len(items) for s, items in add.items()}
    drift.static_extra = {s: len(items) for s, items in remove.items()}
    if state_dir is not None:
        try:
            add, remove = timed_apply.table_drift(table, run_dir, state_dir, ruleset)
        except StateError as err:         # grants.json untrusted: said, not guessed
            drift.timed_error = str(err)
            return drift
        drift.timed_missing = {s: len(keys) for s, keys in add.items()}
        drift.timed_extra = {s: len(keys) for s, keys in remove.items()}
    return drift


def static_drift(table, applied, ruleset):
    """(missing, extra) elements [(key bytes, is_end)] per static set: what the
    snapshot's resolution of the always rules wants against what the kernel holds."""
    static = {s.name: s for s in table.sets if is_static(s.name)}
    if not static:
        return {}, {}
    want = static_wanted(table, (applied.get("resolved") or {}).get("sets", {}))
    have = ruleset.read_intervals(static, table.name)
    missing, extra = {}, {}
    for name, items in want.items():
        wanted = {(key.hex(), end) for key, end in items}
        got = have.get(name, set())
        if wanted - got:
            missing[name] = sorted((bytes.fromhex(k), e) for k, e in wanted - got)
        if got - wanted:
            extra[name] = sorted((bytes.fromhex(k), e) for k, e in got - wanted)
    return missing, extra


def static_wanted(table, ranges):
    """{static set: [(key bytes, is_end)]}: the elements of the resolution `ranges`
    ({set: [[low, high], ...]}) in every static set of the table."""
    from .nfencode import static_elements
    from .setkinds import KEY_TYPES
    return {s.name: static_elements(ranges.get(s.name, []), KEY_TYPES[s.key][1], s.interval)
            for s in table.sets if is_static(s.name)}


def static_replacements(wanted, missing, extra):
    """{set: its whole wanted content} for the static sets that differ: a set is
    replaced whole (nftnl.replace_static), never changed element by element."""
    return {name: wanted[name] for name in sorted(set(missing) | set(extra))}


def element_drift(table, run_dir, ruleset):
    """(missing, unrecorded): the elements the records need that the kernel lacks, and
    those the kernel holds without a record, as {set: [hex key]}."""
    # no records: always rules' sets (resolved) and timed sets (computed)
    # nor verdict maps: their elements are the table's own (nftnl_drift compares them)
    wanted = {s.name for s in table.sets if not (is_static(s.name) or s.timeout or s.data)}
    need = {s: k for s, k in records.live_elements(run_dir).items() if s in wanted}
    have = {s: k for s, k in ruleset.read_elements(table.name).items() if s in wanted}
    return (subtract(need, _as_sets(have)), subtract(have, _as_sets(need)))


def _as_sets(elements):
    return {set_name: set(keys) for set_name, keys in elements.items()}


def check_steadily(applied, paths):
    """check_table, first without the records lock; if logins keep changing the
    ruleset while it is read (each read is retried until the generation holds still),
    again under the lock, where no netfence writer changes it."""
    from .nftnl import Ruleset
    try:
        with Ruleset() as ruleset:
            return check_table(applied, paths.run_dir, ruleset, paths.state_dir)
    except KernelError as err:
        if err.errno != errno.EAGAIN:
            raise
    records.ensure_dirs(paths.run_dir)
    with records.Lock(paths.run_dir), Ruleset() as ruleset:
        return check_table(applied, paths.run_dir, ruleset, paths.state_dir)


@dataclass
class Repair:
    drift: Drift
    action: str = "none"       # none | restored | elements | failed
    restored_elements: int = 0
    added: int = 0
    removed: int = 0
    rolled_forward: bool = False
    error: str = ""
    resolved: dict = field(default_factory=dict)   # set -> ranges, when NSS widened them
    static_added: int = 0
    static_removed: int = 0
    unresolved: list = field(default_factory=list)  # names NSS lost since they resolved
    narrower: list = field(default_factory=list)    # sets NSS lists narrower: kept
    widen_error: str = ""      # resolving again or applying it failed (table repaired)
    timed: dict = field(default_factory=dict)       # timed_apply.reconcile's result

    @property
    def failed(self):
        """gc exits 1: the table could not be repaired, NSS lost names, or widening
        the always rules failed."""
        return self.action == "failed" or bool(self.unresolved) or bool(self.widen_error)

    def __str__(self):
        text = self._text()
        if self.rolled_forward:
            text = ("gc: snapshot: finished an interrupted reload (login.marshal made "
                    "current)\n" + text)
        if self.resolved:
            text = ("gc: always rules: NSS changed their ranges, widened (" + ", ".join(
                f"{name} {len(ranges)} ranges" for name, ranges in sorted(
                    self.resolved.items())) + ")\n" + text)
        if self.widen_error:
            text += (f"\ngc: always rules: could not resolve them again: "
                     f"{self.widen_error} (the applied ranges stay)")
        return "".join(self._nss_lines()) + text

    def _nss_lines(self):
        lines = [f"gc: always rules: event=nss-unresolved name={name} (resolved before, "
                 f"unknown to NSS now: gc unfences nothing for it (a lost user or group "
                 f"stays fenced, a lost \"!\" exclusion's ids become fenced) until "
                 f"`netfence reload`, which resolves from scratch)\n"
                 for name in self.unresolved]
        if self.narrower:
            lines.append(f"gc: always rules: NSS now resolves fewer ids for "
                         f"{', '.join(self.narrower)} (an account or member removed, an "
                         f"exclusion that now matches, or NSS unreachable): they stay "
                         f"fenced until `netfence reload`\n")
        return lines

    def _text(self):
        if self.action == "failed":
            return f"gc: table: restore failed: {self.error}"
        if self.action == "restored":
            what = ("missing" if self.drift.table_missing
                    else "altered (" + "; ".join(self.drift.altered) + ")")
            return (f"gc: table: was {what}; restored from the applied snapshot with "
                    f"{self.restored_elements} live entries")
        if self.action == "elements":
            text = (f"gc: table: {self.added} missing live entries added back, "
                    f"{self.removed} entries without a record removed")
            if self.static_added or self.static_removed:
                text += (f"; always rules' ranges: {self.static_added} elements added, "
                         f"{self.static_removed} removed")
            if self.timed:
                text += (f"; timed entries: {self.timed['added']} added, "
                         f"{self.timed['refreshed']} refreshed, "
                         f"{self.timed['removed']} removed")
            return text
        if not self.drift.applied:
            return "gc: table: no policy applied"
        return "gc: table: ok"


def repair_table(paths, widen=True):
    """gc's table check: restore a missing or altered table from the applied snapshot
    (what the last reload applied, not /etc) and the records; add back missing live
    elements; then widen the always rules by what NSS newly lists. Holds the state
    lock (no reload meanwhile) and, while it compares and writes, the records lock (no
    login meanwhile), so it never races a writer.

    The restore comes first and uses the applied resolution as it is: neither NSS (a
    slow or unreachable directory) nor the state dir (full, read-only) may keep a
    flushed table, and with it every login's fence, from coming back.

    widen=False: no NSS lookup (watch's event-driven repairs; its periodic gc widens)."""
    with state_lock(paths.state_dir):
        applied = snapshot.read_snapshot(paths.state_dir)
        if not applied:
            return Repair(Drift())
        records.ensure_dirs(paths.run_dir)
        drift = check_steadily(applied, paths)
        repair = Repair(drift)
        if drift.login_policy:
            if not snapshot.roll_forward(paths.state_dir, applied["policy_id"]):
                repair.action = "failed"
                repair.error = (f"login.marshal holds policy {drift.login_policy}, "
                                f"compiled.json {applied['policy_id']}: run `netfence reload`")
                return repair
            repair.rolled_forward = True
        snapshot.remove_stale(paths.state_dir)       # we hold the state lock: leftovers
        try:
            _repair_drift(repair, applied, paths)
        except NetfenceError as err:
            repair.action, repair.error = "failed", str(err)
            return repair
        if widen:
            _widen(repair, applied, paths.state_dir)
        return repair


def _repair_drift(repair, applied, paths):
    """Make the kernel what the applied snapshot and the records say."""
    drift = repair.drift
    if drift.table_missing or drift.altered:
        repair.restored_elements = restore_table(applied, paths.run_dir, paths.state_dir)
        repair.action = "restored"
    elif drift.missing_elements or drift.leaked_elements:
        # Compared again under the records lock: what looked missing or leaked
        # may have been a login or logout in progress.
        repair.added, repair.removed = _fix_elements(applied, paths.run_dir)
    if drift.static_missing or drift.static_extra:
        repair.static_added, repair.static_removed = _fix_ranges(applied)
    # (with grants.json untrusted gc's sessions part reports it: reconcile refuses)
    if repair.action != "restored" and (drift.timed_missing or drift.timed_extra):
        repair.timed = timed_apply.reconcile(paths.run_dir, paths.state_dir)
    if repair.action == "none" and (repair.added or repair.removed or repair.static_added
                                    or repair.static_removed or repair.timed):
        repair.action = "elements"


def _widen(repair, applied, state_dir):
    """Resolve the always rules again (after the repair: see repair_table) and put
    what NSS newly lists in the kernel. A failure is reported (gc exits 1), never
    raised: the table is already what the applied snapshot says."""
    try:
        repair.resolved, repair.unresolved, repair.narrower = _resolve_again(
            applied, state_dir)
        if repair.resolved:
            added, removed = _fix_ranges(applied)
            repair.static_added += added
            repair.static_removed += removed
            if repair.action == "none":
                repair.action = "elements"
    except (NetfenceError, OSError) as err:
        repair.widen_error = str(err)


def _resolve_again(applied, state_dir):
    """Resolve the always rules through NSS again and widen the applied resolution
    by what NSS newly lists; when that changed it, record it in compiled.json first
    (what gc and status compare the kernel with: a kernel change that fails is
    repaired by the next gc). Returns (changed {set: ranges}, lost names, sets that
    NSS lists narrower than applied)."""
    always = applied.get("always") or {}
    if applied.get("flushed") or not always.get("profiles"):
        return {}, [], []
    old = applied.get("resolved") or {"at": None, "sets": {}, "unknown": []}
    new, lost, narrower = resolve.widen(always, old, resolve.resolve(always))
    for name in lost:
        log_event(f"event=nss-unresolved name={name}")
    changed = {name: ranges for name, ranges in new["sets"].items()
               if old["sets"].get(name, []) != ranges}
    if (changed or new["unknown"] != old.get("unknown", [])
            or new["lost"] != old.get("lost", [])):
        applied["resolved"] = new
        snapshot.replace_compiled(state_dir, applied)
    return changed, lost, narrower


def _fix_ranges(applied):
    """Make the static sets hold the snapshot's resolution: one transaction that
    replaces the content of each set that differs. Returns (added, removed)
    elements. Logins never write these sets: no records lock needed."""
    from .nftnl import Ruleset
    table = ir.TableDef.from_json(applied["table"])
    wanted = static_wanted(table, (applied.get("resolved") or {}).get("sets", {}))
    with Ruleset() as ruleset:
        add, remove = static_drift(table, applied, ruleset)
        ruleset.replace_static(static_replacements(wanted, add, remove), table.name)
    return sum(map(len, add.values())), sum(map(len, remove.values()))


def _fix_elements(applied, run_dir):
    """Under the records lock (no netfence writer is between its record and its
    kernel change): add what the records need and the kernel lacks, destroy what the
    kernel holds without a record. Returns (added, removed)."""
    from .nftnl import Ruleset
    table = ir.TableDef.from_json(applied["table"])
    with records.Lock(run_dir), Ruleset() as ruleset:
        add, remove = element_drift(table, run_dir, ruleset)
        if add:
            ruleset.add_elements(add, table.name)
        if remove:
            ruleset.destroy_elements(remove, table.name)
    return sum(map(len, add.values())), sum(map(len, remove.values()))
