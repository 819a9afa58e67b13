"""Open, close and garbage-collect sessions: records + cgroup + one netlink batch.

Shared by the hook (open_session, close_session) and the command line (gc, forget_all).
Every change happens under the run_dir lock (records.Lock), and the records are
written before the kernel changes ("intent first"): whoever reads the ruleset
generation and then the records (reload, gc) sees every change the kernel has had or
may still get, and no interleaving leaves an element without a record.

  open:  cgroup -> records (the new elements) -> one add batch.
         On failure: the records are put back, keeping what the batch may have added
         as a pending "destroy"; one destroy batch; the pending list is cleared; the
         cgroup is put back.
  close: records first (the session marked closing, with the elements to destroy;
         the user record updated, or deleted when the user is released) -> leave the
         cgroup, one destroy batch, rmdir -> the session record deleted.

A record left with a pending "destroy" (a crash, a refused batch, the hook's deadline)
is finished by the next close of that session or by gc: it destroys the pending
elements minus those a live record needs.

What may be destroyed is decided from the records and the kernel's accounting:
  - session elements: those of the closing session, minus those still needed by
    another live session in the same cgroup (a nested login shares its cgroup);
  - user elements: all of the uid's, but only when the uid has no other live session
    and no task left in its user cgroups (liveness.has_processes: no /proc scan).
A session is live while its PAM application (ppid with the recorded start time) is.
"""

import errno
import posix
import sys
import time

from . import cgroups, fastpath, records
from .errors import StateError
from .liveness import has_processes, is_alive, session_key
from .records import Lock, merge_into, subtract, union

UNDO_TIMEOUT_MS = 500
__all__ = ["open_session", "close_session", "finish_session", "release_user", "gc",
           "forget_all", "session_key"]


# ---- open -------------------------------------------------------------------------

def elements_for(profiles, user_profiles, session_profiles, uid, cgroup, guards=None):
    """(user elements, session elements) of one login, as {set: [hex key]}.

    guards: the login part's "guards" ({"uid_set", "ucg_set", "scg_set"}): every key
    that goes into a profile's set goes into the matching guard set too, which the
    base chains test first, so that unrestricted traffic costs two lookups however
    many profiles there are. Being ordinary elements of the login, they are shared
    and released exactly like the profile elements.
    """
    uid_key = uid.to_bytes(4, sys.byteorder).hex()
    user, session = {}, {}

    def add(target, profile, field, key):
        merge_into(target, {profile[field]: [key]})
        if guards:
            merge_into(target, {guards[field]: [key]})

    for name in user_profiles:
        profile = profiles[name]
        if profile["egress"]:
            add(user, profile, "uid_set", uid_key)
        if profile["ingress"]:
            add(user, profile, "ucg_set", _cg_key(cgroup["user_id"]))
    for name in session_profiles:
        profile = profiles[name]
        if profile["egress"] or profile["ingress"]:
            add(session, profile, "scg_set", _cg_key(cgroup["id"]))
    return user, session


def _cg_key(cgroup_id):
    return cgroup_id.to_bytes(8, sys.byteorder).hex()


