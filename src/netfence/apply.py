"""reload and flush: the admin-side writes to the kernel and to the snapshot (gc's
check and repair of the table are in drift.py).

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
from dataclasses import dataclass

from . import compiler, counters, fsutil, ir, records, resolve, setkinds, snapshot
from .errors import GenerationChanged, KernelError, NetfenceError, PolicyError, StateError
from .policy import load_policy
from .timed_apply import desired_timeouts

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
    unresolved: tuple = ()    # names in always rules that NSS does not know (skipped)


def compile_from(paths, check_ownership=True, nss=None):
    """The policy in the config dir, and its snapshot. Refuses an always rule's group
    with gid 0 (resolve.root_group_problems): which gid a name has is NSS's answer,
    so check and reload ask it, as they report every other policy problem."""
    policy, compiled = _compile(paths, check_ownership, nss)
    return policy, compiled.snapshot


def _compile(paths, check_ownership=True, nss=None):
    """compile_from's policy and its compiler.Compiled (the snapshot with its table)."""
    policy = load_policy(paths.config_dir, check_ownership=check_ownership)
    problems = resolve.root_group_problems(policy.rules, nss)
    if problems:
        raise PolicyError(problems)
    return policy, compiler.compile_snapshot(policy)


def reload(paths):
    from .nftnl import PreparedTable
    policy, compiled = _compile(paths)
    snap = compiled.snapshot
    # The always rules' ranges, from NSS now: sent with the table, kept in compiled.json
    # (after the policy id: the same policy resolved later is the same policy).
    snap["resolved"] = resolve.resolve(snap["always"])
    prepared = PreparedTable(compiled.table, new_marker(snap["policy_id"]),
                             ranges=snap["resolved"]["sets"])
    with state_lock(paths.state_dir):
        try:
            previous = snapshot.read_raw(paths.state_dir)  # parsed only for a roll back
        except StateError:
            previous = None           # unreadable: this reload is what replaces it
        staged = snapshot.stage(paths.state_dir, snap, {"table": compiled.table_text})
        try:
            outcome = _replace(prepared, paths.run_dir, paths.state_dir)
        except BaseException:
            staged.discard()
            raise
        try:
            staged.promote()
        except snapshot.PromoteError as err:
            raise StateError(f"{err}; {_roll_back(previous, err.renamed, paths)}") from None
    kept, dropped, attempts, held = outcome
    for set_name, count in sorted(dropped.items()):
        log_event(f"event=reload-drop set={set_name} elements={count} reason=profile-removed")
    result = ReloadResult(snap["policy_id"], len(policy.profiles), len(policy.rules),
                          kept, dropped, attempts, round(held * 1000, 3),
                          tuple(snap["resolved"]["unknown"]))
    for name in result.unresolved:
        log_event(f"event=nss-unresolved name={name} source=reload")
    log_event(f"event=reload policy={result.policy_id} profiles={result.profiles} "
         f"rules={result.rules} kept={kept} dropped={sum(dropped.values())} "
         f"attempts={attempts} lock_held_ms={result.lock_held_ms}")
    return result


def new_marker(policy_id):
    """The table's userdata: the policy it was built from, and this transaction."""
    return f"{policy_id} {secrets.token_hex(6)}"


def marker_policy(marker):
    return marker.split(" ", 1)[0] if marker else None


def _replace(prepared, run_dir, state_dir, restoring=False):
    """Send the table with the records' elements (and the timed elements the records,
    grants.json and the clock give): once optimistically, then under the records
    lock. restoring: gc's restore (see timed_apply.desired_timeouts). Returns (kept,
    dropped, attempts, seconds the lock was held)."""
    try:
        return _attempt(prepared, run_dir, state_dir, restoring) + (1, 0.0)
    except (GenerationChanged, _NeedsLock):
        pass
    records.ensure_dirs(run_dir)
    sockets = []        # closed after the lock: a close after a delete waits 8-16 ms
    try:
        with records.Lock(run_dir):
            started = time.monotonic()
            for attempt in range(RETRIES):
                try:
                    kept, dropped = _attempt(prepared, run_dir, state_dir, restoring, sockets)
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
            close_soon(ruleset)
    raise AssertionError("unreachable")


class _NeedsLock(Exception):
    """The lock-free attempt cannot be trusted: go straight to the locked one."""


