"""Closed sessions: run_dir/closed/KEY, the history `netfence log` names denials by.

When a session or a `netfence run` tree closes (the hook, gc, watch), its record is
kept here with "closed_at" (epoch) and, when it counted, "totals" (sent_bytes,
sent_packets, recv_bytes, recv_packets, denied {profile: n}); the hook's close and
gc's close call keep_closed, under the records lock. What a closed record must never
be is a live one:
  - it lives in its own directory, which nothing that lists live records reads
    (records.KINDS has no "closed"), and records._all ignores a record carrying
    "closed_at" wherever it is found;
  - it holds no elements ("session_elements", "user_elements", "timed", "destroy"
    and "closing" are dropped): read as live by mistake, it would still fence and
    keep nothing;
  - a key used again (the same PAM application opening a second session, or a
    "<ppid>-<start time>" repeated after a reboot when run_dir outlives it) is kept
    as KEY-<cgroup id>-<opening time in us>: an earlier closed record is never
    overwritten, and an open never reads closed/ (sessions reads sessions/KEY);
  - it carries the boot it was opened in ("boot_id", /proc/sys/kernel/random/boot_id,
    written by the open into the live record: 27 us cold) and, when the closer's boot
    is another, that one as "closed_boot_id"; find_by_cgroup names only records
    opened in this boot (cgroup ids restart at every boot: their low 32 bits repeat).
    Records written before they carried a boot id are judged by the clocks (opened
    after this boot began, with 60 s of slack), which a forward clock step defeats.

Who had a cgroup at a packet's time (find_by_cgroup): live records opened by then;
closed ones with opened_at <= at <= closed_at + RACE_S (2 s: a copy read just after
its session's close); of these, the packet's uid's. One: that session. Several (a
login nested in another's session cgroup: `su - bob` in alice's scope, root's `su -
alice`, `su - $USER`) or none of the packet's uid: no session, the uid and the keys
("shared_cgroup"). No record open then: None, the log names the packet's uid only
(a process left behind in a cgroup after its session closed is not put on it).
Within a boot, the low 32 bits of a cgroup id repeat only after ~2^31 kernfs nodes
are created (the id's low half is a cyclic 31-bit inode number): a session still
live (or closed within RACE_S) when another cgroup gets its bits is a candidate
with it; the uid tells them apart, and with one uid the entry names no session.

Bounded by gc and watch's periodic gc only (prune_closed, every minute): entries
older than KEEP_S (24 h) go, and over CAP entries it prunes down to CAP, taking first
from the uid that holds the most (oldest first), so that a user opening and closing
sessions in a loop evicts its own history before anyone else's. A close never counts
or prunes (a prune under the records lock cost one user's logout 41.6 ms): between two
gcs closed/ grows by what closes write, ~0.5 KB each (511 bytes measured for an sshd
login with totals; PAM items at their longest add a few hundred bytes). Damaged
entries are removed by the pruning.

Light (the hook's close imports it): posix and records only.
"""

import posix

from . import records
from .errors import StateError

CLOSED = records.CLOSED
KEEP_S = 86400                  # a day of history (the issue: "the last day")
CAP = 4096                      # entries kept at most (docs/hook.md "Closed sessions")
DROPPED = ("session_elements", "user_elements", "timed", "destroy", "closing", "history")


def closed_dir(run_dir):
    return f"{run_dir}/{CLOSED}"


def closed_record(record, now, totals=None):
    """The record to keep: identity without elements, closed_at, totals if known."""
    kept = {k: v for k, v in record.items() if k not in DROPPED}
    kept["closed_at"] = now
    closer = boot_id()
    # opened before records carried their boot, or in an earlier boot (run_dir
    # outlived it): the boot it closed in is said apart
    if kept.get("boot_id") != closer:
        kept["closed_boot_id"] = closer
    if totals is not None:
        kept["totals"] = totals
    return kept


def keep_closed(run_dir, record, now, totals=None):
    """Write the closed record (closed_name: never over another session's, not twice
    for one session: a close that stopped after keeping it is finished later), with
    the boot it closed in. No count, no prune here: a prune under the records lock cost
    one user's close 41.6 ms; gc and watch's periodic gc prune (prune_closed). Returns
    the name. StateError or OSError when it cannot be written (the caller's close goes
    on: losing history never keeps elements in the kernel)."""
    directory = closed_dir(run_dir)
    records.ensure_dir(directory)
    name, kept = closed_name(directory, record)
    if kept:
        return name
    records.write(f"{directory}/{name}", closed_record(record, now, totals))
    return name


def is_kept(run_dir, record):
    """Whether the record's session already has its closed record (a close that
    stopped after keeping it)."""
    return closed_name(closed_dir(run_dir), record)[1]


def closed_name(directory, record):
    """(name, already kept): KEY; when KEY holds another session (the key used
    again), KEY-<cgroup id>-<opening time in us>, which names this session alone. At
    most two lookups, whatever the number of entries."""
    key = record["key"]
    opened = _opened(record)
    names = (key, f"{key}-{int(record.get('cgroup_id') or 0)}-{int(opened * 1e6)}")
    for name in names:
        path = f"{directory}/{name}"
        if not _taken(path):
            return name, False
        if _same_session(path, record):
            return name, True
    return names[1], False           # the same identity, damaged: written again


def _taken(path):
    try:
        posix.lstat(path)
    except FileNotFoundError:
        return False
    return True


def _same_session(path, record):
    try:
        kept = records.read(path)
    except StateError:
        return False
    fields = ("key", "cgroup_id", "opened_at", "started")
    return kept is not None and all(kept.get(f) == record.get(f) for f in fields)


