"""Open and close sessions: records + cgroup + one netlink batch.

Used by the hook (open_session, close_session) and by gc (collect.py). Each function
reads (records, liveness), asks `plan` what follows, writes the intent, sends one
batch (fastpath), and commits, in that order. Every change happens under the run_dir
lock (records.Lock), and the records are written before the kernel changes ("intent
first"): whoever reads the ruleset generation and then the records (reload, gc) sees
every change the kernel has had or may still get, and no interleaving leaves an
element without a record.

  open:  cgroup -> records (the new elements) -> one add batch.
         On failure: the records are put back, keeping what the batch may have added
         as a pending "destroy"; one destroy batch; the pending list is cleared; the
         cgroup is put back.
  close: records first (the session marked closing, with the elements to destroy;
         the user record updated, or deleted when the user is released) -> leave the
         cgroup, the totals read (only a session that counted), the closed record
         kept (records_closed) -> one destroy batch, rmdir -> the session record
         deleted.

A record left with a pending "destroy" (a crash, a refused batch, the hook's deadline)
is finished by the next close of that session or by gc: it destroys the pending
elements minus those a live record needs.

What may be destroyed is decided (plan.close_plan) from the records and the kernel's
accounting:
  - session elements: those of the closing session, minus those still needed by
    another live session in the same cgroup (a nested login shares its cgroup);
  - user elements: all of the uid's, but only when the uid has no other live session
    and no task left in its user cgroups (liveness.has_processes: no /proc scan).
A session is live while its PAM application (ppid with the recorded start time) is.

Timed keys (rules with `time`, docs/hook.md "Time windows") follow the same order: the
open sends those open now with an exact kernel timeout (the latest end among the live
records that need them), a close destroys its session-scope ones and a release the
user's, each minus what a live record needs at now.
"""

import errno
import time

from . import cgroups, fastpath, plan, records, timed
from .errors import KernelError, NetfenceError, StateError
from .liveness import has_processes, is_alive, session_key
from .records import Lock, stamp_boot

UNDO_TIMEOUT_MS = 500
__all__ = ["open_session", "close_session", "finish_session", "release_user",
           "finish_pending", "known_refused", "session_key"]


# ---- open -------------------------------------------------------------------------

def open_session(run_dir, login, info, user_profiles, session_profiles, *, ppid,
                 timeout_ms=fastpath.DEFAULT_TIMEOUT_MS, mount=None, timed_rules=()):
    """Record and apply one login. info: user, uid, service, rhost, tty; timed_rules:
    matcher.Decision.timed (rules with `time`: recorded whatever the clock says, their
    elements sent with a kernel timeout while a window is open).

    Every login that gets a profile gets a session cgroup, user scope included: the
    user cgroup above it is what keeps user-scope elements alive after the logout
    (liveness.has_processes). Returns the session record. Raises (NetfenceError or
    the hook's timeout) with everything put back as it was.
    """
    uid = info["uid"]
    key, start = session_key(ppid)
    records.ensure_dirs(run_dir)
    with Lock(run_dir):
        mount = mount or cgroups.cgroup2_mount()
        finish_pending(run_dir, records.session_path(run_dir, key), timeout_ms)
        finish_pending(run_dir, records.user_path(run_dir, uid), timeout_ms)
        cgroup = cgroups.open_session_cgroup(mount, plan.cgroup_base(login), uid, key,
                                             ppid)
        undo = _Undo(run_dir, key, cgroup, mount, ppid)
        try:
            now = time.time()
            record = plan.session_record(
                login, info, {"key": key, "ppid": ppid, "starttime": start},
                user_profiles, session_profiles, cgroup, now, timed_rules)
            stamp_boot(record)
            before = _read_for_open(run_dir, key, uid, cgroup["id"])
            todo = plan.open_plan(record, *before,
                                  _timed_sources(run_dir, record, before[1]), now)
            _write_open(run_dir, todo, undo, before)
            undo.added, undo.sent = todo["added"], True
            fastpath.add_elements(login.get("templates"), todo["send"], timeout_ms,
                                  timed=timed.timeouts_ms(todo["timed"], now))
        except BaseException as err:
            undo.run(err)
            raise
    return todo["record"]


def _read_for_open(run_dir, key, uid, cgroup_id):
    """(previous, user, refs, sharing) for plan.open_plan: an earlier record of this
    session (a second open by the same application), the user record, the keys
    recorded in the session cgroup and the live sessions among them."""
    previous = records.read_session(run_dir, key)
    user = records.read_user(run_dir, uid)
    refs = records.read_refs(run_dir, cgroup_id)
    return previous, user, refs, _live_sessions(run_dir, refs, key)


def _timed_sources(run_dir, record, user):
    """The other live records that may hold one of the record's timed keys (read
    only when the login has a timed entry: most have none). Session-scope keys are
    the session cgroup's, which only the sharing records hold (open_plan has them);
    user-scope keys are in the user records, which keep their sessions' user-scope
    entries: the uid's own, and under a logind slice, which su to another uid
    shares, the other uids' records whose user cgroups include it. Never every
    session record: that cost the hook 150 ms at 10,000 records."""
    if not record["timed"]:
        return []
    sources = [user] if user else []
    if cgroups.is_logind_slice(record["user_cgroup"]):
        sources += [other for other in records.list_users(run_dir)
                    if other["uid"] != record["uid"]
                    and record["user_cgroup"] in other.get("live_cgroups", ())]
    return sources


