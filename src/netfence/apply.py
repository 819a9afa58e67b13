"""reload, flush and the table check of gc: the admin-side writes to the kernel and to
the snapshot.

A reload compiles first; only a policy that compiles is sent, in one transaction that
replaces the whole table and puts in it the elements the session records need. The
kernel and the snapshot change together or not at all: the snapshot files are staged
(written and fsynced) before the transaction and made current after the kernel
accepted it.

Live elements come from the records only (records.live_elements), never from the
kernel: an element without a record is a leak. Order: ruleset generation first, then
the records, then the transaction with NFNL_BATCH_GENID = that generation; every
netfence writer records its intent before it changes the kernel, so a transaction that
the kernel accepts saw every element a record needs.

Under login load the generation moves constantly. The first attempt runs without the
records lock (logins do not wait at all); if the kernel refuses it (GenerationChanged),
reload takes records.Lock, under which no netfence writer changes the kernel, and
retries: then only a foreign change can still refuse it (bounded retries). The table
messages are encoded before any lock; under the lock only the records are read, the
elements encoded and the transaction sent.
"""

import errno
import os
import secrets
import syslog
import time
from dataclasses import dataclass, field

from . import compiler, fsutil, ir, records, snapshot
from .errors import GenerationChanged, KernelError, NetfenceError, StateError
from .policy import load_policy

RETRIES = 5          # under the records lock: only foreign changes can refuse us


@dataclass(frozen=True)
class Paths:
    config_dir: str = "/etc/netfence"
    state_dir: str = "/var/lib/netfence"
    run_dir: str = "/run/netfence"


@dataclass(frozen=True)
class ReloadResult:
    policy_id: str
    profiles: int
    rules: int
    kept: int                 # live elements carried over
    dropped: dict             # set name -> number of elements dropped with their profile
    attempts: int = 1         # transactions sent
    lock_held_ms: float = 0.0  # how long logins were held off (0: never locked)


def compile_from(paths, check_ownership=True):
    policy = load_policy(paths.config_dir, check_ownership=check_ownership)
    return policy, compiler.compile_policy(policy)


def reload(paths):
    from .nftnl import PreparedTable
    policy, snap = compile_from(paths)
    table = ir.TableDef.from_json(snap["table"])
    prepared = PreparedTable(table, new_marker(snap["policy_id"]))
    with _state_lock(paths.state_dir):
        try:
            previous = snapshot.read_raw(paths.state_dir)  # parsed only for a roll back
        except StateError:
            previous = None           # unreadable: this reload is what replaces it
        staged = snapshot.stage(paths.state_dir, snap)
        try:
            outcome = _replace(prepared, paths.run_dir)
        except BaseException:
            staged.discard()
            raise
        try:
            staged.promote()
        except snapshot.PromoteError as err:
            raise StateError(f"{err}; {_roll_back(previous, err.renamed, paths)}") from None
    kept, dropped, attempts, held = outcome
    for set_name, count in sorted(dropped.items()):
        _log(f"event=reload-drop set={set_name} elements={count} reason=profile-removed")
    result = ReloadResult(snap["policy_id"], len(policy.profiles), len(policy.rules),
                          kept, dropped, attempts, round(held * 1000, 3))
    _log(f"event=reload policy={result.policy_id} profiles={result.profiles} "
         f"rules={result.rules} kept={kept} dropped={sum(dropped.values())} "
         f"attempts={attempts} lock_held_ms={result.lock_held_ms}")
    return result


def new_marker(policy_id):
    """The table's userdata: the policy it was built from, and this transaction."""
    return f"{policy_id} {secrets.token_hex(6)}"


def marker_policy(marker):
    return marker.split(" ", 1)[0] if marker else None


