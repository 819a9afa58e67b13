"""What `netfence watch` does when an event arrives: each action is one of gc's own
steps, through the same functions (`collect`, `sessions`, `runtree`, `drift`), so the
watcher never decides anything gc would decide otherwise; it only decides sooner.

Every function returns the key=value fields of the log line of what it did, or None
when there was nothing to do. None of them holds the records lock across a call: the
functions they call take it themselves (and repair_table the state lock as well).
"""

import resource
import time

from . import collect, records, runtree, sessions, timed
from .drift import check_steadily, repair_table
from .errors import NetfenceError
from .fsutil import read_text
from .liveness import is_alive, parse_populated
from .snapshot import read_snapshot


def populated(mount, path):
    """Whether a task is left in the cgroup at path (a cgroup that is gone has none;
    one whose cgroup.events cannot be read counts as populated: releasing on a guess
    would be the unsafe mistake)."""
    try:
        return parse_populated(read_text(f"{mount}{path}/cgroup.events"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True


def close_if_dead(run_dir, key, mount):
    """gc's step for one session: finish its pending destroy; close it when its PAM
    application is gone (sessions.close_session, under the records lock)."""
    record = records.read_session(run_dir, key)
    if record is None:
        return None
    if "destroy" in record:
        sessions.finish_session(run_dir, key)
        if record.get("closing"):
            return {"event": "finished", "session": key}
    if is_alive(record):
        return None
    result = sessions.close_session(run_dir, key, mount=mount)
    if result["result"] != "closed":
        return None
    return collect.close_event(record, result)


def release_if_idle(run_dir, uid, mount):
    """gc's step for one user: release its user-scope entries once no live session
    and no task in its user cgroups keeps them."""
    if not sessions.release_user(run_dir, uid, mount=mount):
        return None
    return {"event": "released", "uid": uid}


def close_tree_if_empty(run_dir, key, mount):
    """gc's step for one `netfence run` tree: close it once its cgroup is empty."""
    if runtree.close_tree(run_dir, key, mount) != "closed":
        return None
    return {"event": "tree-closed", "tree": key}


def check_and_repair(paths):
    """Compare the kernel with the applied snapshot and the records (read only,
    cheap); only when they differ, repair as gc does. Returns (fields, repaired)."""
    started = time.monotonic()
    applied = read_snapshot(paths.state_dir)
    if not applied:
        return None, False
    drift = check_steadily(applied, paths)
    if drift.ok:
        return None, False
    # no NSS here: a stuck directory must not hold the state lock and every repair
    # after it; the periodic gc widens the always rules
    repair = repair_table(paths, widen=False)
    # "none": the difference was a login or logout between its record and its batch
    # (repair_table compares again under the records lock)
    fields = {"event": "repair" if repair.action != "none" else "check-raced",
              "action": repair.action,
              "problems": "; ".join(drift.problems()) or "-",
              "ms": round((time.monotonic() - started) * 1000, 1)}
    if repair.error:
        fields["error"] = repair.error
    return fields, repair.action in ("restored", "elements")


def full_gc(paths):
    """What `netfence gc` does (cli.cmd_gc): the table first, then the records, then
    the timed sets. Returns (the fields of its log line, the next window change)."""
    fields = {"event": "gc"}
    try:
        repair = repair_table(paths)
        fields["table"] = repair.action
        if repair.action != "none":
            fields["problems"] = "; ".join(repair.drift.problems()) or "-"
        if repair.error:
            fields["table_error"] = repair.error
    except NetfenceError as err:
        fields["table"], fields["table_error"] = "failed", str(err)
    counts, next_change = _collect(paths)
    fields.update(counts)
    return fields, next_change


def collect_records(paths):
    """gc's records part (collect.gc, timed sets reconciled after it): dead sessions,
    idle users, ended trees, orphan cgroups. The fields of its log line, None when
    it did nothing."""
    counts, _next_change = _collect(paths)
    return {"event": "collect", **counts} if any(counts.values()) else None


def _collect(paths):
    try:
        base = ((read_snapshot(paths.state_dir) or {}).get("settings") or {}).get(
            "cgroup_base")
    except NetfenceError:
        base = None
    report = collect.gc(paths.run_dir, cgroup_base=base, state_dir=paths.state_dir)
    counts = {"sessions": report.sessions, "users": report.users, "trees": report.trees,
              "cgroups": report.cgroups, "pending": report.pending}
    timed = report.timed or {}
    counts.update({f"timed_{name}": _count(timed.get(name))
                   for name in ("added", "refreshed", "removed") if timed.get(name)})
    if report.errors:
        counts["errors"] = "; ".join(report.errors)
    return counts, timed.get("next_change")


def reconcile_windows(paths):
    """timed_apply.reconcile (time windows, grants): (fields, next change as an
    epoch or None). No policy applied: nothing to do."""
    from . import timed_apply
    try:
        result = timed_apply.reconcile(paths.run_dir, paths.state_dir)
    except timed_apply.NoPolicyApplied:
        return None, None
    counts = {name: _count(result.get(name)) for name in ("added", "refreshed", "removed")}
    fields = {"event": "windows", **counts} if any(counts.values()) else None
    return fields, result.get("next_change")


def _count(value):
    """A count, whether the result gives a number or the elements themselves."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return sum(len(keys) for keys in value.values())
    return len(value or ())


def user_grant_for(state_dir, uid):
    """Whether a grant for user uid is in force: only those name each login's cgroup
    (the ingress keys of gucg-P), so only their logins need a reconcile. An untrusted
    grants.json: yes (reconcile reports it)."""
    from . import grants
    try:
        return any(g["kind"] == "grant" and "user" in g and g["uid"] == uid
                   for g in grants.active(state_dir, time.time()))
    except NetfenceError:
        return True


def next_opening(record):
    """The next opening of one of record's windows (an epoch, or None), computed from
    this record alone, without the records lock."""
    return timed.next_change([record], time.time())


FD_RESERVE = 32    # descriptors kept for everything but pidfds (netlink, files, inotify)


def raise_fd_limit():
    """Raise the soft RLIMIT_NOFILE to the hard one (one pidfd per live session; the
    default soft 1024 ends near 1,000 sessions) and return how many pidfds may be
    open while FD_RESERVE descriptors stay free for repairs and record reads."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass                          # kept: the cap below follows what we have
    return max(0, soft - FD_RESERVE)
