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
    "<ppid>-<start time>" repeated after a reboot when run_dir outlives it) gets
    the next free name KEY-2, KEY-3, ...: an earlier closed record is never
    overwritten, and an open never reads closed/ (sessions reads sessions/KEY);
  - find_by_cgroup, given the time of the packet, skips records that were not open
    then (cgroup ids restart at every boot: their low 32 bits repeat).

Bounded: entries older than KEEP_S (24 h) go at gc and watch's pruning (prune_closed);
and whenever a close finds more than CAP entries, the closer prunes down to 3/4 of CAP,
taking first from the uid that holds the most (oldest first), so that a user opening
and closing sessions in a loop evicts its own history before anyone else's, and /run
holds at most CAP records (~1 KB each). Damaged entries are removed by the pruning.

Light (the hook's close imports it): posix and records only.
"""

import posix

from . import records
from .errors import StateError

CLOSED = "closed"
KEEP_S = 86400                  # a day of history (the issue: "the last day")
CAP = 4096                      # entries kept at most (docs/hook.md "Closed sessions")
OPEN_SLACK_S = 1.0              # a denial may be read back just after the close began
DROPPED = ("session_elements", "user_elements", "timed", "destroy", "closing")


def closed_dir(run_dir):
    return f"{run_dir}/{CLOSED}"


def closed_record(record, now, totals=None):
    """The record to keep: identity without elements, closed_at, totals if known."""
    kept = {k: v for k, v in record.items() if k not in DROPPED}
    kept["closed_at"] = now
    if totals is not None:
        kept["totals"] = totals
    return kept


def keep_closed(run_dir, record, now, totals=None, cap=CAP):
    """Write the closed record under a free name, then prune over the cap. Returns the
    name written. StateError when it cannot be written (the caller's close goes on:
    losing history never keeps elements in the kernel)."""
    directory = closed_dir(run_dir)
    records.ensure_dir(directory)
    present = set(records.names(run_dir, CLOSED))
    name = free_name(record["key"], present)
    records.write(f"{directory}/{name}", closed_record(record, now, totals))
    if len(present) + 1 > cap:
        _prune_over_cap(run_dir, (cap * 3) // 4)
    return name


def free_name(key, present):
    """KEY, else KEY-2, KEY-3, ...: the first not in present."""
    if key not in present:
        return key
    number = 2
    while f"{key}-{number}" in present:
        number += 1
    return f"{key}-{number}"


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


def find_by_cgroup(run_dir, cgroup_id_low32, at=None):
    """The record whose cgroup id has these low 32 bits: a live session or run tree
    first, then the closed ones newest first. at (epoch, the packet's time): only a
    record open at that time (opened before it, closed after it)."""
    def matches(record):
        cgroup_id = record.get("cgroup_id")
        if not isinstance(cgroup_id, int) or cgroup_id & 0xFFFFFFFF != cgroup_id_low32:
            return False
        if at is None:
            return True
        opened = record.get("opened_at", record.get("started", 0))
        return opened <= at and record.get("closed_at", at) + OPEN_SLACK_S >= at
    live = records.list_sessions(run_dir) + records.list_runs(run_dir)
    for record in reversed(live):                       # newest first
        if matches(record):
            return record
    for record in reversed(list_closed(run_dir)):
        if matches(record):
            return record
    return None


def prune_closed(run_dir, now, keep_s=KEEP_S, cap=CAP):
    """Remove the closed records closed more than keep_s ago, damaged ones, and those
    over the cap (see _prune_over_cap). No lock needed: a close only adds names, and
    removing a name twice is harmless. Returns how many went."""
    removed = 0
    for name, record in _entries(run_dir):
        if record is None or record["closed_at"] < now - keep_s:
            records.delete(f"{closed_dir(run_dir)}/{name}")
            removed += 1
    return removed + _prune_over_cap(run_dir, cap)


def _prune_over_cap(run_dir, target):
    """Down to target entries: damaged ones first, then the oldest of the uid that
    holds the most, again and again. Returns how many went."""
    entries = _entries(run_dir)
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
