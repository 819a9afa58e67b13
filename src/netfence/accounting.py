"""Accounting, the pure part: the live records joined with the kernel's per-element
counters (counters.read_counters), and the table `netfence status` prints.

The kernel counts per cgroup id (docs/accounting.md): a login that gets a counting
profile holds its session cgroup's key (the session element) and its user cgroup's key
(the user element) in acct-out, acct-in and denied-P for each counting profile P. A
record is joined by the keys it holds in those sets, never by a key computed from its
cgroup alone: a session the policy does not count has nothing there and shows "-"
(None in JSON), not a 0 that would claim it sent nothing.

counters: {set name: {hex key: (packets, bytes)}}. A key a record holds that the
kernel lacks (a table being restored, an element lost) shows "-" too: unknown, not 0.
"""

from .setkinds import ACCT_IN, ACCT_OUT, DENIED_PREFIX, SCG, UCG, is_counted, key_number

MISSING = "-"
TRAFFIC = ("sent_bytes", "sent_packets", "recv_bytes", "recv_packets")


def held_keys(record):
    """{counted set: {hex key}} of one session, run or user record: what it put in
    the accounting sets, whichever of its element lists holds them."""
    held = {}
    for part in ("session_elements", "user_elements", "elements"):
        for set_name, keys in (record.get(part) or {}).items():
            if is_counted(set_name):
                held.setdefault(set_name, set()).update(keys)
    return held


def usage(held, key, counters):
    """What the kernel counted for one key the record holds: {"sent_bytes",
    "sent_packets", "recv_bytes", "recv_packets", "denied": {profile: packets}}, each
    None when the record does not hold the key there or the kernel has no counter for
    it; "counted": whether the record holds the key in any accounting set."""
    def counter(set_name):
        if key is None or key not in held.get(set_name, ()):
            return None
        return counters.get(set_name, {}).get(key)

    out, sent, recv = {}, counter(ACCT_OUT), counter(ACCT_IN)
    out["sent_packets"], out["sent_bytes"] = sent or (None, None)
    out["recv_packets"], out["recv_bytes"] = recv or (None, None)
    denied = {}
    for set_name in sorted(s for s in held if s.startswith(DENIED_PREFIX)):
        if key in held[set_name]:
            value = counter(set_name)
            denied[set_name[len(DENIED_PREFIX):]] = None if value is None else value[0]
    out["denied"] = denied or None
    out["counted"] = key is not None and any(key in keys for keys in held.values())
    return out


def session_rows(sessions, runs, counters):
    """One row per live session and `netfence run` tree: who, and what its session
    cgroup's elements counted."""
    rows = []
    for kind, record in [("session", r) for r in sessions] + [("run", r) for r in runs]:
        cgroup_id = record.get("cgroup_id")
        key = SCG.key(cgroup_id) if isinstance(cgroup_id, int) else None
        row = {"kind": kind, "key": record.get("key", ""), "user": record.get("user", ""),
               "uid": record.get("uid"),
               "service": record.get("service", "") if kind == "session" else "run",
               "rhost": record.get("rhost", ""), "tty": record.get("tty", ""),
               "cgroup_id": cgroup_id}
        if record.get("closing"):
            row["closing"] = True
        rows.append({**row, **usage(held_keys(record), key, counters)})
    return rows


def user_rows(sessions, users, counters):
    """One row per user cgroup that some live record holds in an accounting set (a
    user's totals: every socket in that cgroup, whichever session made it), with the
    keys of its live sessions. The user records hold the user elements (they outlive
    the sessions while the user has processes); a session record holding its user
    cgroup's key counts too."""
    found, live = {}, {}

    def hold(record, set_name, key):
        entry = found.setdefault((record.get("uid"), key), [record.get("user", ""), {}])
        entry[1].setdefault(set_name, set()).add(key)

    for record in users:
        for set_name, keys in held_keys(record).items():
            for key in keys:
                hold(record, set_name, key)
    for record in sessions:
        if not isinstance(record.get("user_cgroup_id"), int):
            continue
        key = UCG.key(record["user_cgroup_id"])
        live.setdefault((record.get("uid"), key), []).append(record["key"])
        for set_name, keys in held_keys(record).items():
            if key in keys:
                hold(record, set_name, key)
    return [{"user": user, "uid": uid, "cgroup_id": key_number(key),
             "sessions": live.get((uid, key), []), **usage(held, key, counters)}
            for (uid, key), (user, held) in sorted(found.items(), key=_by_uid)]