def open_session(run_dir, login, info, user_profiles, session_profiles, *, ppid,
                 timeout_ms=fastpath.DEFAULT_TIMEOUT_MS, mount=None):
    """Record and apply one login. info: user, uid, service, rhost, tty.

    Every login that gets a profile gets a session cgroup, user scope included: the
    user cgroup above it is what keeps user-scope elements alive after the logout
    (liveness.has_processes). Returns the session record. Raises (NetfenceError or
    the hook's timeout) with everything put back as it was.
    """
    profiles = login["profiles"]
    base = login.get("settings", {}).get("cgroup_base", "netfence")
    uid = info["uid"]
    key, start = session_key(ppid)
    records.ensure_dirs(run_dir)
    with Lock(run_dir):
        mount = mount or cgroups.cgroup2_mount()
        _finish_pending(run_dir, records.session_path(run_dir, key), timeout_ms)
        _finish_pending(run_dir, records.user_path(run_dir, uid), timeout_ms)
        cgroup = cgroups.open_session_cgroup(mount, base, uid, key, ppid)
        undo = _Undo(run_dir, key, cgroup, mount, ppid)
        try:
            user_elements, session_elements = elements_for(
                profiles, user_profiles, session_profiles, uid, cgroup,
                login.get("guards"))
            record = {
                "key": key, "user": info["user"], "uid": uid, "service": info["service"],
                "rhost": info["rhost"], "tty": info["tty"], "ppid": ppid,
                "starttime": start, "policy_id": login.get("policy_id", ""),
                "user_profiles": list(user_profiles),
                "session_profiles": list(session_profiles),
                "cgroup": cgroup["path"], "cgroup_id": cgroup["id"],
                "user_cgroup": cgroup["user_path"], "user_cgroup_id": cgroup["user_id"],
                "created": cgroup["created"], "origin": cgroup["origin"],
                "base": base, "session_elements": session_elements,
                "user_elements": user_elements, "opened_at": time.time(),
            }
            undo.added = _write_open(run_dir, record, undo)
            undo.sent = True
            fastpath.add_elements(login.get("templates"), merge_into(
                {s: list(k) for s, k in user_elements.items()}, session_elements),
                timeout_ms)
        except BaseException as err:
            undo.run(err)
            raise
    return record


def _write_open(run_dir, record, undo):
    """Write the records (intent: before the batch, so that a reload or gc reading
    them sees what the kernel is about to hold). Returns the elements this login adds
    that no live record had yet."""
    key, uid, cgroup_id = record["key"], record["uid"], record["cgroup_id"]
    session_file = records.session_path(run_dir, key)
    user_file = records.user_path(run_dir, uid)
    previous = records.read(session_file)           # a second open by the same app
    user = records.read(user_file)
    refs = records.read_refs(run_dir, cgroup_id)
    already = union([user["elements"] if user else {}] + [
        other.get("session_elements", {}) for other in _live_sessions(run_dir, refs, key)])
    if previous is not None:
        merge_into(already, previous.get("session_elements", {}))
        merge_into(record["session_elements"], previous.get("session_elements", {}))
        merge_into(record["user_elements"], previous.get("user_elements", {}))
        if previous.get("cgroup_id") == cgroup_id:    # keep who made the cgroup
            record["created"], record["origin"] = previous["created"], previous["origin"]

    if cgroup_id and key not in refs:
        undo.saved(records.refs_path(run_dir, cgroup_id))
        records.write_refs(run_dir, cgroup_id, refs + [key])
    undo.saved(session_file, previous)
    undo.record = record
    records.write(session_file, record)
    undo.saved(user_file, user)
    records.write(user_file, _user_with(user, record))
    wanted = union([record["user_elements"], record["session_elements"]])
    return subtract(wanted, already)


def _user_with(user, record):
    """The user record once this session's login is added to it."""
    user = dict(user or {"uid": record["uid"], "user": record["user"], "elements": {},
                         "sessions": [], "user_cgroups": [], "live_cgroups": []})
    user["elements"] = union([user["elements"], record["user_elements"]])
    if record["key"] not in user["sessions"]:
        user["sessions"] = user["sessions"] + [record["key"]]
    own = record["user_cgroup"]
    if record["created"] and own not in user.get("user_cgroups", []):
        user["user_cgroups"] = user.get("user_cgroups", []) + [own]
    if own not in user.get("live_cgroups", []):
        user["live_cgroups"] = user.get("live_cgroups", []) + [own]
    user["updated_at"] = record["opened_at"]
    return user


