"""`netfence gc` and `netfence flush`'s record part: collect what logins left behind.

gc finishes interrupted opens and closes (records with a pending "destroy"), closes
sessions whose PAM application is gone, closes `netfence run` trees whose cgroup holds
no task (runtree.close_tree), releases users with no task left in their user cgroups,
removes the empty cgroups of netfence's own hierarchy that no record
uses, removes temp files a killed writer left, and prunes the closed records
(records.prune_closed: older than a day, or over the cap), first: it is closed/'s
only bound, and a step that raises later must not skip it. Each session it closes is
logged as watch logs its closes (event=closed, with the totals when it counted). Then (given the state dir) the
timed sets are reconciled with what is left (timed_apply.reconcile): a closed
session's window keys go, a window that opened meanwhile is filled. Each step goes through sessions,
under the records lock, exactly as the hook's own close would.
forget_all drops every record once the table is gone.

Command line only: never on the hook's path.
"""

import posix
import time

from . import cgroups, fastpath, records, runtree
from .errors import NetfenceError
from .hooklog import field, totals_fields
from .liveness import is_alive
from .plan import DEFAULT_CGROUP_BASE
from .records import Lock
from .sessions import close_session, finish_session, release_user


class GcReport:
    __slots__ = ("sessions", "users", "trees", "cgroups", "temp_files", "pending",
                 "errors", "timed", "pruned")

    def __init__(self):
        self.sessions, self.users, self.cgroups, self.temp_files = 0, 0, 0, 0
        self.trees = 0
        self.pending = 0
        self.errors = []
        self.timed = None       # timed_apply.reconcile's result, when it ran
        self.pruned = 0         # closed records removed (older than a day, over the cap)

    def __str__(self):
        text = (f"gc: {self.sessions} dead sessions closed, {self.users} users released, "
                f"{self.cgroups} empty cgroups removed")
        if self.trees:
            text += f", {self.trees} ended run trees closed"
        if self.pending:
            text += f", {self.pending} interrupted changes finished"
        if self.pruned:
            text += f", {self.pruned} closed records pruned"
        lines = [text]
        if self.timed is not None:
            lines.append(f"gc: timed entries: {self.timed['added']} added, "
                         f"{self.timed['refreshed']} refreshed, {self.timed['removed']} "
                         f"removed")
        return "\n".join(lines + [f"gc: error: {e}" for e in self.errors])


def gc(run_dir, *, cgroup_base=None, timeout_ms=fastpath.DEFAULT_TIMEOUT_MS, mount=None,
       state_dir=None):
    """Finish interrupted opens and closes, close sessions whose PAM application is
    gone, release users with no task left in their user cgroups, remove empty cgroups
    of netfence's own hierarchy that no record uses; with state_dir, reconcile the
    timed sets with the records left and grants.json."""
    report = GcReport()
    records.ensure_dirs(run_dir)
    _prune_history(run_dir, report)       # first: no later step's failure can skip it
    try:
        mount = mount or cgroups.cgroup2_mount()
    except NetfenceError as err:
        mount = None
        report.errors.append(str(err))
    for record in records.list_sessions(run_dir):
        _collect_session(run_dir, record, report, timeout_ms, mount)
    for user in records.list_users(run_dir):
        _collect_user(run_dir, user, report, timeout_ms, mount)
    if mount is not None:
        for tree in records.list_runs(run_dir):
            _collect_tree(run_dir, tree, report, timeout_ms, mount)
    if state_dir is not None:
        _reconcile_timed(run_dir, state_dir, report)
    if mount is not None:
        report.cgroups += _remove_orphan_cgroups(run_dir, mount, cgroup_base)
    if records.stale_temp_files(run_dir):
        with Lock(run_dir):               # writers hold the lock: these are leftovers
            for path in records.stale_temp_files(run_dir):
                records.delete(path)
                report.temp_files += 1
    return report


def _prune_history(run_dir, report):
    """closed/ is bounded by this alone (a close never prunes: records_closed), so it
    runs before anything that may raise, and its own failure is one error line."""
    try:
        report.pruned = records.prune_closed(run_dir, time.time())
    except (NetfenceError, OSError) as err:
        report.errors.append(f"closed records: {err}")


