"""Open, close and garbage-collect sessions: records + cgroup + one netlink batch.

Shared by the hook (open_session, close_session) and the command line (gc, forget_all).
Every change happens under the run_dir lock (records.Lock), in this order:

  open:  cgroup -> records (intent) -> one add batch; on any failure the records and
         the cgroup are put back, and elements this login may have added are destroyed
  close: one destroy batch -> cgroup -> records; a failed batch leaves the records, so
         a later close or gc can finish the job

What may be destroyed is decided from the records, never by guessing:
  - session elements: those of the closing session, minus those still needed by
    another live session in the same cgroup (a nested login shares its cgroup);
  - user elements: all of the uid's, but only when the uid has no other live session
    and no process at all (real, effective, saved or filesystem uid).
A session is live while its PAM application (ppid with the recorded start time) is.
"""

import posix
import sys
import time

from . import cgroups, fastpath, records
from .errors import StateError
from .records import Lock, merge_into, subtract

UNDO_TIMEOUT_MS = 500


# ---- processes --------------------------------------------------------------------

def parse_starttime(stat_text):
    """Field 22 of /proc/PID/stat (after the parenthesised command, which may hold
    spaces and parentheses)."""
    rest = stat_text[stat_text.rindex(")") + 2:].split(" ")
    return int(rest[19])