class _Undo:
    """Puts records, cgroup and (when the batch may have gone through) the kernel back,
    records first: the elements to take back are kept as the session record's pending
    "destroy" until the destroy batch has gone through."""

    _UNREAD = object()

    def __init__(self, run_dir, key, cgroup, mount, ppid):
        self.run_dir, self.key = run_dir, key
        self.cgroup, self.mount, self.ppid = cgroup, mount, ppid
        self.added, self.sent, self.record = {}, False, None
        self.restore = []                 # (path, content before, None = absent)

    def saved(self, path, content=_UNREAD):
        if content is self._UNREAD:
            content = records.read(path)
        self.restore.append((path, content))

    def run(self, err):
        pending = self.added if self.sent and not _known_refused(err) else {}
        session_file = records.session_path(self.run_dir, self.key)
        try:
            if pending:     # intent first: what to take back, before any record goes
                before = dict(self.restore).get(session_file)
                records.write(session_file, dict(before or dict(self.record, closing=True),
                                                 destroy=pending))
            for path, content in reversed(self.restore):
                if path == session_file and pending:
                    continue
                if content is None:
                    records.delete(path)
                else:
                    records.write(path, content)
            if pending:     # outcome unknown: take back what no live record needs
                try:
                    _finish_pending(self.run_dir, session_file, UNDO_TIMEOUT_MS)
                except Exception:                 # noqa: BLE001 - gc finishes it
                    return
        finally:
            cgroups.undo_open(self.mount, self.cgroup, self.ppid)


def _known_refused(err):
    """True when the kernel answered "no" (nothing applied), not when we stopped
    waiting for its answer."""
    from .errors import KernelError
    return isinstance(err, KernelError) and err.errno not in (errno.EINTR, errno.ETIMEDOUT)


def _clear_pending(path, record):
    """The pending elements are gone: drop a closing record, or the pending list."""
    if record is None:
        return
    if record.get("closing"):
        records.delete(path)
    else:
        records.write(path, {k: v for k, v in record.items() if k != "destroy"})


def _finish_pending(run_dir, path, timeout_ms, record=None):
    """Finish what an interrupted writer left in the record at path: destroy its
    pending elements that no live record needs, then clear them. Lock held.
    Returns the elements destroyed, or None when nothing was pending."""
    record = record or _read_quiet(path)
    if record is None or "destroy" not in record:
        return None
    destroy = subtract(record["destroy"], records.live_elements(run_dir))
    fastpath.destroy_elements(destroy, timeout_ms)
    _clear_pending(path, record)
    return destroy


def _read_quiet(path):
    try:
        return records.read(path)
    except StateError:
        return None


# ---- close ------------------------------------------------------------------------

def close_session(run_dir, key, *, pids=(), timeout_ms=fastpath.DEFAULT_TIMEOUT_MS,
                  mount=None, detach=False):
    """Remove what the session KEY added. Safe to repeat: an absent record is success.

    pids: the processes of the closing login itself (the PAM application and the
    hook): moved out of the session cgroup before it is removed, and not counted as
    the user's processes. detach: see fastpath.destroy_elements (the hook sets it).
    Returns {"result": "absent"|"closed", "record", "destroyed",
    "released", "cgroup", "gone_sets"}.
    """
    session_file = records.session_path(run_dir, key)
    with Lock(run_dir):
        _finish_pending(run_dir, session_file, timeout_ms)   # an earlier one stopped
        record = records.read(session_file)
        if record is None:
            return {"result": "absent"}
        mount = mount or cgroups.cgroup2_mount()
        plan = _close_plan(run_dir, record, pids, mount)
        _write_closing(run_dir, record, plan)
        if plan["ours"]:
            # Leave first: the batch may fork a child (detach), which must not be
            # born inside the cgroup we are about to remove. Only the PAM application
            # goes back where it came from; the hook (and its launcher) go to the root:
            # the origin may be a cgroup the user controls and has frozen meanwhile,
            # which would stop the hook while it holds the records lock.
            cgroups.leave(mount, record.get("origin"), pids[:1])
            cgroups.leave(mount, "/", pids[1:])
        gone = fastpath.destroy_elements(plan["destroy"], timeout_ms, detach=detach)
        cgroup = cgroups.remove(mount, record["cgroup"]) if plan["ours"] else "kept"
        if plan["release"]:
            _remove_user_cgroups(plan["user"], mount)
        records.delete(session_file)
    return {"result": "closed", "record": record, "destroyed": plan["destroy"],
            "released": plan["release"], "cgroup": cgroup, "gone_sets": gone}


