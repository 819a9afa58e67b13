"""`netfence explain`: what a login would get, and the rules that means, without applying."""

import pwd
import time
from datetime import datetime

from . import ir, render, resolve, timed
from .accounts import group_names
from .apply import compile_from
from .errors import UsageError
from .matcher import LoginFacts, match_login
from .snapshot import read_snapshot

DAYS = ("Mo", "Tu", "We", "Th", "Fr", "Sa", "Su")


def _prepare(paths, user, service, rhost, tty, at):
    """(account, groups, epoch of --at, compiled snapshot, facts, decision); a bad
    argument (an unknown user, an unreadable --at) is a UsageError."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"no such user: {user!r}") from None
    groups = group_names(entry.pw_name, entry.pw_gid)
    when = parse_when(at)
    _, snap = compile_from(paths)
    facts = LoginFacts(user=entry.pw_name, uid=entry.pw_uid, groups=groups,
                       service=service, rhost=rhost, tty=tty)
    return entry, groups, when, snap, facts, match_login(snap["login"], facts)


def explain(paths, user, service, rhost, tty, at):
    entry, groups, when, snap, _facts, decision = _prepare(paths, user, service, rhost,
                                                           tty, at)
    weekday, minute = _clock(when)
    login = snap["login"]
    lines = [f"login: user {entry.pw_name} (uid {entry.pw_uid}; groups "
             f"{', '.join(sorted(groups)) or '-'}), service {service}, "
             f"rhost {rhost or '- (local)'}, tty {tty or '-'}, at {DAYS[weekday]} "
             f"{minute // 60:02d}:{minute % 60:02d}"]
    lines += _matched_rules(login, decision)
    lines += _scopes(entry.pw_uid, decision)
    lines += _timed_lines(login, decision, when)
    always, fencing = _always_lines(snap["always"], entry)
    lines += always
    lines += mode_lines(login, _profiles_of(decision, fencing))
    if not decision.empty or always:
        lines += _chains(snap, decision)
    applied = read_snapshot(paths.state_dir)
    if applied is None or applied.get("policy_id") != snap["policy_id"]:
        lines.append("note: this is the policy in the files, not yet applied: "
                     "run `netfence reload` to apply it")
    return "\n".join(lines) + "\n"


def explain_state(paths, user, service, rhost, tty, at):
    """What explain prints, as one JSON-ready dict (`netfence explain --json`)."""
    entry, groups, when, snap, _facts, decision = _prepare(paths, user, service, rhost,
                                                           tty, at)
    login = snap["login"]
    by_index = {rule["index"]: rule for rule in login["rules"]}
    _lines, always_profiles = _always_lines(snap["always"], entry)
    applied = read_snapshot(paths.state_dir)
    return {
        "login": {"user": entry.pw_name, "uid": entry.pw_uid, "groups": sorted(groups),
                  "service": service, "rhost": rhost, "tty": tty, "at": when},
        "matched_rules": [{"rule": i + 1, "where": by_index[i]["where"],
                           "scope": by_index[i]["scope"],
                           "profiles": list(by_index[i]["profiles"])}
                          for i in decision.matched],
        "user_profiles": list(decision.user_profiles),
        "session_profiles": list(decision.session_profiles),
        "timed": [{"rule": i + 1, "where": by_index[i]["where"], "scope": scope,
                   "profiles": list(profiles), "windows": _windows_text(windows),
                   **_window_state(windows, when)}
                  for i, scope, profiles, windows in decision.timed],
        "always_profiles": list(dict.fromkeys(always_profiles)),
        "modes": {name: (login["profiles"].get(name, {}).get("mode") or "enforce")
                  for name in _profiles_of(decision, always_profiles)},
        "policy_id": snap["policy_id"],
        "applied": applied is not None and applied.get("policy_id") == snap["policy_id"],
    }


def _window_state(windows, when):
    """open_until (epoch, while open at `when`) or next_opens (epoch, or None beyond
    the horizon), as the text's "window open ... until" / "next opens"."""
    until = timed.open_until(windows, when)
    return {"open_until": until,
            "next_opens": None if until is not None else timed.next_opening(windows, when)}


def parse_when(text):
    """The epoch of --at: "Mo 09:30" (that day of the current week, today or after),
    "2026-12-01 09:30", "09:30" (today); None: now."""
    if text is None:
        return time.time()
    parts = text.split()
    today = datetime.now().replace(second=0, microsecond=0)
    if len(parts) == 2 and parts[0][:2].capitalize() in DAYS and len(parts[0]) <= 3:
        ahead = (DAYS.index(parts[0][:2].capitalize()) - today.weekday()) % 7
        return _at_minute(today, ahead, _minute(parts[1], text))
    if len(parts) == 1 and ":" in text and "-" not in text:
        return _at_minute(today, 0, _minute(text, text))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f'--at {text!r}: expected "Mo 09:30", "2026-12-01 09:30" '
                         f'or "09:30"') from None
    return moment.timestamp()


def _at_minute(day, days_ahead, minute):
    """The epoch of local minute `minute` of the day days_ahead after `day` (mktime
    normalises the day overflow and DST)."""
    return time.mktime((day.year, day.month, day.day + days_ahead, minute // 60,
                        minute % 60, 0, 0, 0, -1))


def _clock(epoch):
    """(weekday 0=Monday, minute of day) of an epoch, in local time."""
    lt = time.localtime(epoch)
    return lt.tm_wday, lt.tm_hour * 60 + lt.tm_min


