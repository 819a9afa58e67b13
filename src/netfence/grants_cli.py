"""`netfence grant|restrict|grants|revoke`: arguments, their checks, output
(grants.py keeps the file and runs the transactions).

Every argument is checked before anything is read or written, with an error naming
the problem: exit 2 for a bad argument (syntax, an unknown user, session or profile,
a conflict), 1 for a problem (a damaged grants.json, the kernel refusing), as
`netfence run` does. No argument may hold a control character: each one reaches a
log line and the listing.

Root: the policy fences root only when a rule names it. A grant names its user, so
root may be granted an exemption from a profile a rule named root in. A restriction
of uid 0 is refused: every daemon root runs (sshd, the resolver, netfence itself)
would lose the profile's egress at once, an outage rather than incident response;
a policy rule with users = ["root"] and a reload says that deliberately.
"""

import json
import os
import pwd
import re
import sys
import time

from . import grants, records
from .errors import UsageError

MAX_DAYS = 30
MAX_SECONDS = MAX_DAYS * 86400
MAX_REASON = 200
UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_DURATION = re.compile(r"(?:([0-9]{1,6})d)?(?:([0-9]{1,6})h)?(?:([0-9]{1,6})m)?"
                       r"(?:([0-9]{1,7})s)?")
NO_LOGINUID = 4294967295


def add_commands(commands):
    """The four subcommands, on cli.build_parser's subparsers."""
    usage_grant = ("netfence grant (USER | --session KEY) --profile P --for DURATION "
                   "--reason TEXT")
    grant = commands.add_parser(
        "grant", usage=usage_grant,
        help="exempt a user or a session from a profile for a while (docs/grants.md)")
    target = grant.add_mutually_exclusive_group(required=True)
    target.add_argument("user", nargs="?", help="a user name or a numeric uid")
    target.add_argument("--session", metavar="KEY",
                        help="a live session's key (`netfence status`), or a run tree's")
    restrict = commands.add_parser(
        "restrict", help="apply a profile to a user's egress for a while (docs/grants.md)")
    restrict.add_argument("user", help="a user name or a numeric uid")
    for sub in (grant, restrict):
        sub.add_argument("--profile", required=True, help="a profile of the applied policy")
        sub.add_argument("--for", dest="duration", required=True, metavar="DURATION",
                         help=f"90s, 15m, 2h, 1d, 1h30m ... (at most {MAX_DAYS}d)")
        sub.add_argument("--reason", required=True, help="why (logged and listed)")
    listing = commands.add_parser("grants", help="the grants and restrictions in force")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    revoke = commands.add_parser("revoke", help="end a grant or restriction now")
    revoke.add_argument("id", help="its id (g-0123abcd), as `netfence grants` shows")


# ---- arguments (pure) ---------------------------------------------------------------

def check_text(what, value):
    """value, if it holds no control or other unprintable character (UsageError)."""
    if not value.isprintable():
        bad = next(c for c in value if not c.isprintable())
        raise UsageError(f"{what} holds an unprintable character {bad!r}: control "
                         f"characters would reach the log lines")
    return value


def parse_duration(text):
    """Seconds of a DURATION: units d, h, m, s, largest first, each at most once
    (90s, 15m, 2h, 1d, 1h30m); more than 0 and at most MAX_DAYS days."""
    check_text("--for", text)
    match = _DURATION.fullmatch(text)
    if not text or not match:
        raise UsageError(f"invalid duration {text!r}: a number and a unit (d, h, m or "
                         f"s), largest first, e.g. 90s, 15m, 2h, 1d, 1h30m")
    seconds = sum(int(n) * size for n, (_, size) in zip(match.groups(), UNITS) if n)
    if not 0 < seconds <= MAX_SECONDS:
        raise UsageError(f"duration {text!r} out of range: more than 0 s and at most "
                         f"{MAX_DAYS}d")
    return seconds


