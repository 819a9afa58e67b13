"""`netfence log`: the denials `netfence watch` recorded (docs/log.md).

    netfence log [--follow] [--user U] [--session KEY] [--profile P] [--since TIME] [--json]

Text: one line per denial (denials.text_line); --json: the stored entries, one JSON
object a line. An unknown user or a --since it cannot read or out of range (1970 to
2242; 8 digits are a basic ISO date): a message, exit 2.
"""

import json
import pwd
import sys

from . import denial_log
from .denials import text_line
from .errors import UsageError

USAGE_EXIT = 2


def add_command(commands):
    log = commands.add_parser("log", help="denied packets with who sent them (docs/log.md)")
    log.add_argument("--follow", action="store_true", help="print new denials as they come")
    log.add_argument("--user", metavar="U", help="only this user (a name or a uid)")
    log.add_argument("--session", metavar="KEY", help="only this session key")
    log.add_argument("--profile", metavar="P", help="only this profile")
    log.add_argument("--since", metavar="TIME",
                     help="from TIME on: an epoch, ISO 8601 (2026-11-30T17:00, "
                          "20261130) or a time ago (30m, 1h, 2d)")
    log.add_argument("--json", action="store_true", help="one JSON object per line")


def resolve_uid(user):
    """--user: a uid, or an account name NSS knows; UsageError otherwise."""
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise UsageError(f"--user {user!r}: no such user (give a uid for an account "
                         "that is gone)") from None


def cmd_log(args, paths):
    try:
        wanted = {"uid": resolve_uid(args.user) if args.user else None,
                  "session": args.session, "profile": args.profile,
                  "since": denial_log.parse_since(args.since) if args.since else None}
    except UsageError as err:
        print(f"netfence log: {err}", file=sys.stderr)
        return USAGE_EXIT
    show = _json_line if args.json else text_line
    source = (denial_log.follow(paths.state_dir) if args.follow
              else denial_log.entries(paths.state_dir))
    names = {}
    try:
        for entry in source:
            if denial_log.matches(entry, **wanted):
                print(show(_named(entry, names)), flush=args.follow)
    except KeyboardInterrupt:             # the end of --follow
        pass
    return 0


def _named(entry, names):
    """The entry with its user named when only its uid is known: watch looks no name
    up (NSS could hold its loop); this command does, once per uid (names: the cache)."""
    uid = entry.get("uid")
    if entry.get("user") is not None or not isinstance(uid, int) or uid < 0:
        return entry
    if uid not in names:
        try:
            names[uid] = pwd.getpwuid(uid).pw_name
        except (KeyError, OverflowError):
            names[uid] = None
    return dict(entry, user=names[uid]) if names[uid] else entry


def _json_line(entry):
    return json.dumps(entry, sort_keys=True)