def _entries(run_dir):
    """[(name, record or None when damaged)] of closed/."""
    out = []
    for name in records.names(run_dir, CLOSED):
        try:
            record = records.read(f"{closed_dir(run_dir)}/{name}")
        except StateError:
            record = None
        if record is not None and not isinstance(record.get("closed_at"), (int, float)):
            record = None
        out.append((name, record))
    return out


def list_closed(run_dir):
    """Every readable closed record, oldest first."""
    return sorted((r for _, r in _entries(run_dir) if r is not None),
                  key=lambda r: (r["closed_at"], r.get("key", "")))


RACE_S = 2.0        # a copy read just after its session's close still names it
BOOT_SLACK_S = 60.0  # the boot's start, computed from two clocks, may be off by a step


def boot_id():
    """This boot's id, "" if unknown (records.boot_id: read once per process)."""
    return records.boot_id()


def boot_started():
    """When this boot began (epoch): the reader's test for records of an earlier one."""
    import time
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def find_by_cgroup(run_dir, cgroup_id_low32, at=None, uid=None, sent_after=None):
    """Who had the cgroup with these low 32 bits when the packet was sent (at, epoch):
    the records active then (_active), those of the packet's uid preferred. One left:
    that record. Several (nested logins sharing the cgroup) or none of that uid: no
    session, {"key": None, "uid", "user", "shared_cgroup": [keys]} -- the uid is the
    packet's, or the candidates' when they agree; a session of another uid than the
    packet's is never named. None when no record had the cgroup then. sent_after:
    the earliest time the packet may have been sent, when `at` is only when it was
    read (an egress copy: see DenialRecorder)."""
    candidates = _active(run_dir, cgroup_id_low32, at, sent_after)
    same = [r for r in candidates if uid is None or r.get("uid") == uid]
    if len(same) == 1:
        return same[0]
    if not candidates:
        return None
    if uid is None:
        uids = {r.get("uid") for r in candidates}
        uid = uids.pop() if len(uids) == 1 else None
    users = {r.get("user") for r in same}
    return {"key": None, "uid": uid, "user": users.pop() if len(users) == 1 else None,
            "shared_cgroup": sorted(str(r.get("key")) for r in same or candidates)}


def _active(run_dir, cgroup_id_low32, at, sent_after=None):
    """The records of the cgroup open when the packet was sent: live ones opened by
    `at`, closed ones with opened_at <= at and the earliest possible send time
    (sent_after, else at) <= closed_at + RACE_S (the copy raced the close), all opened
    in this boot (cgroup ids start again at each boot). One session is one candidate:
    during its close it is both closed/KEY and a `closing` sessions/KEY. at None: the
    live ones, else the last closed."""
    def ours(record):
        cgroup_id = record.get("cgroup_id")
        return (isinstance(cgroup_id, int) and cgroup_id & 0xFFFFFFFF == cgroup_id_low32
                and _this_boot(record))
    live = [r for r in records.list_sessions(run_dir) + records.list_runs(run_dir)
            if ours(r)]
    closed = [r for r in list_closed(run_dir) if ours(r)]
    if at is None:
        return _one_each(live or closed[-1:])
    earliest = at if sent_after is None else min(at, sent_after)
    return _one_each([r for r in live if _opened(r) <= at]
                     + [r for r in closed
                        if _opened(r) <= at and earliest <= r["closed_at"] + RACE_S])


def _this_boot(record):
    """Opened in this boot: its "boot_id" (written at open, kept by the close; the
    closer's, when another, is "closed_boot_id") is this one's. A record without it
    (written before records carried it): closed in this boot, if closed, and opened
    after this boot began by the clocks (a forward clock step since fails this test:
    hence the boot id)."""
    if "boot_id" in record:
        return record["boot_id"] == boot_id()
    if record.get("closed_boot_id", boot_id()) != boot_id():
        return False
    return _opened(record) >= boot_started() - BOOT_SLACK_S


def _one_each(candidates):
    """The candidates, one per session (key, cgroup id, opening): the first seen."""
    seen, out = set(), []
    for record in candidates:
        identity = (record.get("key"), record.get("cgroup_id"), _opened(record))
        if identity not in seen:
            seen.add(identity)
            out.append(record)
    return out


def _opened(record):
    opened = record.get("opened_at", record.get("started", 0))
    return opened if isinstance(opened, (int, float)) else 0


def prune_closed(run_dir, now, keep_s=KEEP_S, cap=CAP):
    """Remove the closed records closed more than keep_s ago, damaged ones, and those
    over the cap (see _prune_over_cap). No lock needed: a close only adds names, and
    removing a name twice is harmless. Returns how many went."""
    kept, removed = [], 0
    for name, record in _entries(run_dir):       # read once: each entry is a file
        if record is None or record["closed_at"] < now - keep_s:
            records.delete(f"{closed_dir(run_dir)}/{name}")
            removed += 1
        else:
            kept.append((name, record))
    return removed + _prune_over_cap(run_dir, kept, cap)


def _prune_over_cap(run_dir, entries, target):
    """Down to target entries ([(name, record)], prune_closed's survivors): the
    oldest of the uid that holds the most, again and again. Returns how many went."""
    if len(entries) <= target:
        return 0
    doomed = [name for name, record in entries if record is None]
    by_uid = {}
    for name, record in sorted(((n, r) for n, r in entries if r is not None),
                               key=lambda e: e[1]["closed_at"], reverse=True):
        by_uid.setdefault(record.get("uid"), []).append(name)     # newest first
    while len(entries) - len(doomed) > target:
        biggest = max(by_uid.values(), key=len)
        doomed.append(biggest.pop())                             # its oldest
    for name in doomed:
        records.delete(f"{closed_dir(run_dir)}/{name}")
    return len(doomed)
