"""Temporary grants and restrictions: state_dir/grants.json and its transactions.

  netfence grant USER|--session KEY --profile P --for DURATION --reason TEXT
  netfence restrict USER --profile P --for DURATION --reason TEXT
  netfence grants [--json]          netfence revoke ID

grants.json is the intent; the kernel's timed sets (guid-P, gucg-P, gscg-P, ruid-P and
the guard any-ruid, setkinds.GRANT_KINDS / RESTRICT_KINDS) follow it through
timed_apply.reconcile, which timed.desired tells what they should hold. Every element
carries a kernel timeout equal to the time left, so a grant or a restriction ends on
time with nothing of netfence running, and survives reload and watch restarts (both
rebuild the timed sets from this file).

    {"format": 1, "grants": [{"id": "g-<8 hex>", "kind": "grant"|"restrict",
      "profile": P, "uid": int, "user": name,                  # user target
                 | "session": KEY, "cgroup_id": int, "uid": int, # session target
      "created": epoch, "expires": epoch, "reason": str, "by": str}]}

Root-owned 0600, written whole (fsutil.write_atomic, fsynced) under the state lock,
expired entries pruned at every write. A damaged or foreign-owned file is an error
naming it, for every reader: treated as "no grants", it would make the next
reconcile destroy the restrictions in force (an incident responder's cut undone by a
cut file). Every write also writes grants.good.json (same format and checks): while
grants.json is untrusted, restore and reconcile use the RESTRICTIONS of that copy still
in force (kept_restrictions; never its grants), destroy nothing in the grant and
restriction sets, and still report the error. The kernel keeps what it holds until
each element's own timeout.

One change (add or revoke) runs: state lock -> read -> check -> write the file
(intent) -> reconcile (one kernel batch) -> log; when the kernel refuses, the
previous file goes back, so nothing is half-applied.
"""

import json
import math
import os
import posix
import secrets
import time

from . import fsutil
from .errors import NetfenceError, StateError, UsageError
from .hooklog import field

FILE = "grants.json"
GOOD_FILE = "grants.good.json"  # the last grants.json written: see kept_restrictions
FORMAT = 1
MAX_BYTES = 4 << 20            # far above MAX_ACTIVE entries; a bigger file is damage
MAX_ACTIVE = 1000              # active grants and restrictions at once
KINDS = ("grant", "restrict")
ID_PREFIX, ID_HEX = "g-", 8
MAX_UID = 4294967294           # (uid_t)-1 means "no uid"
MAX_CGROUP_ID = (1 << 64) - 1  # a cgroup id is a u64 key
MAX_SPAN = 31 * 86400          # expires - created: `--for` takes 30 days, + slack
CLOCK_SLACK = 366 * 86400      # "created" ahead of a clock months behind (no RTC at boot)
_NUMBER = (int, float)


def path_of(state_dir):
    return os.path.join(state_dir, FILE)


def good_path_of(state_dir):
    return os.path.join(state_dir, GOOD_FILE)


# ---- reading ----------------------------------------------------------------------

def read_all(state_dir, now=None, path=None):
    """Every entry of grants.json (or `path`), expired or not; [] when there is none.
    StateError naming the file when it is damaged, too big, of another format, holds
    an entry the kernel could not take (entry_problem), or is not owned by us (root)
    alone."""
    path = path or path_of(state_dir)
    fd = fsutil.open_regular(path)
    if fd is None:
        return []
    try:
        problem = fsutil.owner_problem(posix.fstat(fd), posix.geteuid())
    except OSError as err:
        posix.close(fd)
        raise StateError(f"{path}: unreadable: {err.strerror}") from None
    if problem:
        posix.close(fd)
        raise StateError(f"{path}: {problem}: refusing to trust its grants and "
                         f"restrictions")
    try:
        blob = fsutil.read_all(fd, limit=MAX_BYTES)        # closes fd
    except OSError as err:
        raise StateError(f"{path}: unreadable: {err.strerror}") from None
    return parse(blob, path, now)