def finish_session(run_dir, key, timeout_ms=fastpath.DEFAULT_TIMEOUT_MS):
    """Finish an open or close of session KEY that stopped half-way (its record's
    pending "destroy"); the session itself is left as it is. True when there was one."""
    with Lock(run_dir):
        return _finish_pending(run_dir, records.session_path(run_dir, key),
                               timeout_ms) is not None


def _close_plan(run_dir, record, pids, mount):
    """What closing this session removes, decided from the records and the kernel's
    accounting of the user's processes."""
    key = record["key"]
    sharing = _live_sessions(run_dir, records.read_refs(run_dir, record["cgroup_id"]), key)
    keep = union([other.get("session_elements", {}) for other in sharing])
    destroy = subtract(record.get("session_elements", {}), keep)
    user = records.read_user(run_dir, record["uid"])
    release = (user is not None
               and not _live_sessions(run_dir, user["sessions"], key)
               and not _user_busy(user, mount, pids))
    if release:
        merge_into(destroy, user["elements"])
        destroy = subtract(destroy, _held_by_others(run_dir, user))
    ours = bool(record.get("created") and record.get("cgroup") and not sharing)
    return {"destroy": destroy, "release": release, "user": user, "ours": ours}


def _held_by_others(run_dir, user):
    """Elements other users' records hold that this user's may share: su to another
    user inside a logind session shares the caller's user slice, and so its user
    cgroup key. Only logind slices are shared; netfence's own are one per uid."""
    if not any(cgroups.is_logind_slice(p) for p in user.get("live_cgroups", [])):
        return {}
    return union([other["elements"] for other in records.list_users(run_dir, strict=True)
                  if other["uid"] != user["uid"] and not other.get("closing")])


def _user_busy(user, mount, exclude=()):
    """Whether a task of the user is left in one of the user cgroups of its logins."""
    return any(has_processes(mount, path, exclude) for path in user.get("live_cgroups", []))


def _write_closing(run_dir, record, plan):
    """The close's intent, before any kernel change: the session record marked closing
    with everything to destroy (user elements included when released), then the user
    record and the cgroup references without this session."""
    key, uid = record["key"], record["uid"]
    records.write(records.session_path(run_dir, key),
                  dict(record, closing=True, destroy=plan["destroy"]))
    if record["cgroup_id"]:
        keys = [k for k in records.read_refs(run_dir, record["cgroup_id"]) if k != key]
        records.write_refs(run_dir, record["cgroup_id"], keys)
    user = plan["user"]
    if user is None:
        return
    if plan["release"]:
        records.delete(records.user_path(run_dir, uid))
    else:
        user = dict(user, sessions=[k for k in user["sessions"] if k != key])
        records.write(records.user_path(run_dir, uid), user)


def _live_sessions(run_dir, keys, skip):
    out = []
    for other in keys:
        if other == skip:
            continue
        rec = _read_quiet(records.session_path(run_dir, other))
        if rec is not None and not rec.get("closing") and is_alive(rec):
            out.append(rec)
    return out


def _remove_user_cgroups(user, mount):
    for path in user.get("user_cgroups", []):
        try:
            cgroups.remove(mount, path)     # busy (another session dir inside): gc
        except cgroups.CgroupError:
            pass