def format_duration(seconds):
    """'1h30m', '45s', '2d3h': what parse_duration reads, to the second (rounded up)."""
    left, parts = max(0, int(-(-seconds // 1))), []
    for unit, size in UNITS:
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts) or "0s"


def check_reason(text):
    check_text("--reason", text)
    if not text.strip():
        raise UsageError("--reason is empty: say why (it is logged and listed)")
    if len(text) > MAX_REASON:
        raise UsageError(f"--reason is {len(text)} characters long: at most {MAX_REASON}")
    return text


# ---- what the arguments name ----------------------------------------------------------

def resolve_user(text, getpwnam=pwd.getpwnam, getpwuid=pwd.getpwuid):
    """(name, uid) of USER: an account NSS knows, or a numeric uid (an account's name
    when it has one, else the number). UsageError otherwise."""
    check_text("USER", text)
    if text.isascii() and text.isdigit():        # not int('١٠٠٠')
        uid = int(text)
        if uid > grants.MAX_UID:
            raise UsageError(f"uid {text} out of range: 0 to {grants.MAX_UID}")
        try:
            return getpwuid(uid).pw_name, uid
        except KeyError:
            return text, uid
    try:
        account = getpwnam(text)
    except KeyError:
        raise UsageError(f"unknown user {text!r}: NSS has no such account (a numeric "
                         f"uid is taken as it is)") from None
    return account.pw_name, account.pw_uid


def resolve_session(run_dir, key, mount=None):
    """(key, cgroup id, uid) of a live, not closing session or `run` tree."""
    from .liveness import has_processes, is_alive
    check_text("--session", key)
    if not key or not set(key) <= records.KEY_CHARS:
        raise UsageError(f"invalid session key {key!r}: keys are <pid>-<start time>, "
                         f"as `netfence status` lists them")
    record = records.read_session(run_dir, key)
    if record is not None:
        alive = is_alive(record)
    else:
        record = records.read(records.run_path(run_dir, key))
        if record is not None:
            from .cgroups import cgroup2_mount
            alive = has_processes(mount or cgroup2_mount(), record["cgroup"])
    if record is None:
        raise UsageError(f"unknown session {key!r}: no live session or run tree has "
                         f"this key (`netfence status` lists them)")
    if record.get("closing") or not alive:
        raise UsageError(f"session {key} is closing or has ended: nothing to grant")
    return key, record["cgroup_id"], record["uid"]


def applied_profile(state_dir, name, need_egress):
    """The applied snapshot's entry of profile `name` (compiled.json's login part)."""
    from .snapshot import read_snapshot
    check_text("--profile", name)
    snap = read_snapshot(state_dir)
    profiles = (snap or {}).get("login", {}).get("profiles", {})
    if name not in profiles:
        raise UsageError(f"unknown profile {name!r}: the applied policy has "
                         f"{', '.join(sorted(profiles)) or 'none'} (`netfence reload` "
                         f"applies the policy files)")
    profile = profiles[name]
    if need_egress and not profile.get("egress"):
        raise UsageError(f"profile {name!r} has no egress rules: a restriction applies "
                         f"a profile to a uid's egress (its sockets' owner), so it "
                         f"would change nothing")
    if not (profile.get("egress") or profile.get("ingress")):
        raise UsageError(f"profile {name!r} has no rules: nothing to exempt from")
    return profile


def who_ran(environ=os.environ, loginuid_path="/proc/self/loginuid",
            getpwuid=pwd.getpwuid):
    """Who ran the command: the login uid's name (audit's loginuid survives su and
    sudo), and SUDO_USER when set and another name."""
    try:
        with open(loginuid_path) as handle:
            uid = int(handle.read().strip())
    except (OSError, ValueError):
        uid = NO_LOGINUID
    if uid == NO_LOGINUID:
        name = "no-login"
    else:
        try:
            name = getpwuid(uid).pw_name
        except KeyError:
            name = f"uid {uid}"
    sudo = environ.get("SUDO_USER", "")
    if sudo and sudo != name:
        shown = sudo[:64] if sudo.isprintable() else repr(sudo[:64])
        name = f"{name} (SUDO_USER {shown})"
    return name


# ---- the commands ---------------------------------------------------------------------

def _entry(args, paths, kind):
    """The grant or restriction the arguments describe, every argument checked."""
    seconds = parse_duration(args.duration)
    reason = check_reason(args.reason)
    _check_profile(args, paths, kind)
    now = time.time()
    entry = {"kind": kind, "profile": args.profile, "reason": reason,
             "created": round(now, 3), "expires": round(now + seconds, 3)}
    if getattr(args, "session", None) is not None:
        key, cgroup_id, uid = resolve_session(paths.run_dir, args.session)
        return dict(entry, session=key, cgroup_id=cgroup_id, uid=uid)
    name, uid = resolve_user(args.user)
    if kind == "restrict" and uid == 0:
        raise UsageError("refusing to restrict root: every daemon root runs would lose "
                         "the profile's egress; name root in a policy rule "
                         "(users = [\"root\"]) if that is meant")
    return dict(entry, user=name, uid=uid)


def _check_profile(args, paths, kind):
    applied_profile(paths.state_dir, args.profile, need_egress=kind == "restrict")


def cmd_grant(args, paths, kind="grant"):
    try:
        entry = grants.add(paths, _entry(args, paths, kind), who_ran(),
                           recheck=lambda: _check_profile(args, paths, kind))
    except UsageError as err:
        print(f"netfence {kind}: {err}", file=sys.stderr)
        return 2
    print(f"{entry['id']}: {grants.describe(entry)} until "
          f"{grants.show_time(entry['expires'])} ({format_duration(entry['expires'] - time.time())})")
    return 0


def cmd_restrict(args, paths):
    return cmd_grant(args, paths, kind="restrict")


def cmd_revoke(args, paths):
    try:
        check_text("ID", args.id)
        entry = grants.revoke(paths, args.id, who_ran())
    except UsageError as err:
        print(f"netfence revoke: {err}", file=sys.stderr)
        return 2
    print(f"revoked {entry['id']}: {grants.describe(entry)}")
    return 0


def cmd_grants(args, paths):
    from .snapshot import read_snapshot
    now = time.time()
    applied = (read_snapshot(paths.state_dir) or {}).get("login", {}).get("profiles", {})
    rows = [listed(g, now, applied) for g in grants.active(paths.state_dir, now)]
    rows.sort(key=lambda r: (r["expires"], r["id"]))
    if args.json:
        print(json.dumps({"now": now, "grants": rows}, indent=2, sort_keys=True))
    else:
        print(format_rows(rows), end="")
    return 0


def listed(entry, now, applied):
    """One entry as `netfence grants` shows it; applied: the applied policy's
    profiles (an entry whose profile a reload removed does nothing until a reload
    brings it back or it expires)."""
    kind, target = grants.target_of(entry)
    return {**entry, "target": f"user {entry['user']}" if kind == "user"
            else f"session {target}", "expires_at": grants.show_time(entry["expires"]),
            "remaining_s": round(entry["expires"] - now, 1),
            "remaining": format_duration(entry["expires"] - now),
            "profile_applied": entry["profile"] in applied}


def format_rows(rows):
    if not rows:
        return "no grants or restrictions in force\n"
    head = ("ID", "KIND", "TARGET", "PROFILE", "EXPIRES", "LEFT", "BY", "REASON")
    table = [head] + [(r["id"], r["kind"], r["target"],
                       r["profile"] + ("" if r["profile_applied"] else " (not applied)"),
                       r["expires_at"],
                       r["remaining"], r["by"], r["reason"]) for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head) - 1)]
    return "".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) + "  "
                   + str(row[-1]) + "\n" for row in table)