def _write_open(run_dir, todo, undo, before):
    """Write the records (intent: before the batch, so that a reload or gc reading
    them sees what the kernel is about to hold), each remembered first for the undo as
    _read_for_open found it (`before`: the lock is held, nothing changed them since)."""
    previous, user, refs, _sharing = before
    record = todo["record"]
    key, uid, cgroup_id = record["key"], record["uid"], record["cgroup_id"]
    if todo["refs"] is not None:
        undo.saved(records.refs_path(run_dir, cgroup_id),
                   {"cgroup_id": cgroup_id, "sessions": refs} if refs else None)
        records.write_refs(run_dir, cgroup_id, todo["refs"])
    session_file = records.session_path(run_dir, key)
    user_file = records.user_path(run_dir, uid)
    undo.saved(session_file, previous)
    undo.record = record
    records.write(session_file, record)
    undo.saved(user_file, user)
    records.write(user_file, todo["user"])


class _Undo:
    """Puts records, cgroup and (when the batch may have gone through) the kernel back,
    records first: the elements to take back are kept as the session record's pending
    "destroy" until the destroy batch has gone through."""

    def __init__(self, run_dir, key, cgroup, mount, ppid):
        self.run_dir, self.key = run_dir, key
        self.cgroup, self.mount, self.ppid = cgroup, mount, ppid
        self.added, self.sent, self.record = {}, False, None
        self.restore = []                 # (path, content before, None = absent)

    def saved(self, path, content):
        """Remember the record at path as it is now (None: absent), to put it back."""
        self.restore.append((path, content))

    def run(self, err):
        pending = self.added if self.sent and not known_refused(err) else {}
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
                    finish_pending(self.run_dir, session_file, UNDO_TIMEOUT_MS)
                except Exception:                 # noqa: BLE001 - gc finishes it
                    return
        finally:
            cgroups.undo_open(self.mount, self.cgroup, self.ppid)


def known_refused(err):
    """True when the kernel answered "no" (nothing applied), not when we stopped
    waiting for its answer."""
    return isinstance(err, KernelError) and err.errno not in (errno.EINTR, errno.ETIMEDOUT)


def finish_pending(run_dir, path, timeout_ms, record=None):
    """Finish what an interrupted writer left in the record at path (a session, user
    or run tree record; runtree uses it too): destroy its pending elements that no
    live record needs, then clear them. Lock held.
    Returns the elements destroyed, or None when nothing was pending."""
    record = record or _read_quiet(path)
    if record is None or "destroy" not in record:
        return None
    if record.get("history") == "pending":     # a close stopped before or after it
        from .records_closed import is_kept
        if not is_kept(run_dir, record):       # after: no second read of the totals
            keep_history(run_dir, record)
    destroy = plan.subtract(record["destroy"],
                            records.live_elements(run_dir, timed_at=time.time()))
    fastpath.destroy_elements(destroy, timeout_ms)
    after = plan.after_pending(record)
    if after is None:
        records.delete(path)
    else:
        records.write(path, after)
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
        finish_pending(run_dir, session_file, timeout_ms)   # an earlier one stopped
        record = records.read(session_file)
        if record is None:
            return {"result": "absent"}
        mount = mount or cgroups.cgroup2_mount()
        todo = plan.close_plan(record, *_read_for_close(run_dir, record, pids, mount),
                               now=time.time())
        _write_closing(run_dir, record, todo)
        if todo["ours"]:
            # Leave first: the batch may fork a child (detach), which must not be
            # born inside the cgroup we are about to remove. Only the PAM application
            # goes back where it came from; the hook (and its launcher) go to the root:
            # the origin may be a cgroup the user controls and has frozen meanwhile,
            # which would stop the hook while it holds the records lock.
            cgroups.leave(mount, record.get("origin"), pids[:1])
            cgroups.leave(mount, "/", pids[1:])
        ended = keep_history(run_dir, record)
        gone = fastpath.destroy_elements(todo["destroy"], timeout_ms, detach=detach)
        cgroup = cgroups.remove(mount, record["cgroup"]) if todo["ours"] else "kept"
        if todo["release"]:
            _remove_user_cgroups(todo["user"], mount)
        records.delete(session_file)
    return {"result": "closed", "record": record, "destroyed": todo["destroy"],
            "released": todo["release"], "cgroup": cgroup, "gone_sets": gone, **ended}