def release_user(run_dir, uid, *, timeout_ms=fastpath.DEFAULT_TIMEOUT_MS, mount=None):
    """Drop a uid's user elements once it has no live session and no task left in its
    user cgroups; finish a release that was interrupted. Returns True when released."""
    user_file = records.user_path(run_dir, uid)
    with Lock(run_dir):
        user = _read_quiet(user_file)
        if user is None:
            return False
        if "destroy" in user:
            return _finish_pending(run_dir, user_file, timeout_ms, user) is not None
        if _live_sessions(run_dir, user["sessions"], skip=None):
            return False
        mount = mount or cgroups.cgroup2_mount()
        if _user_busy(user, mount):
            return False
        # intent, then the same finish as any pending destroy: what no live record
        # needs (another user's record may share a logind slice's key) goes
        records.write(user_file, dict(user, closing=True, destroy=user["elements"]))
        _finish_pending(run_dir, user_file, timeout_ms)
        _remove_user_cgroups(user, mount)
    return True


# ---- gc and flush (command line) ---------------------------------------------------

class GcReport:
    __slots__ = ("sessions", "users", "cgroups", "temp_files", "pending", "errors")

    def __init__(self):
        self.sessions, self.users, self.cgroups, self.temp_files = 0, 0, 0, 0
        self.pending = 0
        self.errors = []

    def __str__(self):
        text = (f"gc: {self.sessions} dead sessions closed, {self.users} users released, "
                f"{self.cgroups} empty cgroups removed")
        if self.pending:
            text += f", {self.pending} interrupted changes finished"
        return "\n".join([text] + [f"gc: error: {e}" for e in self.errors])


def gc(run_dir, *, cgroup_base=None, timeout_ms=fastpath.DEFAULT_TIMEOUT_MS, mount=None):
    """Finish interrupted opens and closes, close sessions whose PAM application is
    gone, release users with no task left in their user cgroups, remove empty cgroups
    of netfence's own hierarchy that no record uses."""
    from .errors import NetfenceError
    report = GcReport()
    records.ensure_dirs(run_dir)
    try:
        mount = mount or cgroups.cgroup2_mount()
    except NetfenceError as err:
        mount = None
        report.errors.append(str(err))
    for record in records.list_sessions(run_dir):
        try:
            if "destroy" in record:
                report.pending += int(finish_session(run_dir, record["key"], timeout_ms))
                if record.get("closing"):
                    continue
            if is_alive(record):
                continue
            result = close_session(run_dir, record["key"], timeout_ms=timeout_ms,
                                   mount=mount)
        except NetfenceError as err:
            report.errors.append(f"session {record['key']}: {err}")
            continue
        if result["result"] == "closed":
            report.sessions += 1
            report.users += int(result["released"])
            report.cgroups += int(result["cgroup"] == "removed")
    for user in records.list_users(run_dir):
        try:
            released = release_user(run_dir, user["uid"], timeout_ms=timeout_ms,
                                    mount=mount)
        except NetfenceError as err:
            report.errors.append(f"uid {user['uid']}: {err}")
            continue
        if "destroy" in user:
            report.pending += int(released)
        else:
            report.users += int(released)
    if mount is not None:
        report.cgroups += _remove_orphan_cgroups(run_dir, mount, cgroup_base)
    if records.stale_temp_files(run_dir):
        with Lock(run_dir):               # writers hold the lock: these are leftovers
            for path in records.stale_temp_files(run_dir):
                records.delete(path)
                report.temp_files += 1
    return report


def _remove_orphan_cgroups(run_dir, mount, cgroup_base):
    removed = 0
    with Lock(run_dir):
        sessions = records.list_sessions(run_dir)
        users = records.list_users(run_dir)
        bases = {r.get("base") for r in sessions} | {cgroup_base or "netfence"}
        used = {r.get("cgroup") for r in sessions} | {r.get("user_cgroup") for r in sessions}
        for user in users:
            used.update(user.get("user_cgroups", []))
        for base in sorted(b for b in bases if b):
            try:
                user_dirs, session_dirs = cgroups.own_dirs(mount, base)
            except cgroups.CgroupError:
                continue
            for path in session_dirs + user_dirs:       # sessions first: users empty then
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
        for kind in (records.SESSIONS, records.USERS, records.CGROUPS):
            for name in records.names(run_dir, kind):
                records.delete(f"{run_dir}/{kind}/{name}")
                count += kind == records.SESSIONS
    return count
