"""reload and flush: the admin-side writes to the kernel and to the snapshot.

A reload compiles first; only a policy that compiles is sent, in one transaction that
replaces the whole table and carries the live set elements over. The transaction is
tied to the ruleset generation read before: if a login changed the ruleset meanwhile,
the kernel refuses it (ERESTART) and we read again and retry.
"""

import fcntl
import os
import syslog
from contextlib import contextmanager
from dataclasses import dataclass

from . import compiler, ir, snapshot
from .errors import GenerationChanged
from .policy import load_policy
from .records import live_elements, union

RETRIES = 5


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


def compile_from(paths, check_ownership=True):
    policy = load_policy(paths.config_dir, check_ownership=check_ownership)
    return policy, compiler.compile_policy(policy)


def reload(paths, check_ownership=True):
    policy, snap = compile_from(paths, check_ownership)
    table = ir.TableDef.from_json(snap["table"])
    with _state_lock(paths.state_dir):
        kept, dropped = _replace_with_retry(table, paths.run_dir)
        snapshot.write_snapshot(paths.state_dir, snap)
    for set_name, count in sorted(dropped.items()):
        _log(f"event=reload-drop set={set_name} elements={count} reason=profile-removed")
    result = ReloadResult(snap["policy_id"], len(policy.profiles), len(policy.rules),
                          kept, dropped)
    _log(f"event=reload policy={result.policy_id} profiles={result.profiles} "
         f"rules={result.rules} kept={kept} dropped={sum(dropped.values())}")
    return result


def _replace_with_retry(table, run_dir):
    from .nftnl import Ruleset
    wanted = {s.name for s in table.sets}
    for attempt in range(RETRIES):
        with Ruleset() as ruleset:
            generation = ruleset.generation()
            live = ruleset.read_elements() if ruleset.table_exists() else {}
            # Plus what the session records say is live: restores it after someone
            # else flushed the ruleset (threat model #12).
            live = union([live, live_elements(run_dir)])
            kept = {name: keys for name, keys in live.items() if name in wanted}
            dropped = {name: len(keys) for name, keys in live.items()
                       if name not in wanted and keys}
            try:
                ruleset.replace_table(table, kept, genid=generation)
            except GenerationChanged:
                if attempt == RETRIES - 1:
                    raise
                continue
            # Counted as the admin thinks of them: guard sets mirror the others.
            return sum(len(keys) for name, keys in kept.items()
                       if name not in compiler.GUARDS.values()), dropped
    raise AssertionError("unreachable")


def flush(paths):
    """Remove the table and the live records; leave logins unrestricted until reload.

    The hook keeps running on every login, so instead of deleting the snapshot (which
    would make logins follow on_error and, by default, refuse them) an empty one
    with no rules is written.
    """
    from .nftnl import Ruleset
    from .sessions import forget_all
    with _state_lock(paths.state_dir):
        with Ruleset() as ruleset:
            existed = ruleset.delete_table()
        forgotten = forget_all(paths.run_dir)
        empty = compiler.compile_policy(_empty_policy(snapshot.read_snapshot(paths.state_dir)))
        empty["flushed"] = True
        snapshot.write_snapshot(paths.state_dir, empty)
    _log(f"event=flush table_existed={int(existed)} sessions={forgotten}")
    return existed, forgotten


def _empty_policy(applied):
    """No rules; the settings (cgroup_base above all, which gc needs) stay as applied."""
    from .model import Policy, Settings
    settings = Settings(**applied["settings"]) if applied else Settings()
    return Policy(settings, {}, ())


@contextmanager
def _state_lock(state_dir):
    """Serialises reload and flush (logins never take this lock)."""
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    fd = os.open(os.path.join(state_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _log(message):
    syslog.openlog("netfence", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(syslog.LOG_INFO, message)