def proc_starttime(pid):
    try:
        fd = posix.open(f"/proc/{pid}/stat", posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = posix.read(fd, 4096).decode("utf-8", "surrogateescape")
    except OSError:
        return None
    finally:
        posix.close(fd)
    try:
        return parse_starttime(text)
    except (ValueError, IndexError):
        return None


def session_key(ppid):
    """(key, start time) of the PAM application: stable between its open and close."""
    start = proc_starttime(ppid)
    if start is None:
        raise cgroups.CgroupError(f"PAM application {ppid} is gone")
    return f"{ppid}-{start}", start


def is_alive(record):
    return proc_starttime(record["ppid"]) == record["starttime"]


def parse_status_uids(status_text):
    """The uids of a /proc/PID/status text; none for a zombie, which has exited and
    can open no socket any more (init may take a while to reap it)."""
    uids = set()
    for line in status_text.splitlines():
        if line.startswith("State:") and line.split()[1:2] == ["Z"]:
            return set()
        if line.startswith("Uid:"):
            uids = {int(u) for u in line[4:].split()}
    return uids


def _process_uids(exclude):
    """(pid, {real, effective, saved, fs uid}) of every process but the excluded pids."""
    excluded = {str(p) for p in exclude}
    for name in posix.listdir("/proc"):
        if not name.isdigit() or name in excluded:
            continue
        try:
            fd = posix.open(f"/proc/{name}/status", posix.O_RDONLY | posix.O_CLOEXEC)
        except OSError:
            continue                      # exited meanwhile
        try:
            text = posix.read(fd, 8192).decode("utf-8", "surrogateescape")
        except OSError:
            continue
        finally:
            posix.close(fd)
        yield name, parse_status_uids(text)


def uids_in_use(exclude=()):
    """Every uid (real, effective, saved, fs) of every process but the excluded pids."""
    uids = set()
    for _, found in _process_uids(exclude):
        uids |= found
    return uids


class _UidProbe:
    """Membership test for one uid that stops scanning /proc at its first process, for
    close_session: its one question is whether this uid still has any."""

    def __init__(self, exclude):
        self._exclude = exclude

    def __contains__(self, uid):
        return any(uid in found for _, found in _process_uids(self._exclude))


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


def needs_cgroup(profiles, user_profiles, session_profiles):
    return (any(profiles[p]["ingress"] for p in user_profiles)
            or any(profiles[p]["egress"] or profiles[p]["ingress"] for p in session_profiles))


def _cg_key(cgroup_id):
    return cgroup_id.to_bytes(8, sys.byteorder).hex()


def open_session(run_dir, login, info, user_profiles, session_profiles, *, ppid,
                 timeout_ms=fastpath.DEFAULT_TIMEOUT_MS, mount=None):
    """Record and apply one login. info: user, uid, service, rhost, tty.

    Returns the session record. Raises (NetfenceError or the hook's timeout) with
    everything put back as it was.
    """
    profiles = login["profiles"]
    settings = login.get("settings", {})
    base = settings.get("cgroup_base", "netfence")
    uid = info["uid"]
    key, start = session_key(ppid)
    records.ensure_dirs(run_dir)
    with Lock(run_dir):
        cgroup = None
        if needs_cgroup(profiles, user_profiles, session_profiles):
            mount = mount or cgroups.cgroup2_mount()
            cgroup = cgroups.open_session_cgroup(mount, base, uid, key, ppid)
        undo = _Undo(run_dir, key, uid, cgroup, mount, ppid)
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
                "cgroup": cgroup["path"] if cgroup else "",
                "cgroup_id": cgroup["id"] if cgroup else 0,
                "user_cgroup": cgroup["user_path"] if cgroup else "",
                "user_cgroup_id": cgroup["user_id"] if cgroup else 0,
                "created": bool(cgroup and cgroup["created"]),
                "origin": cgroup["origin"] if cgroup else "",
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
    """Write the records (intent first: a crash after the batch leaves gc a trail).
    Returns the elements this login adds that no live record had yet."""
    key, uid, cgroup_id = record["key"], record["uid"], record["cgroup_id"]
    session_file = records.session_path(run_dir, key)
    user_file = records.user_path(run_dir, uid)
    previous = records.read(session_file)           # a second open by the same app
    user = records.read(user_file)
    refs = records.read_refs(run_dir, cgroup_id)
    if previous is not None:
        merge_into(record["session_elements"], previous.get("session_elements", {}))
        merge_into(record["user_elements"], previous.get("user_elements", {}))
        if previous.get("cgroup_id") == cgroup_id:    # keep who made the cgroup
            record["created"], record["origin"] = previous["created"], previous["origin"]
    already = merge_into({}, user["elements"]) if user else {}
    for other in _live_sessions(run_dir, refs, skip=key):
        merge_into(already, other.get("session_elements", {}))

    if cgroup_id and key not in refs:
        undo.saved(records.refs_path(run_dir, cgroup_id))
        records.write_refs(run_dir, cgroup_id, refs + [key])
    undo.saved(session_file, previous)
    records.write(session_file, record)
    undo.saved(user_file, user)
    user = user or {"uid": uid, "user": record["user"], "elements": {}, "sessions": [],
                    "user_cgroups": []}
    user = dict(user, elements=merge_into({s: list(k) for s, k in user["elements"].items()},
                                          record["user_elements"]))
    if key not in user["sessions"]:
        user["sessions"] = user["sessions"] + [key]
    own = record["user_cgroup"]
    if record["created"] and own and own not in user["user_cgroups"]:
        user["user_cgroups"] = user["user_cgroups"] + [own]
    user["updated_at"] = record["opened_at"]
    records.write(user_file, user)
    wanted = merge_into({s: list(k) for s, k in record["user_elements"].items()},
                        record["session_elements"])
    return subtract(wanted, already)


class _Undo:
    """Puts records, cgroup and (when the batch may have gone through) the kernel back."""

    _UNREAD = object()

    def __init__(self, run_dir, key, uid, cgroup, mount, ppid):
        self.run_dir, self.key, self.uid = run_dir, key, uid
        self.cgroup, self.mount, self.ppid = cgroup, mount, ppid
        self.added, self.sent = {}, False
        self.restore = []                 # (path, content before, None = absent)

    def saved(self, path, content=_UNREAD):
        if content is self._UNREAD:
            content = records.read(path)
        self.restore.append((path, content))

    def run(self, err):
        if self.sent and not _known_refused(err):
            try:                                  # outcome unknown: take it back
                fastpath.destroy_elements(self.added, UNDO_TIMEOUT_MS)
            except Exception:                     # noqa: BLE001 - best effort, gc retries
                pass
        try:
            for path, content in reversed(self.restore):
                if content is None:
                    records.delete(path)
                else:
                    records.write(path, content)
        finally:
            cgroups.undo_open(self.mount, self.cgroup, self.ppid)


def _known_refused(err):
    """True when the kernel answered "no" (nothing applied), not when we stopped
    waiting for its answer."""
    from .errors import KernelError
    return isinstance(err, KernelError) and err.errno not in (4, 110)  # EINTR, ETIMEDOUT


def _read_quiet(run_dir, key):
    try:
        return records.read_session(run_dir, key)
    except StateError:
        return None


# ---- close ------------------------------------------------------------------------

def close_session(run_dir, key, *, pids=(), timeout_ms=fastpath.DEFAULT_TIMEOUT_MS,
                  uids_busy=None, mount=None, detach=False):
    """Remove what the session KEY added. Safe to repeat: an absent record is success.

    pids: the processes to move out of the session cgroup before removing it (the PAM
    application and the hook). uids_busy: a uids_in_use() result to reuse (gc).
    detach: see fastpath.destroy_elements (the hook sets it).
    Returns {"result": "absent"|"closed", "record", "destroyed", "released",
    "cgroup", "gone_sets"}.
    """
    record = records.read_session(run_dir, key)
    if record is None:
        return {"result": "absent"}
    if uids_busy is None:
        # Outside the lock, and only for the last live session of a uid with
        # user-scope elements: other closes scan nothing, and the scan stops at the
        # uid's first process. A uid with no process now can only get one by a new login,
        # whose record (written under the lock) counts as a live session below.
        uids_busy = set()
        user = records.read_user(run_dir, record["uid"])
        if user is not None and not _live_sessions(run_dir, user["sessions"], skip=key):
            if record["uid"] in _UidProbe(exclude=pids):
                uids_busy.add(record["uid"])
    with Lock(run_dir):
        record = records.read_session(run_dir, key)
        if record is None:
            return {"result": "absent"}
        uid = record["uid"]
        sharing = _live_sessions(run_dir, records.read_refs(run_dir, record["cgroup_id"]),
                                 skip=key)
        keep = {}
        for other in sharing:
            merge_into(keep, other.get("session_elements", {}))
        destroy = subtract(record.get("session_elements", {}), keep)
        user = records.read_user(run_dir, uid)
        others = _live_sessions(run_dir, user["sessions"] if user else [], skip=key)
        release = user is not None and not others and uid not in uids_busy
        if release:
            merge_into(destroy, user["elements"])
        ours = bool(record.get("created") and record.get("cgroup") and not sharing)
        if ours:
            # Leave first: the batch may fork a child (detach), which must not be
            # born inside the cgroup we are about to remove.
            mount = mount or cgroups.cgroup2_mount()
            cgroups.leave(mount, record.get("origin"), pids)
        gone = fastpath.destroy_elements(destroy, timeout_ms, detach=detach)
        cgroup = cgroups.remove(mount, record["cgroup"]) if ours else "kept"
        _write_close(run_dir, record, user, release, mount)
    return {"result": "closed", "record": record, "destroyed": destroy,
            "released": release, "cgroup": cgroup, "gone_sets": gone}


def _live_sessions(run_dir, keys, skip):
    out = []
    for other in keys:
        if other == skip:
            continue
        rec = _read_quiet(run_dir, other)
        if rec is not None and is_alive(rec):
            out.append(rec)
    return out


def _write_close(run_dir, record, user, release, mount):
    key, uid = record["key"], record["uid"]
    if record["cgroup_id"]:
        keys = [k for k in records.read_refs(run_dir, record["cgroup_id"]) if k != key]
        records.write_refs(run_dir, record["cgroup_id"], keys)
    if user is not None:
        if release:
            _remove_user_cgroups(user, mount)
            records.delete(records.user_path(run_dir, uid))
        else:
            user["sessions"] = [k for k in user["sessions"] if k != key]
            records.write(records.user_path(run_dir, uid), user)
    records.delete(records.session_path(run_dir, key))


def _remove_user_cgroups(user, mount):
    paths = user.get("user_cgroups", [])
    if not paths:
        return
    mount = mount or cgroups.cgroup2_mount()
    for path in paths:
        try:
            cgroups.remove(mount, path)     # busy (another session dir inside): gc
        except cgroups.CgroupError:
            pass


def release_user(run_dir, uid, *, uids_busy, timeout_ms=fastpath.DEFAULT_TIMEOUT_MS,
                 mount=None):
    """Drop a uid's user elements once it has no live session and no process."""
    if uid in uids_busy:
        return False
    with Lock(run_dir):
        user = records.read_user(run_dir, uid)
        if user is None:
            return False
        live = _live_sessions(run_dir, user["sessions"], skip=None)
        if live:
            return False
        fastpath.destroy_elements(user["elements"], timeout_ms)
        _remove_user_cgroups(user, mount)
        records.delete(records.user_path(run_dir, uid))
    return True


# ---- gc and flush (command line) ---------------------------------------------------

class GcReport:
    __slots__ = ("sessions", "users", "cgroups", "temp_files", "errors")

    def __init__(self):
        self.sessions, self.users, self.cgroups, self.temp_files = 0, 0, 0, 0
        self.errors = []

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}

    def __str__(self):
        text = (f"gc: {self.sessions} dead sessions closed, {self.users} users released, "
                f"{self.cgroups} empty cgroups removed")
        return "\n".join([text] + [f"gc: error: {e}" for e in self.errors])