def _replace(prepared, run_dir):
    """Send the table with the records' elements: once optimistically, then under the
    records lock. Returns (kept, dropped, attempts, seconds the lock was held)."""
    try:
        return _attempt(prepared, run_dir) + (1, 0.0)
    except (GenerationChanged, _NeedsLock):
        pass
    records.ensure_dirs(run_dir)
    sockets = []        # closed after the lock: a close after a delete waits 8-16 ms
    try:
        with records.Lock(run_dir):
            started = time.monotonic()
            for attempt in range(RETRIES):
                try:
                    kept, dropped = _attempt(prepared, run_dir, sockets)
                except GenerationChanged:
                    if attempt == RETRIES - 1:
                        raise GenerationChanged(
                            "replace table inet netfence", errno.ERESTART,
                            f"something outside netfence kept changing the ruleset "
                            f"({RETRIES + 1} attempts, the last {RETRIES} with logins "
                            f"held off)") from None
                    continue
                return kept, dropped, attempt + 2, time.monotonic() - started
    finally:
        for ruleset in sockets:
            ruleset.close()
    raise AssertionError("unreachable")


class _NeedsLock(Exception):
    """The lock-free attempt cannot be trusted: go straight to the locked one."""


def _attempt(prepared, run_dir, sockets=None):
    """One transaction. sockets: None for the lock-free attempt; under the records
    lock, a list to leave the connection in (the caller closes it after the lock)."""
    from .nftnl import Ruleset
    wanted = {s.name for s in prepared.table.sets}
    ruleset = Ruleset()
    try:
        generation = ruleset.generation()
        unsettled = []
        live = records.live_elements(run_dir, unsettled)
        if unsettled and sockets is None:
            # An interrupted close's elements may still be in the kernel: a login
            # that adds one again changes nothing, so the generation would not tell
            # us about it. Only under the records lock can no login do that.
            raise _NeedsLock()
        kept = {name: keys for name, keys in live.items() if name in wanted}
        dropped = {name: len(keys) for name, keys in live.items()
                   if name not in wanted and keys}
        ruleset.replace_table(prepared.table, kept, genid=generation, prepared=prepared)
    finally:
        if sockets is None:
            ruleset.close()
        else:
            sockets.append(ruleset)
    # Counted as the admin thinks of them: guard sets mirror the others.
    return sum(len(keys) for name, keys in kept.items()
               if name not in compiler.GUARDS.values()), dropped


def _roll_back(previous, renamed, paths):
    """After the kernel took a table whose snapshot could not be made current: put the
    previous compiled.json and the previous table back, so that the kernel, gc and the
    logins all follow the snapshot still in force. Returns what happened."""
    done = []
    try:
        if previous is not None and snapshot.COMPILED in renamed:
            snapshot.put_back(paths.state_dir, snapshot.COMPILED, previous)
            done.append("the previous compiled.json was put back")
        previous = snapshot.parse_raw(previous) if previous else None
        if previous and previous.get("table") and not previous.get("flushed"):
            restore_table(previous, paths.run_dir)
            done.append("the previous table was restored")
        else:
            from .nftnl import Ruleset
            with Ruleset() as ruleset:
                ruleset.delete_table()
            done.append("the table was removed (no policy was applied before)")
    except NetfenceError as err:
        done.append(f"rolling back failed ({err}): run `netfence reload` once the state "
                    f"dir is writable")
    return "; ".join(done)


def restore_table(applied, run_dir):
    """Send the applied snapshot's table with the records' elements (gc's repair).
    Same transaction as reload; returns the number of live elements restored."""
    from .nftnl import PreparedTable
    table = ir.TableDef.from_json(applied["table"])
    prepared = PreparedTable(table, new_marker(applied["policy_id"]))
    kept, _dropped, _attempts, _held = _replace(prepared, run_dir)
    return kept


# ---- drift: is the kernel still what the applied snapshot and the records say? ------

