"""Session and user records under run_dir (default /run/netfence): what each login
added, so that its close removes exactly that, and gc and reload can find it.

    run_dir/            root 0700
      lock              lockf() lock held around record updates + the netlink batch
      sessions/KEY      one per open session, KEY = "<ppid>-<ppid start time>"
      users/UID         per uid: user-scope elements (union), the uid's sessions and
                        the user cgroups whose processes keep those elements
      cgroups/ID        session keys sharing one session cgroup (nested logins)
      runs/KEY          one per `netfence run` tree (kind "run"), KEY = "<pid>-<start
                        time>" of the run process; its elements are session-scope,
                        keyed by the tree's own cgroup (runtree.py)
      closed/KEY        a closed session's or run tree's identity, "closed_at" and
                        its "totals" when it counted (records_closed.py): history for
                        `netfence log`, never read as live

A session record's "timed" (rules with `time`: their keys, whatever the clock says),
a user record's "timed" (its sessions' user-scope entries, kept after their logout
until the release) and "timed_keys" are no elements of these lists: timed.py computes
which are open and until when (live_elements counts them only with timed_at).

Records are written before the kernel changes (intent first, docs/security.md): a
record may carry "destroy" ({set: [key]}, elements a close or a failed open is
removing) and "closing" (the record goes once they are gone). Readers that rebuild
the kernel's state (reload, gc) count neither; gc finishes what an interrupted writer
left pending.

Records are `marshal` dicts: built in, while `import json` costs ~10 ms under
`python3 -I -S` (it imports `re`); loading one record takes ~4 us either way. Each is
written to a temp file and renamed into place (fsutil.write_atomic); their format
number is formats.RECORDS. No fsync: /run is a tmpfs, and the kernel state they
describe does not survive a reboot either. Elements are
{set name: [hex key, ...]}, keys as the kernel holds them (host byte order); their
algebra (union, merge_into, subtract) is in plan.py.

The lock is one lockf() (fcntl record) lock for the whole run_dir, through the builtin
`posix` module (no fcntl import). Everyone takes it: the hook's open and close, gc,
flush. See docs/hook.md for why it is one lock and not one per uid.
"""

import marshal
import posix

from . import formats, fsutil
from .errors import StateError
from .timed import record_elements

SESSIONS, USERS, CGROUPS, RUNS, LOCK = "sessions", "users", "cgroups", "runs", "lock"
KINDS = (SESSIONS, USERS, CGROUPS, RUNS)    # the live records: never "closed"
CLOSED = "closed"                           # history (records_closed.py)
KEY_CHARS = frozenset("0123456789-")


# ---- the directory and its lock --------------------------------------------------

def ensure_dirs(run_dir):
    """Create run_dir (0700) and its subdirectories; refuse one others could write."""
    for path in (run_dir, *(f"{run_dir}/{kind}" for kind in KINDS)):
        ensure_dir(path)


def ensure_dir(path):
    """Create one directory of run_dir (0700), or check the one there."""
    try:
        st = posix.lstat(path)
    except FileNotFoundError:
        try:
            posix.mkdir(path, 0o700)
            st = posix.lstat(path)
        except FileExistsError:
            st = posix.lstat(path)
        except OSError as err:
            raise StateError(f"mkdir {path}: {err.strerror}") from None
    euid = posix.geteuid()
    problem = ("not a directory" if st.st_mode & fsutil.S_IFMT != fsutil.S_IFDIR
               else fsutil.owner_problem(st, euid))
    if problem:
        raise StateError(f"{path}: {problem}; not a directory owned by uid {euid} "
                         f"and writable only by it: refusing to keep records there")


class Lock(fsutil.Lock):
    """Exclusive lock on run_dir/lock for the duration of a `with` block: one lockf()
    lock (posix only, so the hook can take it).

    max_wait_s: None (the hook: its own deadline bounds the wait) or, set once on the
    class by the command line, how long to wait before giving up with StateError: a
    holder is a hook bounded by its deadline, so a longer wait means something is
    wrong, and gc or reload must say so rather than hang.
    """

    max_wait_s = None

    def __init__(self, run_dir):
        super().__init__(f"{run_dir}/{LOCK}", "lockf", type(self).max_wait_s)


# ---- files ------------------------------------------------------------------------

RECORD_READ = 1 << 16      # one read() takes a whole record (they are ~0.3-1 KiB)