def gc(run_dir, *, cgroup_base=None, timeout_ms=fastpath.DEFAULT_TIMEOUT_MS, mount=None):
    """Close sessions whose PAM application is gone, release users with no process
    left, remove empty cgroups of netfence's own hierarchy that no record uses."""
    from .errors import NetfenceError
    report = GcReport()
    records.ensure_dirs(run_dir)
    try:
        mount = mount or cgroups.cgroup2_mount()
    except NetfenceError as err:
        mount = None
        report.errors.append(str(err))
    busy = uids_in_use()
    for record in records.list_sessions(run_dir):
        if is_alive(record):
            continue
        try:
            result = close_session(run_dir, record["key"], uids_busy=busy,
                                   timeout_ms=timeout_ms, mount=mount)
        except NetfenceError as err:
            report.errors.append(f"session {record['key']}: {err}")
            continue
        if result["result"] == "closed":
            report.sessions += 1
            report.users += int(result["released"])
            report.cgroups += int(result["cgroup"] == "removed")
    for user in records.list_users(run_dir):
        try:
            report.users += int(release_user(run_dir, user["uid"], uids_busy=busy,
                                             timeout_ms=timeout_ms, mount=mount))
        except NetfenceError as err:
            report.errors.append(f"uid {user['uid']}: {err}")
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
        used = {r["cgroup"] for r in sessions} | {r.get("user_cgroup") for r in sessions}
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
            for name in records._names(run_dir, kind):
                records.delete(f"{run_dir}/{kind}/{name}")
                count += kind == records.SESSIONS
    return count