def parse(blob, path=FILE, now=None):
    """The entries of grants.json's bytes; StateError naming path and the problem."""
    now = time.time() if now is None else now
    try:
        data = json.loads(blob)
    except (ValueError, UnicodeDecodeError) as err:
        raise StateError(f"{path}: damaged (not JSON: {err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise StateError(f"{path}: not a format {FORMAT} grants file (format {found!r})")
    entries = data.get("grants")
    if not isinstance(entries, list):
        raise StateError(f"{path}: damaged: \"grants\" is not a list")
    for number, entry in enumerate(entries, 1):
        problem = entry_problem(entry, now)
        if problem:
            name = entry.get("id") if isinstance(entry, dict) else None
            raise StateError(f"{path}: damaged: entry {number}"
                             f"{f' ({name!r})' if name else ''}: {problem}")
    return entries


def entry_problem(entry, now):
    """Why one entry is not a grant as this version writes it at now, or "". Bounds
    what the kernel takes: a timeout of centuries is refused (ERANGE) and a key past
    64 bits cannot be encoded, and either would stop every restore of the table."""
    if not isinstance(entry, dict):
        return "not an object"
    checks = [("id", is_grant_id), ("kind", lambda v: v in KINDS),
              ("profile", _is_text), ("uid", _is_uid), ("created", _is_time),
              ("expires", _is_time), ("reason", _is_text), ("by", _is_text)]
    if "session" in entry:
        checks += [("session", _is_text), ("cgroup_id", _is_count)]
        if entry.get("kind") == "restrict":
            return "a restriction with a session target"
    else:
        checks.append(("user", _is_text))
    for key, check in checks:
        if key not in entry:
            return f"no {key!r}"
        if not check(entry[key]):
            return f"invalid {key!r}: {entry[key]!r}"
    return _span_problem(entry, now)


def _span_problem(entry, now):
    if entry.get("cgroup_id", 0) > MAX_CGROUP_ID:
        return f"invalid 'cgroup_id': {entry['cgroup_id']!r} (more than 64 bits)"
    if entry["created"] > now + CLOCK_SLACK:
        return f"'created' {entry['created']!r} is in the future"
    if entry["expires"] - entry["created"] > MAX_SPAN:
        return (f"'expires' {entry['expires']!r} is more than {MAX_SPAN // 86400} days "
                f"after 'created'")
    return ""


def is_grant_id(value):
    return (isinstance(value, str) and len(value) == len(ID_PREFIX) + ID_HEX
            and value.startswith(ID_PREFIX)
            and all(c in "0123456789abcdef" for c in value[len(ID_PREFIX):]))


def _is_text(value):
    return isinstance(value, str) and value != "" and value.isprintable()


def _is_count(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_uid(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_UID


def _is_time(value):
    return (isinstance(value, _NUMBER) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def active(state_dir, now):
    """The grants and restrictions of state_dir/grants.json still in force at now
    (expires after now); [] without a file. StateError when the file cannot be
    trusted: never guess "none" (see the module's docstring)."""
    return [g for g in read_all(state_dir, now) if g["expires"] > now]


def kept_restrictions(state_dir, now):
    """The restrictions (never the grants: a revoked grant must not come back) of the
    last-good copy still in force at now: what restore and reconcile keep when
    grants.json cannot be trusted, so that a damaged file and a flush do not lift an
    incident responder's cut. [] when the copy is missing or untrusted too."""
    try:
        entries = read_all(state_dir, now, good_path_of(state_dir))
    except StateError:
        return []
    return [g for g in entries if g["kind"] == "restrict" and g["expires"] > now]


# ---- writing ----------------------------------------------------------------------

def encode(entries, now):
    """grants.json's bytes: the entries still in force at now (the others pruned)."""
    kept = [g for g in entries if g["expires"] > now]
    return json.dumps({"format": FORMAT, "grants": kept}, indent=1, sort_keys=True,
                      ensure_ascii=True).encode() + b"\n"


def write(state_dir, entries, now):
    """Replace grants.json whole, fsynced, root-only (0600), then its last-good copy
    (kept_restrictions); StateError on failure, with grants.json as it was."""
    path = path_of(state_dir)
    blob = encode(entries, now)
    try:
        fsutil.write_atomic(path, blob, mode=0o600, sync=True)
    except OSError as err:
        raise StateError(f"write {path}: {err.strerror}; nothing was changed") from None
    _write_good(state_dir, blob)


def _write_good(state_dir, blob):
    """The last-good copy of a grants.json just written (None: none); a failure is
    logged, not raised: grants.json, the intent, is written, the kernel goes next."""
    from .apply import log_event
    path = good_path_of(state_dir)
    try:
        _replace(path, blob)
    except OSError as err:
        log_event(f"event=grants-copy result=failed file={field(path)} "
                  f"error={field(err.strerror or str(err))}")


def _replace(path, blob):
    """Write blob whole, fsynced, 0600; None: remove the file (if it is there)."""
    try:
        if blob is None:
            os.unlink(path)
        else:
            fsutil.write_atomic(path, blob, mode=0o600, sync=True)
    except FileNotFoundError:
        pass


def _put_back(state_dir, previous):
    """grants.json as it was before a change the kernel did not take (None: absent)."""
    path = path_of(state_dir)
    try:
        _replace(path, previous)
    except OSError as err:
        raise StateError(f"{path}: could not be put back ({err.strerror}): it holds "
                         f"the change the kernel refused, which the next reconcile "
                         f"tries again (`netfence grants` shows it, `revoke` ends "
                         f"it)") from None
    _write_good(state_dir, previous)


# ---- decisions (pure) ---------------------------------------------------------------

def new_id(entries):
    taken = {g["id"] for g in entries}
    while True:
        candidate = ID_PREFIX + secrets.token_hex(ID_HEX // 2)
        if candidate not in taken:
            return candidate


def target_of(entry):
    """("user", uid) or ("session", key): what a grant or restriction is for."""
    return ("session", entry["session"]) if "session" in entry else ("user", entry["uid"])


def conflict(entries, new, now):
    """Why `new` cannot join the entries in force at now, or "".

    A grant overrides whatever the profile denies (the first rules of its denial
    chains out-P.deny / .reset / .reject return), so a grant and a restriction of one uid and profile would leave the uid exempt
    whatever the order they came in: refused both ways, naming the one to revoke.
    The same target, profile and kind twice is refused too (one line per decision
    in `netfence grants`; revoke it and give the new duration)."""
    for old in entries:
        if old["expires"] <= now or old["profile"] != new["profile"]:
            continue
        if old["kind"] == new["kind"] and target_of(old) == target_of(new):
            return (f"{old['id']} already {_verb(old)} {describe(old)} until "
                    f"{show_time(old['expires'])}: revoke it first")
        if old["kind"] != new["kind"] and old["uid"] == new["uid"]:
            return (f"{old['id']} {_verb(old)} {describe(old)} until "
                    f"{show_time(old['expires'])}; a grant is consulted before the "
                    f"profile's rules, so with both the uid would stay exempt: "
                    f"revoke {old['id']} first")
    if sum(1 for g in entries if g["expires"] > now) >= MAX_ACTIVE:
        return f"{MAX_ACTIVE} grants and restrictions are active already"
    return ""


def _verb(entry):
    return "exempts" if entry["kind"] == "grant" else "restricts"


def describe(entry):
    """'user alice (uid 1000) from profile web' (a grant), '... with profile web' (a
    restriction), or 'session KEY (uid N) ...'."""
    kind, target = target_of(entry)
    who = (f"user {entry['user']} (uid {target})" if kind == "user"
           else f"session {target} (uid {entry['uid']})")
    return f"{who} {'from' if entry['kind'] == 'grant' else 'with'} profile {entry['profile']}"


def show_time(epoch):
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(epoch))


def iso_utc(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def event_line(event, entry, by, **extra):
    """The one key=value log line of a grant, restriction or revoke (hooklog.field
    quotes any value that could break or forge a line)."""
    kind, target = target_of(entry)
    fields = {"event": event, "id": entry["id"], "by": by,
              kind: entry["user"] if kind == "user" else target, "uid": entry["uid"],
              "profile": entry["profile"], "until": iso_utc(entry["expires"]),
              "reason": entry["reason"], **extra}
    return " ".join(f"{k}={field(v)}" for k, v in fields.items())


# ---- transactions -------------------------------------------------------------------

def add(paths, entry, seconds, by, recheck=None):
    """Record `entry` (grants_cli built and checked it: kind, target, profile,
    reason) for `seconds` from now and apply it; returns it whole. recheck: called
    first under the state lock (the profile is still applied: a reload takes the
    same lock). UsageError for a conflict; the kernel's error, with grants.json put
    back, when it refuses."""
    from .apply import state_lock
    with state_lock(paths.state_dir):
        if recheck is not None:
            recheck()
        now = time.time()           # after the lock: the duration starts when applied
        previous = fsutil.read_regular(path_of(paths.state_dir))
        entries = read_all(paths.state_dir)
        entry = dict(entry, id=new_id(entries), by=by, created=round(now, 3),
                     expires=round(now + seconds, 3))
        problem = entry_problem(entry, now)
        if problem:         # never write what every reader would then refuse
            raise StateError(f"refusing to record {entry!r}: {problem}")
        problem = conflict(entries, entry, now)
        if problem:
            raise UsageError(problem)
        _apply(paths, previous, entries + [entry], now, event_line(entry["kind"], entry, by))
    return entry


def revoke(paths, grant_id, by):
    """End one grant or restriction now; returns its entry. UsageError when no entry
    in force has that id."""
    from .apply import state_lock
    if not is_grant_id(grant_id):
        raise UsageError(f"invalid id {grant_id!r}: ids look like g-0123abcd "
                         f"(`netfence grants` lists them)")
    with state_lock(paths.state_dir):
        now = time.time()
        previous = fsutil.read_regular(path_of(paths.state_dir))
        entries = read_all(paths.state_dir)
        found = [g for g in entries if g["id"] == grant_id and g["expires"] > now]
        if not found:
            raise UsageError(f"no grant or restriction {grant_id} in force "
                             f"(`netfence grants` lists them)")
        rest = [g for g in entries if g["id"] != grant_id]
        _apply(paths, previous, rest, now,
               event_line("revoke", found[0], by, kind=found[0]["kind"]), revoking=True)
    return found[0]


def _apply(paths, previous, entries, now, line, revoking=False):
    """Intent first: the file, then one kernel batch; the file put back if that
    fails. The line is logged either way (result=failed with the error).

    revoking: without our table (flushed, deleted, no policy applied) the kernel
    holds nothing to remove, and the entry must not come back with the table (gc and
    reload rebuild it from this file), so the revoke stands."""
    from .apply import log_event
    from .timed_apply import TableMissing, reconcile
    write(paths.state_dir, entries, now)
    try:
        reconcile(paths.run_dir, paths.state_dir)
    except TableMissing as err:
        if not revoking:
            _failed(paths, previous, line, err)
        log_event(f"{line} table=missing")
    except BaseException as err:
        _failed(paths, previous, line, err)
    else:
        log_event(line)


def _failed(paths, previous, line, err):
    """Put grants.json back, log the failure, raise."""
    from .apply import log_event
    try:
        _put_back(paths.state_dir, previous)
    finally:
        log_event(f"{line} result=failed error={field(str(err) or type(err).__name__)}")
    if isinstance(err, NetfenceError):
        raise StateError(f"{err}; grants.json was put back, nothing changed") from None
    raise err