def _minute(clock, text):
    try:
        hours, minutes = (int(x) for x in clock.split(":"))
    except ValueError:
        raise UsageError(f"--at {text!r}: bad time of day {clock!r}") from None
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise UsageError(f"--at {text!r}: bad time of day {clock!r}")
    return hours * 60 + minutes


def _matched_rules(login, decision):
    if not decision.matched:
        return [] if decision.timed else [
            "matching rules: none: this login gets no restrictions"]
    by_index = {rule["index"]: rule for rule in login["rules"]}
    lines = ["matching rules:"]
    for index in decision.matched:
        rule = by_index[index]
        lines.append(f"  rule {index + 1} ({rule['where']}): scope {rule['scope']}, "
                     f"profiles {', '.join(rule['profiles'])}")
    return lines


def _timed_lines(login, decision, when):
    """Each matching rule with `time`: its profiles apply while a window is open
    (the kernel's timed sets); open at `when` and until when, or when it next opens."""
    by_index = {rule["index"]: rule for rule in login["rules"]}
    lines = []
    for index, scope, profiles, windows in decision.timed:
        head = (f"  rule {index + 1} ({by_index[index]['where']}): scope {scope}, "
                f"profiles {', '.join(profiles)}, {_windows_text(windows)}: ")
        until = timed.open_until(windows, when)
        if until is not None:
            lines.append(head + f"window open at that time, until {_show(until)}")
            continue
        opens = timed.next_opening(windows, when)
        lines.append(head + "window closed at that time, " + (
            f"next opens {_show(opens)}" if opens else
            f"opens not within {timed.HORIZON_DAYS} days"))
    if lines:
        lines.insert(0, "time windows (these profiles apply only while a window is open):")
    return lines


def _windows_text(windows):
    def days(mask):
        return ",".join(DAYS[d] for d in range(7) if mask >> d & 1)
    return " ".join(f"{days(mask)} {start // 60:02d}:{start % 60:02d}-"
                    f"{end // 60:02d}:{end % 60:02d}" for mask, start, end in windows)


def _show(epoch):
    weekday, _minute = _clock(epoch)
    return f"{DAYS[weekday]} " + time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


def _scopes(uid, decision):
    lines = []
    if decision.user_profiles:
        lines.append(f"user scope (every socket of uid {uid}, until the uid has no "
                     f"processes left): {', '.join(decision.user_profiles)}")
    if decision.session_profiles:
        lines.append("session scope (this session's cgroup, from login to logout): "
                     f"{', '.join(decision.session_profiles)}")
    return lines


def _profiles_of(decision, always_profiles):
    """Every profile the login would get, in the order explain names them."""
    names = list(decision.user_profiles) + list(decision.session_profiles)
    names += [p for _index, _scope, profiles, _windows in decision.timed for p in profiles]
    names += list(always_profiles)
    return list(dict.fromkeys(names))


def mode_lines(login, names):
    """Each profile's mode and accounting: in monitor mode its deny and reject rules
    let the packet through, and only log ("would deny") and count it."""
    lines = []
    for name in names:
        part = login["profiles"].get(name, {})
        if (part.get("mode") or "enforce") == "monitor":
            text = ("MONITOR mode: its deny and reject rules only log (`netfence log`: "
                    "\"would deny\") and count; the packets pass")
        else:
            text = "enforce mode: its deny and reject rules drop or reject"
        counted = ("counted (bytes each way and denials, per session and per user: "
                   "`netfence status`, `netfence metrics`)" if "denied_set" in part
                   else "not counted")
        lines.append(f"  profile {name}: {text}; {counted}")
    return ["profile modes:"] + lines if lines else []


def _always_lines(always, entry):
    """(lines, profiles): the always rules that fence this uid whatever its logins, and
    why (through NSS now: reload and gc resolve the same way); their profiles."""
    if not always["rules"]:
        return [], []
    nss = resolve.Nss.from_system()
    lines, profiles = [], []
    for rule in always["rules"]:
        why, gids = resolve.reasons(rule, nss, entry.pw_name, entry.pw_uid)
        if why or gids:
            profiles += rule["profiles"]
        head = (f"  rule {rule['index'] + 1} ({rule['where']}): profiles "
                f"{', '.join(rule['profiles'])}")
        if why:
            lines.append(f"{head}: {'; '.join(why)}")
        if gids:
            lines.append(f"{head}: sockets with effective gid {', '.join(gids)} are fenced "
                         f"too, whoever owns them (meta skgid)")
    if not lines:
        return ["always scope: no always rule fences this uid"], []
    return (["always scope (every socket of the uid from reload on, logged in or not):"]
            + lines, profiles)


def _chains(snap, decision):
    table = ir.TableDef.from_json(snap["table"])
    wanted = set(decision.user_profiles) | set(decision.session_profiles)
    wanted |= {p for _index, _scope, profiles, _windows in decision.timed for p in profiles}
    wanted |= set(snap["always"]["profiles"])
    names = {f"{prefix}-{p}" for p in wanted for prefix in ("out", "in", "deny", "reject")}
    lines = ["nftables rules (table inet netfence); a connection passes only if every "
             "profile returns (a map's element goes to the chain of the rule that "
             "decides, out-P.N / in-P.N):"]
    # out-P.v4 (a map), out-P.3 (a rule's chain) belong to out-P
    lines += [render.render_set(s) for s in table.sets
              if s.data == "verdict" and s.name.rsplit(".", 1)[0] in names]
    for chain in table.chains:
        if chain.name in names or chain.name.rsplit(".", 1)[0] in names:
            lines.append(render.render_chain(table, chain, counters=False))
    return lines
