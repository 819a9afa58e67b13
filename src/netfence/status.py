"""`netfence status`: the table's state, from the kernel and the session records."""

import time

from . import records, resolve
from .setkinds import SCG, UCG, UID, key_number
from .snapshot import read_snapshot


def collect(paths):
    from .drift import check_steadily
    from .nftnl import Ruleset
    applied = read_snapshot(paths.state_dir) or {}
    with Ruleset() as ruleset:
        present = ruleset.table_exists()
        elements = ruleset.read_elements() if present else {}
        counters = ruleset.read_counters() if present else []
    drift = check_steadily(applied, paths)
    profiles = {}
    for name in (applied.get("login") or {}).get("profiles", {}):
        profiles[name] = {
            "uids": sorted(key_number(k) for k in elements.get(UID.set_name(name), [])),
            "user_cgroups": len(elements.get(UCG.set_name(name), [])),
            "session_cgroups": len(elements.get(SCG.set_name(name), [])),
        }
    return {
        "table": present,
        "policy_id": applied.get("policy_id"),
        "flushed": bool(applied.get("flushed")),
        "profiles": profiles,
        "sessions": records.list_sessions(paths.run_dir),
        "trees": _trees(paths),
        "counters": [{"chain": c, "rule": r, "packets": p, "bytes": b}
                     for c, r, p, b in counters],
        "always": always_part(applied),
        "drift": drift.as_dict(),
        "fix": _fix(drift),
    }


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


def format_text(state):
    lines = [f"table inet netfence: {'present' if state['table'] else 'absent'}",
             f"applied policy: {state['policy_id'] or 'none'}"
             + (" (flushed: logins unrestricted)" if state["flushed"] else "")]
    for name, info in sorted(state["profiles"].items()):
        uids = ", ".join(str(u) for u in info["uids"]) or "-"
        lines.append(f"profile {name}: uids {uids}; user cgroups {info['user_cgroups']}; "
                     f"session cgroups {info['session_cgroups']}")
    lines += _always_lines(state.get("always"))
    lines.append(f"live sessions: {len(state['sessions'])}")
    for session in state["sessions"]:
        lines.append("  " + " ".join(f"{k}={session[k]}" for k in
                                     ("key", "user", "uid", "service", "rhost", "tty")
                                     if k in session))
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
