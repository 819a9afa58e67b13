"""`netfence status`: the table's state, from the kernel and the session records."""

import pwd
import time

from . import accounting, records, resolve
from .errors import KernelError
from .setkinds import SCG, SESSION_LEVEL, TIMED_KINDS, UCG, UID, USER_LEVEL, key_number
from .snapshot import read_snapshot


def collect(paths):
    from .drift import check_steadily
    from .nftnl import Ruleset
    applied = read_snapshot(paths.state_dir) or {}
    timed_sets = [s["name"] for s in (applied.get("table") or {}).get("sets", [])
                  if s.get("timeout")]
    with Ruleset() as ruleset:
        present = ruleset.table_exists()
        elements = ruleset.read_elements() if present else {}
        counters = ruleset.read_counters() if present else []
        expiries = ruleset.read_expiries(timed_sets) if present else {}
    drift = check_steadily(applied, paths)
    entries = timed_entries(expiries, paths.run_dir, time.time())
    sessions = records.list_sessions(paths.run_dir)
    counted, counters_problem = read_accounting(present, applied)
    modes = accounting.profile_modes(applied)
    profiles = {}
    for name in (applied.get("login") or {}).get("profiles", {}):
        profiles[name] = {
            **modes[name],
            "uids": sorted(key_number(k) for k in elements.get(UID.set_name(name), [])),
            "user_cgroups": len(elements.get(UCG.set_name(name), [])),
            "session_cgroups": len(elements.get(SCG.set_name(name), [])),
            "timed": {s: [e for e in entries if e["set"] == s] for s in timed_sets
                      if any(s == kind.set_name(name) for kind in TIMED_KINDS)},
        }
    return {
        "table": present,
        "policy_id": applied.get("policy_id"),
        "flushed": bool(applied.get("flushed")),
        "profiles": profiles,
        "sessions": sessions,
        "accounting": accounting.join(sessions, records.list_runs(paths.run_dir),
                                      records.list_users(paths.run_dir), counted),
        "accounting_problem": counters_problem,
        "timed": entries,
        "trees": _trees(paths),
        "counters": [{"chain": c, "rule": r, "packets": p, "bytes": b}
                     for c, r, p, b in counters],
        "always": always_part(applied),
        "drift": drift.as_dict(),
        "fix": _fix(drift),
    }


def read_accounting(present, applied):
    """(the accounting sets' counters, None) or ({}, why they could not be read): a
    failure to read them leaves the rest of status readable, every value "-"."""
    if not present or not (applied.get("login") or {}).get("account"):
        return {}, None
    from .counters import read_counters
    try:
        return read_counters(), None
    except KernelError as err:
        return {}, f"accounting counters unreadable: {err}"


def mode_text(info):
    """How a profile's line says its mode and accounting."""
    parts = []
    if info.get("mode") == "monitor":
        parts.append("MONITOR MODE (its deny and reject rules only log and count)")
    if info.get("account"):
        parts.append("counted")
    return "".join(f"; {part}" for part in parts)


def timed_entries(expiries, run_dir, now):
    """Every element of the timed sets the kernel holds (guards aside: they mirror
    the profile sets), as {"set", "key", "who", "expires_in" (seconds, None: no
    timeout), "expires_at"}, soonest first."""
    live = records.list_sessions(run_dir) + records.list_runs(run_dir)
    out = []
    for set_name, keys in sorted(expiries.items()):
        kind = next((k for k in TIMED_KINDS if set_name.startswith(k.prefix)), None)
        if kind is None:
            continue
        for key, left_ms in keys.items():
            left = None if left_ms is None else left_ms / 1000
            out.append({"set": set_name, "key": key_number(key),
                        "who": _who(kind.level, key_number(key), live),
                        "expires_in": left,
                        "expires_at": None if left is None else round(now + left, 3)})
    return sorted(out, key=lambda e: (e["expires_in"] is None, e["expires_in"] or 0,
                                      e["set"], e["key"]))


def _who(level, number, live):
    """A timed key as the admin knows it: the user of a uid, the session (or run
    tree) of a session cgroup, the user of a user cgroup."""
    if level is None:
        try:
            return f"user {pwd.getpwuid(number).pw_name} (uid {number})"
        except KeyError:
            return f"uid {number}"
    if level == SESSION_LEVEL:
        for record in live:
            if record.get("cgroup_id") == number:
                noun = "run tree" if record.get("kind") == "run" else "session"
                return f"{noun} {record['key']} of {record.get('user', '?')}"
    if level == USER_LEVEL:
        for record in live:
            if record.get("user_cgroup_id") == number:
                return f"user {record.get('user', '?')} (user cgroup {number})"
    return f"cgroup {number} (no live record)"


