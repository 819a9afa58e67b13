"""What `netfence watch` does when an event arrives: each action is one of gc's own
steps, through the same functions (`collect`, `sessions`, `runtree`, `drift`), so the
watcher never decides anything gc would decide otherwise; it only decides sooner.

Every function returns the key=value fields of the log line of what it did, or None
when there was nothing to do. None of them holds the records lock across a call: the
functions they call take it themselves (and repair_table the state lock as well).
"""

import os
import resource
import selectors
import time

from . import collect, denial_log, denials, nflog, records, runtree, sessions, timed
from . import snapshot as snapshot_files
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
              "cgroups": report.cgroups, "pending": report.pending,
              "pruned": report.pruned}    # closed records past a day (find_by_cgroup's)
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


# ---- the denial log ---------------------------------------------------------------------

IDENTITY_TTL_S = 5.0
IDENTITY_CACHE_MAX = 4096
PACKETS_PER_WAKEUP = 64


class DenialRecorder:
    """Watch's nflog listener: each denied packet emit-P copies becomes one entry of the
    denial store (denial_log), its identity resolved at once from the records (a
    session that closes right after its denial is still found among the closed ones).

    Nothing here may stop watch: no profile that logs, a group another process holds
    (NflogBusy), a store it cannot write (full disk, untrusted directory) are each a
    warning line, and the loop goes on; sync() tries the group again at every check
    and gc. Losses are counted: an nflog overrun (the kernel dropped copies) and
    entries that could not be written."""

    def __init__(self, paths, selector, log):
        self.paths, self.selector, self.log = paths, selector, log
        self.socket, self.group, self.failed_group = None, None, None
        self.store = denial_log.DenialLog(paths.state_dir)
        self.snapshot, self.snapshot_stamp = None, None
        self.counts = {"denials": 0, "denials_lost": 0, "overruns": 0}
        self.said = set()
        self.identities = {}              # (cgroup id low 32 bits, uid) -> (until, record)
        self.drained = None               # when a read last emptied the socket (epoch)

    def sync(self):
        """Listen on the applied snapshot's nflog group when one of its profiles logs,
        and on no group otherwise."""
        wanted = log_group(self._snapshot())
        if wanted is not None and wanted in (self.group, self.failed_group):
            return
        self.close()
        if wanted is None:               # a normal policy: said once, not a warning
            if "no-logging" not in self.said:
                self.said.add("no-logging")
                self.log(event="nflog", group="-", reason="no profile logs denials")
            return
        try:
            self.drained = time.time()    # every copy read from it is sent after this
            self.socket = nflog.NflogSocket(wanted)
        except (NetfenceError, OSError) as err:
            self.failed_group = wanted    # tried again when the snapshot changes
            self._warn(f"bind-{wanted}", f"denial log: {err}")
            return
        self.group, self.failed_group = wanted, None
        self.said.discard("no-logging")
        self.selector.register(self.socket, selectors.EVENT_READ, self.on_readable)
        self.log(event="nflog", group=wanted)

    def retry(self):
        """At gc: a group that was busy may be free now."""
        self.failed_group = None
        self.sync()

    def close(self):
        if self.socket is not None:
            self.selector.unregister(self.socket)
            self.socket.close()
        self.socket, self.group = None, None

    def on_readable(self):
        # at most PACKETS_PER_WAKEUP copies, then back to the loop: the rest wait in
        # the socket (it stays readable), and a table check or a close is not held
        # behind a burst of denials
        sent_after, before_read = self.drained, time.time()
        packets = self.socket.read(PACKETS_PER_WAKEUP)
        if len(packets) < PACKETS_PER_WAKEUP:
            self.drained = before_read    # emptied after this: later copies are newer
        overruns = self.socket.lost_bursts - self.counts["overruns"]
        if overruns:
            self.counts["overruns"] = self.socket.lost_bursts
            self.log(event="warning", warning="nflog overrun: denials were lost",
                     overruns=self.counts["overruns"])
        snapshot = self._snapshot() or {}
        for packet in packets:
            self._record(packet, snapshot, sent_after)

    def invalidate(self):
        """A session or tree record came or went (watch's inotify on sessions/ and
        runs/): what a cgroup resolves to may have changed (a nested login opened in
        it, or its session closed), so nothing remembered is used again."""
        self.identities.clear()

    def _record(self, packet, snapshot, sent_after=None):
        parsed = denials.parse_prefix(packet["prefix"])
        record = None
        at = denials.copy_time(packet["time"])   # the entry's time and the lookup's
        if parsed is not None and parsed[1]:
            # now, not later: a session that closes right after its denial is found
            # among the closed records, kept a day (records.prune_closed at gc)
            # no kernel timestamp (egress): `at` is when it was read, and watch's loop
            # may have been busy for seconds; it was sent after the last drain
            record = self._record_of(denials.mark_of(packet), at, packet["uid"],
                                     None if at == packet["time"] else sent_after)
        # no NSS lookup here: a slow backend (LDAP down) would hold watch's one loop,
        # repairs included; `netfence log` names a uid no record names when it shows it
        entry = denials.build_entry(packet, snapshot, record, at=at)
        if entry is None:
            return
        try:
            self.store.append(entry)
            self.counts["denials"] += 1
        except (NetfenceError, OSError) as err:
            self.counts["denials_lost"] += 1
            self.store.close()            # reopened (and checked again) by the next one
            self._warn(f"store-{type(err).__name__}", f"denial log: {err} "
                       "(entries are lost until it can be written)")

    def _record_of(self, low32, at, uid, sent_after=None):
        """find_by_cgroup, remembered for IDENTITY_TTL_S by (cgroup, packet uid): it
        reads every live and closed record (26 ms with the 4096 closed records of the
        cap, measured), and a flood comes from one cgroup and one uid (a cgroup id is
        not reused within a boot; what a shared cgroup resolves to is per uid). Emptied
        whenever a record comes or goes (invalidate): a nested login opened within the
        TTL is never hidden behind its outer session."""
        now = time.monotonic()
        hit = self.identities.get((low32, uid))
        if hit is not None and hit[0] > now:
            return hit[1]
        if len(self.identities) >= IDENTITY_CACHE_MAX:
            self.identities.clear()
        record = records.find_by_cgroup(self.paths.run_dir, low32, at=at, uid=uid,
                                        sent_after=sent_after)
        self.identities[(low32, uid)] = (now + IDENTITY_TTL_S, record)
        return record

    def _snapshot(self):
        """The applied snapshot, read again only when compiled.json changed."""
        path = f"{self.paths.state_dir}/{snapshot_files.COMPILED}"
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp != self.snapshot_stamp:
            try:
                self.snapshot = read_snapshot(self.paths.state_dir)
            except NetfenceError:
                self.snapshot = None
            self.snapshot_stamp = stamp
        return self.snapshot

    def _warn(self, condition, message):
        if condition not in self.said:
            self.said.add(condition)
            self.log(event="warning", warning=message)


def log_group(snapshot):
    """The nflog group the snapshot's table logs to (its emit-P rules), or None."""
    for rule in (snapshot or {}).get("table", {}).get("rules", []):
        for expr in rule["exprs"]:
            if expr[0] == "nflog":
                return expr[2]
    return None


def read_record(run_dir, kind, name):
    """The record kind ("session", "user", "tree") name, None if gone or unreadable."""
    try:
        if kind == "session":
            return records.read_session(run_dir, name)
        if kind == "user":
            return records.read_user(run_dir, int(name))
        return records.read(records.run_path(run_dir, name))
    except (NetfenceError, ValueError):
        return None


def cgroups_of(kind, record):
    """The cgroups whose emptying ends the record: a session's and a tree's own
    cgroup, a user's user cgroups (the ones whose tasks keep its entries)."""
    if kind == "user":
        return sorted(set(record.get("live_cgroups", [])))
    return [record["cgroup"]] if record.get("cgroup") else []