def keep_history(run_dir, record):
    """Before the destroy batch (the elements still count): the record's totals, when
    it has counted elements, and its closed record (records_closed). Neither failure
    stops the close (a full /run, the hook's alarm -- HookTimeout is a NetfenceError --,
    an OSError): the elements must go whatever the history says. Returns
    {"totals": dict or None, "totals_error": why unknown or None, "history_error"}."""
    from .records_closed import keep_closed
    totals, error = read_totals(record)
    history_error = None
    try:
        keep_closed(run_dir, record, time.time(), totals)
    except (NetfenceError, OSError) as err:   # history lost, the close goes on
        history_error = f"{type(err).__name__}: {err}"
    return {"totals": totals, "totals_error": error, "history_error": history_error}


def read_totals(record):
    """(totals, None), (None, why) when they could not be read, or (None, None) for a
    record without accounting (no read, no import: free for logins that do not
    count). Reads exactly the record's counted session elements, one GETSETELEM each.
    Bounded by the read's socket timeout and by the caller's deadline: the hook's
    alarm ending the read leaves the totals unknown and the close goes on."""
    keys = plan.counted(record.get("session_elements", {}))
    if not keys:
        return None, None
    try:
        from .counters import read_counters
        totals = plan.totals(read_counters(keys=keys))
    except (NetfenceError, OSError, ImportError) as err:   # HookTimeout included
        return None, f"{type(err).__name__}: {err}"
    return (totals, None) if totals is not None else (None, "elements not in the kernel")


def _read_for_close(run_dir, record, pids, mount):
    """(refs, sharing, user, user in use, others) for plan.close_plan. Other users'
    elements are read only when the user would be released: a damaged record of
    theirs then stops the close, rather than its elements being destroyed."""
    key = record["key"]
    refs = records.read_refs(run_dir, record["cgroup_id"])
    sharing = _live_sessions(run_dir, refs, key)
    user = records.read_user(run_dir, record["uid"])
    in_use = (user is None or bool(_live_sessions(run_dir, user["sessions"], key))
              or _user_busy(user, mount, pids))
    others = {} if in_use else _held_by_others(run_dir, user)
    return refs, sharing, user, in_use, others


def _write_closing(run_dir, record, todo):
    """The close's intent, before any kernel change: the session record marked closing
    with everything to destroy (user elements included when released), then the
    cgroup references and the user record without this session."""
    records.write(records.session_path(run_dir, record["key"]), todo["closing"])
    if todo["refs"] is not None:
        records.write_refs(run_dir, record["cgroup_id"], todo["refs"])
    user_file = records.user_path(run_dir, record["uid"])
    if todo["release"]:
        records.delete(user_file)
    elif todo["user_after"] is not None:
        records.write(user_file, todo["user_after"])


def finish_session(run_dir, key, timeout_ms=fastpath.DEFAULT_TIMEOUT_MS):
    """Finish an open or close of session KEY that stopped half-way (its record's
    pending "destroy"); the session itself is left as it is. True when there was one."""
    with Lock(run_dir):
        return finish_pending(run_dir, records.session_path(run_dir, key),
                               timeout_ms) is not None


def release_user(run_dir, uid, *, timeout_ms=fastpath.DEFAULT_TIMEOUT_MS, mount=None):
    """Drop a uid's user elements once it has no live session and no task left in its
    user cgroups; finish a release that was interrupted. Returns True when released."""
    user_file = records.user_path(run_dir, uid)
    with Lock(run_dir):
        user = _read_quiet(user_file)
        if user is None:
            return False
        if "destroy" in user:
            return finish_pending(run_dir, user_file, timeout_ms, user) is not None
        if _live_sessions(run_dir, user["sessions"], skip=None):
            return False
        mount = mount or cgroups.cgroup2_mount()
        if _user_busy(user, mount):
            return False
        # intent, then the same finish as any pending destroy: what no live record
        # needs (another user's record may share a logind slice's key) goes
        records.write(user_file, plan.releasing(user))
        finish_pending(run_dir, user_file, timeout_ms)
        _remove_user_cgroups(user, mount)
    return True


# ---- reading: other sessions and users, the user's cgroups --------------------------

def _live_sessions(run_dir, keys, skip):
    """The records of the live, not closing sessions among keys, except skip."""
    out = []
    for other in keys:
        if other == skip:
            continue
        rec = _read_quiet(records.session_path(run_dir, other))
        if rec is not None and not rec.get("closing") and is_alive(rec):
            out.append(rec)
    return out


def _held_by_others(run_dir, user):
    """Elements other users' records hold that this user's may share: su to another
    user inside a logind session shares the caller's user slice, and so its user
    cgroup key. Only logind slices are shared; netfence's own are one per uid."""
    if not any(cgroups.is_logind_slice(p) for p in user.get("live_cgroups", [])):
        return {}
    return plan.union([part for other in records.list_users(run_dir, strict=True)
                       if other["uid"] != user["uid"] and not other.get("closing")
                       for part in (other["elements"], other.get("timed_keys", {}))])


def _user_busy(user, mount, exclude=()):
    """Whether a task of the user is left in one of the user cgroups of its logins."""
    return any(has_processes(mount, path, exclude) for path in user.get("live_cgroups", []))


def _remove_user_cgroups(user, mount):
    for path in user.get("user_cgroups", []):
        try:
            cgroups.remove(mount, path)     # busy (another session dir inside): gc
        except cgroups.CgroupError:
            pass