def _read_bytes(path):
    """The bytes of the regular file at path (fsutil.open_regular's checks), None
    when absent. A read shorter than asked is the end of a regular file: reload reads
    20,000 records at 10,000 sessions, and the read that returns nothing is saved."""
    fd = fsutil.open_regular(path)
    if fd is None:
        return None
    try:
        chunks = [posix.read(fd, RECORD_READ)]
        while len(chunks[-1]) == RECORD_READ:
            chunks.append(posix.read(fd, RECORD_READ))
    except OSError as err:
        raise StateError(f"{path}: unreadable: {err.strerror}") from None
    finally:
        posix.close(fd)
    return b"".join(chunks)


def read(path):
    """The record at path, or None when there is none. StateError when damaged."""
    blob = _read_bytes(path)
    if blob is None:
        return None
    try:
        data = marshal.loads(blob)
    except (EOFError, ValueError, TypeError):
        raise StateError(f"{path}: damaged record") from None
    if not isinstance(data, dict) or data.get("format") != formats.RECORDS:
        raise StateError(f"{path}: not a format {formats.RECORDS} record")
    return data


def write(path, data):
    """Write the record whole (temp file, then rename) or raise StateError: a short
    write (a file-size limit inherited from the login program, a full /run) must never
    leave a cut record in place, which readers would skip as damaged."""
    try:
        fsutil.write_atomic(path, marshal.dumps(dict(data, format=formats.RECORDS)))
    except OSError as err:
        raise StateError(f"write {path}: {err.strerror}") from None


def delete(path):
    try:
        posix.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        raise StateError(f"remove {path}: {err.strerror}") from None


def _check_key(key):
    if not key or not set(key) <= KEY_CHARS:
        raise StateError(f"invalid session key {key!r}")
    return key


def session_path(run_dir, key):
    return f"{run_dir}/{SESSIONS}/{_check_key(key)}"


def run_path(run_dir, key):
    return f"{run_dir}/{RUNS}/{_check_key(key)}"


def user_path(run_dir, uid):
    return f"{run_dir}/{USERS}/{int(uid)}"


def refs_path(run_dir, cgroup_id):
    return f"{run_dir}/{CGROUPS}/{int(cgroup_id)}"


def exists(run_dir, key):
    """Whether a session record exists (a cheap check before loading anything)."""
    try:
        posix.stat(session_path(run_dir, key))
    except OSError:
        return False
    return True


def read_session(run_dir, key):
    return read(session_path(run_dir, key))


def read_user(run_dir, uid):
    return read(user_path(run_dir, uid))


def read_refs(run_dir, cgroup_id):
    data = read(refs_path(run_dir, cgroup_id)) if cgroup_id else None
    return list(data["sessions"]) if data else []


def write_refs(run_dir, cgroup_id, keys):
    if keys:
        write(refs_path(run_dir, cgroup_id), {"cgroup_id": cgroup_id, "sessions": keys})
    else:
        delete(refs_path(run_dir, cgroup_id))


def names(run_dir, kind):
    try:
        names = posix.listdir(f"{run_dir}/{kind}")
    except FileNotFoundError:
        return []
    return sorted(n for n in names if ".tmp" not in n)


def _all(run_dir, kind, strict=False):
    """The records of one live kind. One carrying "closed_at" is history that has no
    business there (records_closed writes only to closed/): never taken as live."""
    out = []
    for name in names(run_dir, kind):
        try:
            record = read(f"{run_dir}/{kind}/{name}")
        except StateError:
            if strict:
                raise
            continue
        if record is not None and "closed_at" not in record:
            out.append(record)
    return out


# ---- views for the command line (status, reload, gc) ------------------------------

def read_live(run_dir):
    """Every live session, run and user record, strictly read (a damaged one raises
    StateError), once: {SESSIONS: [...], RUNS: [...], USERS: [...]}. reload reads the
    records once per attempt and hands them to live_elements and to the timed sets'
    computation (timed_apply), which read 20,000 files each at 10,000 sessions."""
    return {kind: _all(run_dir, kind, strict=True) for kind in (SESSIONS, RUNS, USERS)}


def _of(run_dir, kind, strict, live):
    return list(live[kind]) if live is not None else _all(run_dir, kind, strict)


def list_sessions(run_dir, strict=False, live=None):
    """Every session record, oldest first (plain dicts, JSON-serialisable); strict: a
    damaged one raises StateError instead of being skipped. live: read_live's answer,
    read already."""
    return sorted(_of(run_dir, SESSIONS, strict, live),
                  key=lambda r: (r.get("opened_at", 0), r["key"]))