def _attempt(prepared, run_dir, state_dir, restoring=False, sockets=None):
    """One transaction. sockets: None for the lock-free attempt; under the records
    lock, a list to leave the connection in (the caller closes it after the lock)."""
    from .nftnl import Ruleset
    wanted = {s.name for s in prepared.table.sets}
    ruleset = Ruleset()
    try:
        generation = ruleset.generation()
        unsettled = []
        read = records.read_live(run_dir)        # once: elements and timed sets
        live = records.live_elements(run_dir, unsettled, live=read)
        if unsettled and sockets is None:
            # An interrupted close's elements may still be in the kernel: a login
            # that adds one again changes nothing, so the generation would not tell
            # us about it. Only under the records lock can no login do that.
            raise _NeedsLock()
        kept = {name: keys for name, keys in live.items() if name in wanted}
        dropped = {name: len(keys) for name, keys in live.items()
                   if name not in wanted and keys}
        # Timed elements are computed, never recorded: each goes into the new table
        # with the time it has left (not a fresh timeout, not permanent).
        timed = desired_timeouts(run_dir, state_dir, prepared.table,
                                 without_grants=restoring, live=read)
        ruleset.replace_table(prepared.table, kept, genid=generation, prepared=prepared,
                              timed=timed, counts=carried_counters(prepared.table))
    finally:
        if sockets is None:
            close_soon(ruleset)
        else:
            sockets.append(ruleset)
    # Counted as the admin thinks of them: guard sets mirror the others.
    return sum(len(keys) for name, keys in kept.items()
               if name not in setkinds.guards().values()), dropped


def close_soon(ruleset):
    """Close a connection in a thread of its own. After a transaction that replaced the
    table, the kernel's close of the socket waits 8-16 ms (nft pays it at exit too):
    time in which this thread promotes the snapshot and logs. The interpreter waits
    for the thread before it exits."""
    import threading
    threading.Thread(target=ruleset.close, name="netfence-close").start()


def carried_counters(table):
    """The counters of the live table's counted sets that `table` has too ({set: {hex
    key: (packets, bytes)}}), read in the attempt that replaces it: each kept element
    starts from its old counter. What the kernel counts between this read and the
    commit (a few ms) is lost; a failure to read loses the totals, never the reload
    (accounting must not stand in the way of a policy change), and is logged."""
    names = [s.name for s in table.sets if s.counter]
    if not names:
        return {}
    try:
        return counters.read_counters(sets=names, table=table.name)
    except KernelError as err:
        log_event(f"event=reload-counters-lost error={str(err)!r}")
        return {}


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
            restore_table(previous, paths.run_dir, paths.state_dir)
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


def restore_table(applied, run_dir, state_dir):
    """Send the applied snapshot's table with the records' elements (gc's repair).
    Same transaction as reload; returns the number of live elements restored."""
    from .nftnl import PreparedTable
    table = ir.TableDef.from_json(applied["table"])
    prepared = PreparedTable(table, new_marker(applied["policy_id"]),
                             ranges=(applied.get("resolved") or {}).get("sets"))
    kept, _dropped, _attempts, _held = _replace(prepared, run_dir, state_dir,
                                                restoring=True)
    return kept


def flush(paths):
    """Remove the table and the live records; leave logins unrestricted until reload.

    The hook keeps running on every login, so instead of deleting the snapshot (which
    would make logins follow on_error and, by default, refuse them) an empty one
    with no rules is written (staged first: a state dir that cannot take it fails
    before the table is touched).
    """
    from .nftnl import Ruleset
    from .collect import forget_all
    with state_lock(paths.state_dir):
        empty = compiler.compile_policy(_empty_policy(_applied_settings(paths.state_dir)))
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
    log_event(f"event=flush table_existed={int(existed)} sessions={forgotten}")
    return existed, forgotten


def _applied_settings(state_dir):
    """The applied snapshot's settings, or None. flush is the way out in an emergency:
    a damaged compiled.json, or one of another format (an upgrade in between), must not
    stop it; the defaults then stand, and the log says so."""
    try:
        applied = snapshot.read_snapshot(state_dir)
    except StateError as err:
        log_event(f"event=flush warning={str(err)!r} settings=defaults")
        return None
    return applied["settings"] if applied else None


def _empty_policy(settings):
    """No rules; the settings (cgroup_base above all, which gc needs) stay as applied."""
    from .model import Policy, Settings
    return Policy(Settings(**settings) if settings else Settings(), {}, ())


def state_lock(state_dir):
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


def log_event(message):
    """One line to syslog (authpriv, info): reload, flush and gc's events."""
    syslog.openlog("netfence", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(syslog.LOG_INFO, message)