def _reconcile_timed(run_dir, state_dir, report):
    """After the sessions part (closed sessions need no window keys any more). No
    policy applied: nothing to do; a missing table or a refusal is an error (gc
    exits 1), as the table check reports drift."""
    from .timed_apply import NoPolicyApplied, reconcile
    try:
        report.timed = reconcile(run_dir, state_dir)
    except NoPolicyApplied:
        pass
    except NetfenceError as err:
        report.errors.append(f"timed entries: {err}")


def _collect_session(run_dir, record, report, timeout_ms, mount):
    """Finish the session's pending destroy; close it when its application is gone."""
    try:
        if "destroy" in record:
            report.pending += int(finish_session(run_dir, record["key"], timeout_ms))
            if record.get("closing"):
                return
        if is_alive(record):
            return
        result = close_session(run_dir, record["key"], timeout_ms=timeout_ms, mount=mount)
    except NetfenceError as err:
        report.errors.append(f"session {record['key']}: {err}")
        return
    if result["result"] == "closed":
        log_close(record, result)
        report.sessions += 1
        report.users += int(result["released"])
        report.cgroups += int(result["cgroup"] == "removed")


def close_event(record, result):
    """The fields of gc's and watch's close event (event=closed): the session, and the
    totals as the hook's close line has them (hooklog.totals_fields)."""
    return {"event": "closed", "session": record["key"], "uid": record["uid"],
            "released": int(result["released"]), "cgroup": result["cgroup"],
            "path": record.get("cgroup"), **totals_fields(result)}


def log_close(record, result):
    """gc's close event, one line to syslog."""
    from .apply import log_event
    fields = close_event(record, result)
    log_event("gc: " + " ".join(f"{k}={field(v)}" for k, v in fields.items()))


def _collect_tree(run_dir, tree, report, timeout_ms, mount):
    """Close a run tree whose cgroup holds no task (finishing its pending destroy)."""
    try:
        result = runtree.close_tree(run_dir, tree["key"], mount, timeout_ms)
    except NetfenceError as err:
        report.errors.append(f"run tree {tree['key']}: {err}")
        return
    report.trees += result == "closed"
    report.pending += "destroy" in tree


def _collect_user(run_dir, user, report, timeout_ms, mount):
    """Release the user (or finish its interrupted release) when nothing keeps it."""
    try:
        released = release_user(run_dir, user["uid"], timeout_ms=timeout_ms, mount=mount)
    except NetfenceError as err:
        report.errors.append(f"uid {user['uid']}: {err}")
        return
    if "destroy" in user:
        report.pending += int(released)
    else:
        report.users += int(released)


def _remove_orphan_cgroups(run_dir, mount, cgroup_base):
    removed = 0
    with Lock(run_dir):
        sessions = records.list_sessions(run_dir)
        users = records.list_users(run_dir)
        trees = records.list_runs(run_dir)
        bases = ({r.get("base") for r in sessions + trees}
                 | {cgroup_base or DEFAULT_CGROUP_BASE})
        used = {r.get("cgroup") for r in sessions} | {r.get("user_cgroup") for r in sessions}
        used |= {r.get("cgroup") for r in trees}       # a live tree's, even when empty
        for user in users:
            used.update(user.get("user_cgroups", []))
        for base in sorted(b for b in bases if b):
            try:
                user_dirs, session_dirs = cgroups.own_dirs(mount, base)
                tree_dirs = cgroups.run_dirs(mount, base)
            except cgroups.CgroupError:
                continue
            for path in tree_dirs + session_dirs + user_dirs:   # users empty last
                if path not in used and _quiet_remove(mount, path) == "removed":
                    removed += 1
    return removed


def _quiet_remove(mount, path):
    try:
        return cgroups.remove(mount, path)
    except cgroups.CgroupError:
        return "error"


def forget_all(run_dir):
    """Drop every record (after `netfence flush` deleted the table). Returns how many
    session records there were. Cgroups stay; gc removes them once empty."""
    try:
        posix.stat(run_dir)
    except FileNotFoundError:
        return 0
    with Lock(run_dir):
        count = 0
        for kind in records.KINDS:
            for name in records.names(run_dir, kind):
                records.delete(f"{run_dir}/{kind}/{name}")
                count += kind == records.SESSIONS
    return count