def _by_uid(item):
    (uid, key), _ = item
    return (not isinstance(uid, int), uid if isinstance(uid, int) else 0, key)


def join(sessions, runs, users, counters):
    """{"sessions": session_rows, "users": user_rows}: what status and metrics show."""
    return {"sessions": session_rows(sessions, runs, counters),
            "users": user_rows(sessions, users, counters)}


def profile_modes(applied):
    """{profile: {"mode": "enforce"|"monitor", "account": bool}} of the applied policy
    (an older snapshot, without modes, enforces everything)."""
    return {name: {"mode": part.get("mode") or "enforce", "account": "denied_set" in part}
            for name, part in ((applied.get("login") or {}).get("profiles") or {}).items()}


# ---- the text table ---------------------------------------------------------------

def human_bytes(count):
    """1023 B, 1.0 KiB, 12.3 MiB: IEC units, one decimal; None: "-"."""
    if count is None:
        return MISSING
    value, unit = float(count), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024 or unit == "PiB":
            break
        value /= 1024
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"


def denied_text(denied):
    """"-" (nothing counted), "3" (one profile), "3 (web:2,lab:1)"."""
    if not denied:
        return MISSING
    known = [n for n in denied.values() if n is not None]
    if not known:
        return MISSING
    total = str(sum(known))
    if len(denied) == 1:
        return total
    parts = ",".join(f"{p}:{MISSING if n is None else n}" for p, n in sorted(denied.items()))
    return f"{total} ({parts})"


def printable(value):
    """A value for one table cell: "-" when empty; control characters, spaces and
    backslashes escaped, so that a value (an rhost, a user name from NSS) can neither
    start a line of its own nor shift the columns."""
    text = "" if value is None else str(value)
    if not text:
        return MISSING
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif char.isprintable() and not char.isspace():
            out.append(char)
        else:
            out.append(char.encode("unicode_escape", "backslashreplace").decode("ascii")
                       if char != " " else "\\x20")
    return "".join(out)


SESSION_COLUMNS = ("USER", "UID", "SESSION", "SERVICE", "RHOST", "SENT", "RECEIVED",
                   "DENIED")
USER_COLUMNS = ("USER", "UID", "USER CGROUP", "SESSIONS", "SENT", "RECEIVED", "DENIED")


def _session_cells(row):
    key = printable(row["key"]) + (" (closing)" if row.get("closing") else "")
    return (printable(row["user"]), printable(row["uid"]), key, printable(row["service"]),
            printable(row["rhost"]), human_bytes(row["sent_bytes"]), human_bytes(row["recv_bytes"]),
            denied_text(row["denied"]))


def _user_cells(row):
    return (printable(row["user"]), printable(row["uid"]), str(row["cgroup_id"]),
            str(len(row["sessions"])),
            human_bytes(row["sent_bytes"]), human_bytes(row["recv_bytes"]),
            denied_text(row["denied"]))


def _columns(head, rows):
    """Aligned lines; every cell already made printable (a value from a record by
    printable(), the numbers by their formatters)."""
    cells = [head] + rows
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
            for row in cells]


def format_table(accounting):
    """The status lines: every live session (and run tree), then the per-user totals;
    sent and received are IP packet lengths, in IEC units."""
    sessions, users = accounting["sessions"], accounting["users"]
    counted = sum(1 for row in sessions if row["counted"])
    lines = [f"accounting (sent, received: IP packet lengths; \"-\": not counted): "
             f"{counted} of {len(sessions)} sessions and run trees counted"]
    if sessions:
        lines += _columns(SESSION_COLUMNS, [_session_cells(r) for r in sessions])
    lines.append(f"per user (user cgroups): {len(users)}")
    if users:
        lines += _columns(USER_COLUMNS, [_user_cells(r) for r in users])
    return lines
