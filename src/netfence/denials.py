"""One logged denial -> the entry `netfence log` stores and shows: pure.

Who: emit-P lends the packet's mark the low 32 bits of its socket's session cgroup id
while nflog copies it (prefix "netfence P"); the session record whose cgroup id has
those bits names the user, session, service, rhost and tty (the caller finds it with
records.find_by_cgroup: the records open at the packet's time, of its uid; a cgroup
several logins share gives no session, the uid and "shared_cgroup"). Prefix "netfence P nocg":
the packet had no socket, or one outside the session level: the mark is the packet's
own, so no session is named; the uid is nflog's NFULA_UID when the packet had one.
What: the profile is in the prefix; the rule and its action come from running the
profile's chain on the copied headers (evaluate.py); the rule's file:line from the
snapshot's "locations". A profile in monitor mode let the packet through: its verdict
is "would deny" / "would reject".

Everything here comes from a user in some way (PAM items, the packet): the entry is
JSON (escaped by json), and `text_line` passes every value through hooklog.field.
"""

import time

from . import evaluate
from .hooklog import field
from .setkinds import LOG_PREFIX, NO_CGROUP

FIELDS = ("time", "user", "uid", "session", "service", "rhost", "tty", "profile", "rule",
          "rule_number", "direction", "proto", "src", "dst", "sport", "dport", "verdict",
          "mode", "cgroup_id_low32", "shared_cgroup")
VERDICTS = ("deny", "reject", "would deny", "would reject")
UNKNOWN_RULE = "unknown"
PLAUSIBLE_S = 60.0            # a copy's own timestamp further from now is not trusted
TIME_RANGE = (0.0, float(1 << 33))   # times shown as dates (2^33 s: the year 2242)


def parse_prefix(prefix):
    """"netfence P" -> (P, True); "netfence P nocg" -> (P, False); None if not ours."""
    words = prefix.split(" ")
    if len(words) == 2 and words[0] == LOG_PREFIX and words[1]:
        return words[1], True
    if len(words) == 3 and words[0] == LOG_PREFIX and words[1] and words[2] == NO_CGROUP:
        return words[1], False
    return None


def build_entry(packet, snapshot, record, name_of_uid=None, at=None):
    """packet: nflog.parse_packet's dict; snapshot: compiled.json's dict; record: the
    session (or run) record of the mark's cgroup, or None; name_of_uid: uid -> account
    name (or None) for a denial no record names (watch gives none: `user` is then
    null, and `netfence log` names the uid when it shows the entry). None when the
    prefix is not ours. at: the copy's time (copy_time) when the caller took it."""
    parsed = parse_prefix(packet["prefix"])
    if parsed is None:
        return None
    profile, has_cgroup = parsed
    entry = dict.fromkeys(FIELDS)
    entry.update(time=copy_time(packet["time"]) if at is None else at, profile=profile,
                 direction=packet["direction"],
                 cgroup_id_low32=mark_of(packet) if has_cgroup else None)
    entry.update(_identity(packet, record if has_cgroup else None, name_of_uid))
    headers = evaluate.parse_ip(packet["payload"])
    if headers is not None:
        entry.update({k: headers[k] for k in ("proto", "src", "dst", "sport", "dport")})
    entry.update(_rule(snapshot, profile, packet, headers))
    return entry


def mark_of(packet):
    """The copy's mark: nflog leaves NFULA_MARK out when the mark is 0 (a session
    cgroup id whose low 32 bits are 0)."""
    return packet["mark"] or 0


def copy_time(stamp, now=None):
    """The kernel's timestamp of the copy when it is plausible, else now: nflog sends
    one only on the input path, and a packet's timestamp may be of another clock
    (TCP's departure times are monotonic); the copy is read within milliseconds."""
    now = time.time() if now is None else now
    return stamp if stamp is not None and abs(stamp - now) < PLAUSIBLE_S else now


def _identity(packet, record, name_of_uid):
    """A session's record names everything; a shared cgroup (find_by_cgroup: nested
    logins, or none of the packet's uid) names the uid and the user only, with the
    candidates' keys; no record: the packet's uid."""
    if record is not None and record.get("key") is not None:
        return {"user": record.get("user"), "uid": record.get("uid"),
                "session": record.get("key"),
                "service": record.get("service") or record.get("kind"),
                "rhost": record.get("rhost"), "tty": record.get("tty")}
    uid = packet["uid"] if record is None else record.get("uid")
    name = None if record is None else record.get("user")
    if name is None and name_of_uid and uid is not None:
        name = name_of_uid(uid)
    return {"uid": uid, "user": name,
            "shared_cgroup": None if record is None else record.get("shared_cgroup")}


def _rule(snapshot, profile, packet, headers):
    """rule, rule_number, verdict and mode of the denial."""
    login_profile = snapshot.get("login", {}).get("profiles", {}).get(profile, {})
    mode = login_profile.get("mode", "enforce")
    direction = packet["direction"]
    found = None
    if headers is not None and direction is not None:
        chain = ("out-" if direction == "egress" else "in-") + profile
        table = snapshot.get("table", {})
        found = evaluate.first_match(table.get("rules", []), chain, headers,
                                     packet["outdev"], packet["indev"], table.get("sets", []))
    if found is None or found[1] == "allow":
        rule, number, action = UNKNOWN_RULE, None, "deny"
    else:
        comment, action = found
        number = evaluate.rule_number(comment)
        rule = "default" if number is None else _location(snapshot, profile, direction,
                                                         number, comment)
    verdict = f"would {action}" if mode == "monitor" else action
    return {"rule": rule, "rule_number": number, "verdict": verdict, "mode": mode}


def _location(snapshot, profile, direction, number, comment):
    """file:line of rule `number`; the table's comment when the snapshot predates
    "locations" (compiled by an older netfence: `netfence reload` adds them)."""
    places = snapshot.get("locations", {}).get(profile, {}).get(direction, [])
    return places[number - 1] if 0 < number <= len(places) else comment


def text_line(entry):
    """One line for a person: every value neutralised (hooklog.field: a repr when it
    holds a space, '=', a quote or a control character), none able to forge a line.
    A field the entry lacks (written by another version) shows as missing."""
    entry = {**dict.fromkeys(FIELDS), **entry}
    named = {key: _shown(entry[key], "") for key in
             ("session", "service", "rhost", "tty", "profile", "rule")}
    if isinstance(entry["shared_cgroup"], list):
        named = {"session": named["session"],
                 "shared_cgroup": field(",".join(map(str, entry["shared_cgroup"]))),
                 **named}
    verdict = entry["verdict"]
    return " ".join([
        shown_time(entry["time"]), f"{_shown(entry['user'])}({_shown(entry['uid'])})",
        *(f"{key}={value}" for key, value in named.items()),
        _shown(entry["direction"]), _shown(entry["proto"]),
        _endpoint(entry["src"], entry["sport"]), "->",
        _endpoint(entry["dst"], entry["dport"]),
        verdict if verdict in VERDICTS else _shown(verdict)])


def shown_time(value):
    """Local date and time; a stored time out of TIME_RANGE (or no number: written by
    hand, by another version) as it is, never a traceback."""
    if isinstance(value, (int, float)) and TIME_RANGE[0] < value < TIME_RANGE[1]:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(value))
    return field(repr(value))


def _shown(value, missing="?"):
    """hooklog.field of a value; `missing` ("-" once through field) for None."""
    return field(missing if value is None else value)


def _endpoint(address, port):
    if address is None:
        return "?"
    shown = f"[{address}]" if ":" in str(address) else str(address)
    return field(shown if port is None else f"{shown}:{port}")