def format_expiry(left, at):
    """"expires in 2m59s (20:00:00)"; a date when it is not within a day."""
    if left is None:
        return "no timeout (not set by netfence)"
    seconds = max(0, int(left))
    parts = [(seconds // 86400, "d"), (seconds // 3600 % 24, "h"),
             (seconds // 60 % 60, "m"), (seconds % 60, "s")]
    shown = "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"
    clock = time.strftime("%H:%M:%S" if seconds < 86400 else "%Y-%m-%d %H:%M:%S",
                          time.localtime(at))
    return f"expires in {shown} ({clock})"


def always_part(applied):
    """When the always rules were last resolved, and what each profile holds."""
    always = applied.get("always") or {}
    if not always.get("profiles") or applied.get("flushed"):
        return None
    resolved = applied.get("resolved") or {"at": None, "sets": {}, "unknown": []}
    return {"resolved_at": resolved["at"], "unknown": list(resolved.get("unknown", [])),
            "lost": list(resolved.get("lost", [])),
            "profiles": resolve.counts(always, resolved)}


def _always_lines(part):
    if not part:
        return []
    at = part["resolved_at"]
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(at)) if at else "never"
    lines = [f"always rules: resolved through NSS at {when} (by reload, or by gc when "
             f"NSS listed more ids: gc only widens them, reload narrows)"]
    for name, info in sorted(part["profiles"].items()):
        lines.append(f"  profile {name}: {info['uids']} uids, {info['gids']} gids "
                     f"({info['ranges']} ranges)")
    if part["unknown"]:
        lines.append(f"  not found in NSS: {', '.join(part['unknown'])}")
    if part["lost"]:
        lines.append(f"  resolved before, unknown to NSS now (an outage? kept as they "
                     f"were until `netfence reload`): {', '.join(part['lost'])}")
    return lines


def _fix(drift):
    if drift.ok:
        return None
    if drift.login_policy.startswith("unreadable"):
        return "run `netfence reload` (writes login.marshal again)"
    if drift.login_policy:
        return "run `netfence gc` (finishes the interrupted reload) or `netfence reload`"
    if drift.table_missing or drift.altered:
        return ("run `netfence gc` (restores the applied policy's table with the live "
                "entries; it runs every minute) or `netfence reload` (applies the policy "
                "in the config dir)")
    return "run `netfence gc` (adds the missing live entries, removes unrecorded ones)"


def problems(state):
    """The PROBLEM lines status reports (the text and the exit status agree)."""
    found = list(state["drift"]["problems"])
    if state.get("accounting_problem"):
        found.insert(0, state["accounting_problem"])
    return found


def format_text(state):
    lines = [f"table inet netfence: {'present' if state['table'] else 'absent'}",
             f"applied policy: {state['policy_id'] or 'none'}"
             + (" (flushed: logins unrestricted)" if state["flushed"] else "")]
    for name, info in sorted(state["profiles"].items()):
        uids = ", ".join(str(u) for u in info["uids"]) or "-"
        lines.append(f"profile {name}: uids {uids}; user cgroups {info['user_cgroups']}; "
                     f"session cgroups {info['session_cgroups']}" + mode_text(info))
    lines += _always_lines(state.get("always"))
    lines.append(f"timed entries (time windows, grants, restrictions): "
                 f"{len(state.get('timed', []))}")
    for entry in state.get("timed", []):
        lines.append(f"  {entry['set']}: {entry['who']}, "
                     f"{format_expiry(entry['expires_in'], entry['expires_at'])}")
    lines.append(f"live sessions: {len(state['sessions'])}")
    lines += accounting.format_table(state["accounting"])
    if state.get("accounting_problem"):
        lines.append(f"PROBLEM: {state['accounting_problem']}")
    lines += _format_trees(state["trees"])
    for counter in (c for c in state["counters"] if c["packets"]):
        lines.append(f"counter {counter['chain']} {counter['rule']}: "
                     f"{counter['packets']} packets")
    for problem in state["drift"]["problems"]:
        lines.append(f"PROBLEM: {problem}")
    if state["fix"]:
        lines.append(f"fix: {state['fix']}")
    return "\n".join(lines) + "\n"


# ---- `netfence run` trees --------------------------------------------------------

def _trees(paths):
    from .cgroups import cgroup2_mount
    from .errors import CgroupError
    from .runtree import list_trees
    try:
        mount = cgroup2_mount()
    except CgroupError:
        mount = None
    return list_trees(paths.run_dir, mount)


def _format_trees(trees):
    import time
    lines = [f"fenced trees (netfence run): {len(trees)}"]
    for tree in trees:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(tree["since"]))
        lines.append(f"  name={tree['name']} pid={tree['pid']} user={tree['user']} "
                     f"profiles={','.join(tree['profiles'])} cgroup={tree['cgroup']} "
                     f"since={since}"
                     + (" (ended: `netfence gc` removes it)" if tree["ended"] else ""))
    return lines