def list_runs(run_dir, strict=False, live=None):
    """Every `netfence run` tree's record, oldest first."""
    return sorted(_of(run_dir, RUNS, strict, live),
                  key=lambda r: (r.get("started", 0), r["key"]))


def list_users(run_dir, strict=False, live=None):
    """Every user record; strict: a damaged one raises StateError instead of being
    skipped (for callers that would otherwise remove what it held)."""
    return sorted(_of(run_dir, USERS, strict, live), key=lambda r: r["uid"])


def live_elements(run_dir, unsettled=None, timed_at=None, live=None):
    """{set: [hex key]}: every element the records say should be in the kernel.

    A record marked closing is on its way out (its elements are being, or are to be,
    destroyed) and counts for nothing; a pending "destroy" never counts either.
    A damaged record raises StateError naming it: what it held cannot be known, and
    whoever asks (reload, gc, the undo of a login) would otherwise remove its elements
    as unrecorded, unfencing a live session. Failing leaves the kernel as it is.

    unsettled: a list that gets the records with a pending destroy (an interrupted
    close or undo), whose elements may still be in the kernel although no live
    record needs them. timed_at: an epoch: the timed elements (time windows) the live
    session, run and user records have open then count too (what a pending destroy must
    not take from another session). live: read_live's answer, when read already.
    """
    live = read_live(run_dir) if live is None else live
    users = live[USERS]
    sessions = live[SESSIONS] + live[RUNS]      # run trees: session-scope elements
    if unsettled is not None:
        unsettled += [r for r in sessions + users if "destroy" in r]
    parts = [r.get("session_elements", {}) for r in sessions if not r.get("closing")]
    parts += [r.get("elements", {}) for r in users if not r.get("closing")]
    if timed_at is not None:          # user records: their sessions' user-scope entries
        parts += [{s: list(keys) for s, keys in record_elements(r, timed_at).items()}
                  for r in sessions + users]
    return _union(parts)


def _union(parts):
    """plan.union's answer (every key once per set, in first-seen order), key by key:
    three times faster for records that hold one key per set (60,000 at reload)."""
    merged = {}
    for part in parts:
        for set_name, keys in part.items():
            have = merged.get(set_name)
            if have is None:
                have = merged[set_name] = {}
            for key in keys:
                have[key] = None
    return {set_name: list(keys) for set_name, keys in merged.items()}


def stale_temp_files(run_dir):
    out = []
    for kind in KINDS + (CLOSED,):
        try:
            names = posix.listdir(f"{run_dir}/{kind}")
        except FileNotFoundError:
            continue
        out += [f"{run_dir}/{kind}/{n}" for n in names if ".tmp" in n]
    return out


# ---- closed sessions (records_closed.py; here so that callers need one module) ------

def list_closed(run_dir):
    """Every closed session's and run tree's record, oldest first (closed_at)."""
    from .records_closed import list_closed as listing
    return listing(run_dir)


def find_by_cgroup(run_dir, cgroup_id_low32, at=None, uid=None, sent_after=None):
    """The record of the session or run tree whose cgroup id has these low 32 bits
    (an nflog copy's mark) open at `at`, of the packet's uid (records_closed)."""
    from .records_closed import find_by_cgroup as find
    return find(run_dir, cgroup_id_low32, at, uid, sent_after)


def prune_closed(run_dir, now, keep_s=None):
    """Remove the closed records older than keep_s (default 24 h) and those over the
    cap; returns how many went."""
    from .records_closed import KEEP_S, prune_closed as prune
    return prune(run_dir, now, KEEP_S if keep_s is None else keep_s)


# ---- the boot a record was opened in ------------------------------------------------

BOOT_ID = "/proc/sys/kernel/random/boot_id"
_boot = []


def boot_id():
    """This boot's id (36 characters, read once per process: 27 us cold), "" if
    unknown. Here, not in records_closed: the open stamps it and loads no more."""
    if not _boot:
        try:
            fd = posix.open(BOOT_ID, posix.O_RDONLY | posix.O_CLOEXEC)
            try:
                _boot.append(posix.read(fd, 64).decode("ascii", "replace").strip())
            finally:
                posix.close(fd)
        except OSError:
            _boot.append("")
    return _boot[0]


def stamp_boot(record):
    """Put this boot's id in a record being opened: records_closed.find_by_cgroup
    trusts it over the clocks (a clock step). Unknown (no /proc): left out, the
    clocks decide. Returns record."""
    if boot_id():
        record["boot_id"] = boot_id()
    return record