@dataclass
class Drift:
    applied: bool = False             # a policy is applied (not none, not flushed)
    table_missing: bool = False
    altered: list = field(default_factory=list)       # phrases: what differs
    missing_elements: dict = field(default_factory=dict)   # set -> count
    leaked_elements: dict = field(default_factory=dict)    # set -> count
    login_policy: str = ""            # login.marshal's policy id when it is not compiled.json's

    @property
    def ok(self):
        return not (self.table_missing or self.altered or self.missing_elements
                    or self.leaked_elements or self.login_policy)

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
        if self.leaked_elements:
            out.append("entries without a session record: " + ", ".join(
                f"{n} in {s}" for s, n in sorted(self.leaked_elements.items())))
        return out

    def as_dict(self):
        return {"ok": self.ok, "table_missing": self.table_missing,
                "altered": list(self.altered),
                "missing_elements": dict(self.missing_elements),
                "leaked_elements": dict(self.leaked_elements),
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
    return drift


def element_drift(table, run_dir, ruleset):
    """(missing, unrecorded): the elements the records need that the kernel lacks, and
    those the kernel holds without a record, as {set: [hex key]}."""
    wanted = {s.name for s in table.sets}
    need = {s: k for s, k in records.live_elements(run_dir).items() if s in wanted}
    have = ruleset.read_elements(table.name)
    return (records.subtract(need, _as_sets(have)), records.subtract(have, _as_sets(need)))


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

    def __str__(self):
        text = self._text()
        if self.rolled_forward:
            text = ("gc: snapshot: finished an interrupted reload (login.marshal made "
                    "current)\n" + text)
        return text

    def _text(self):
        if self.action == "failed":
            return f"gc: table: restore failed: {self.error}"
        if self.action == "restored":
            what = ("missing" if self.drift.table_missing
                    else "altered (" + "; ".join(self.drift.altered) + ")")
            return (f"gc: table: was {what}; restored from the applied snapshot with "
                    f"{self.restored_elements} live entries")
        if self.action == "elements":
            return (f"gc: table: {self.added} missing live entries added back, "
                    f"{self.removed} entries without a record removed")
        if not self.drift.applied:
            return "gc: table: no policy applied"
        return "gc: table: ok"


def repair_table(paths):
    """gc's table check: restore a missing or altered table from the applied snapshot
    (what the last reload applied, not /etc) and the records; add back missing live
    elements. Holds the state lock (no reload meanwhile) and, while it compares and
    writes, the records lock (no login meanwhile), so it never races a writer."""
    with _state_lock(paths.state_dir):
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
            if drift.table_missing or drift.altered:
                repair.restored_elements = restore_table(applied, paths.run_dir)
                repair.action = "restored"
            elif drift.missing_elements or drift.leaked_elements:
                # Compared again under the records lock: what looked missing or leaked
                # may have been a login or logout in progress.
                repair.added, repair.removed = _fix_elements(applied, paths.run_dir)
                if repair.added or repair.removed:
                    repair.action = "elements"
        except NetfenceError as err:
            repair.action, repair.error = "failed", str(err)
        return repair


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


def flush(paths):
    """Remove the table and the live records; leave logins unrestricted until reload.

    The hook keeps running on every login, so instead of deleting the snapshot (which
    would make logins follow on_error and, by default, refuse them) an empty one
    with no rules is written (staged first: a state dir that cannot take it fails
    before the table is touched).
    """
    from .nftnl import Ruleset
    from .sessions import forget_all
    with _state_lock(paths.state_dir):
        empty = compiler.compile_policy(_empty_policy(snapshot.read_snapshot(paths.state_dir)))
        empty["flushed"] = True
        staged = snapshot.stage(paths.state_dir, empty)
        try:
            with Ruleset() as ruleset:
                existed = ruleset.delete_table()
        except BaseException:
            staged.discard()
            raise
        staged.promote()
        forgotten = forget_all(paths.run_dir)
    _log(f"event=flush table_existed={int(existed)} sessions={forgotten}")
    return existed, forgotten


def _empty_policy(applied):
    """No rules; the settings (cgroup_base above all, which gc needs) stay as applied."""
    from .model import Policy, Settings
    settings = Settings(**applied["settings"]) if applied else Settings()
    return Policy(settings, {}, ())


def _state_lock(state_dir):
    """Serialises reload, flush and gc's table repair (logins never take this lock).
    A flock: a read-only state dir still serialises them (they then fail where they
    write, with nothing changed)."""
    path = os.path.join(state_dir, ".lock")
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
    except OSError as err:
        raise StateError(f"{path}: cannot open the state lock: {err.strerror} "
                         f"(errno {err.errno}); nothing was changed") from None
    return fsutil.Lock(path, kind="flock")


def _log(message):
    syslog.openlog("netfence", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(syslog.LOG_INFO, message)

