"""The `netfence` command."""

import argparse
import math
import os
import sys

from . import __version__
from .apply import Paths
from .errors import NetfenceError, PolicyError, UsageError
# grant, restrict, grants, revoke (main finds each cmd_* by its name here)
from .grants_cli import add_commands as add_grant_commands
from .grants_cli import cmd_grant, cmd_grants, cmd_restrict, cmd_revoke  # noqa: F401
from .log_cli import add_command as add_log_command, cmd_log  # noqa: F401
from .doctor import add_commands as add_doctor_commands, cmd_doctor, cmd_verify  # noqa: F401
from .doctor import EXAMPLES as DOCTOR_EXAMPLES

DEFAULT_HOOK = "/usr/lib/netfence/netfence-hook"
# Every command exits 0 when all is well, PROBLEM_EXIT when it found or hit a problem
# (a policy error, drift, the kernel refusing), USAGE_EXIT for a bad argument, as
# argparse does (docs/commands.md, "Exit status"); `run` exits with CMD's status.
PROBLEM_EXIT = 1
USAGE_EXIT = 2


def build_parser():
    parser = argparse.ArgumentParser(
        prog="netfence", description="Per-user and per-session network policy for logins.",
        epilog="exit status: 0 ok, 1 a problem was found, 2 usage error (every command; "
               "netfence(8), docs/commands.md)")
    parser.add_argument("--version", action="version", version=f"netfence {__version__}")
    _add_global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check", help="validate the policy without applying it")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    commands.add_parser("reload", help="compile the policy and apply it atomically")
    explain = commands.add_parser("explain", help="what a login would get, without applying")
    explain.add_argument("user", help="the account logging in (a name NSS knows)")
    explain.add_argument("--service", default="sshd", help="PAM service (default: sshd)")
    explain.add_argument("--rhost", default="", help="remote host (default: none, a local login)")
    explain.add_argument("--tty", default="", help="PAM_TTY (default: none)")
    explain.add_argument("--at", default=None, metavar="TIME",
                         help='login time: "Mo 09:30", "2026-12-01 09:30" or "09:30" (default: now)')
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    status = commands.add_parser("status", help="the table's state: profiles, live entries")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    commands.add_parser("metrics", help="accounting and rule counters in the Prometheus "
                                        "text format (docs/accounting.md)")
    commands.add_parser("flush", help="remove netfence's table and live state")
    commands.add_parser("gc", help="restore a missing or altered table; remove entries of "
                                   "sessions and users that are gone")
    _add_run(commands)
    add_grant_commands(commands)
    add_log_command(commands)
    add_doctor_commands(commands)
    watch = commands.add_parser("watch", help="keep enforcement continuous: restore the "
                                "table, close ended sessions, follow time windows "
                                "(docs/watch.md)")
    watch.add_argument("--gc-interval", type=_seconds, default=60.0, metavar="SECONDS",
                       help="full gc every SECONDS (default: %(default)s)")
    pam_line = commands.add_parser("pam-line", help="print the PAM session line to install")
    pam_line.add_argument("--hook", default=DEFAULT_HOOK, help="hook path (default: %(default)s)")
    install = commands.add_parser("install-hook", help="write the hook program pam_exec runs")
    install.add_argument("path", nargs="?", default=DEFAULT_HOOK,
                         help="where to write it, absolute (default: %(default)s)")
    for name, command in commands.choices.items():
        _add_global_options(command, suppress=True)
        command.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


# `netfence COMMAND --help` ends with these (tests/unit/test_cli_global_options.py
# checks that every command has some)
EXAMPLES = {
    "check": ["netfence check", "netfence check --config-dir /srv/policy-next",
              "netfence check --json | jq -r '.profiles[]'"],
    "reload": ["netfence check && netfence reload"],
    "explain": ["netfence explain alice --service sshd --rhost 203.0.113.9",
                'netfence explain bob --service su-l --at "Sa 23:00"',
                "netfence explain alice --json | jq '.session_profiles'"],
    "status": ["netfence status", "netfence status --json | jq '.sessions'"],
    "metrics": ["netfence metrics > /var/lib/node_exporter/netfence.prom.tmp && "
                "mv /var/lib/node_exporter/netfence.prom.tmp "
                "/var/lib/node_exporter/netfence.prom"],
    "flush": ["netfence flush      # every restriction off, until the next reload"],
    "gc": ["netfence gc         # what the timer runs every minute"],
    "run": ["netfence run --profile web-only --user www-data -- /usr/sbin/nginx"],
    "grant": ['netfence grant alice --profile web-only --for 2h --reason "INC-7"'],
    "restrict": ['netfence restrict mallory --profile web-only --for 30m --reason "abuse"'],
    "grants": ["netfence grants", "netfence grants --json"],
    "revoke": ["netfence revoke g-1a2b3c4d"],
    "log": ["netfence log --user alice --since 1h", "netfence log --follow --json"],
    "watch": ["netfence watch     # the installed netfence-watch.service runs this"],
    "pam-line": ["netfence pam-line --hook /usr/lib/netfence/netfence-hook"],
    "install-hook": ["netfence install-hook /usr/lib/netfence/netfence-hook"],
    **DOCTOR_EXAMPLES,
}


def _add_global_options(parser, suppress):
    """The options every command takes, before or after its name: `netfence
    --config-dir D check` and `netfence check --config-dir D` are the same. After the
    name their default is SUPPRESS: given there, they override the value before it;
    left out, they leave it."""
    for flag, default, help_text in (
            ("--config-dir", Paths.config_dir, "policy directory"),
            ("--state-dir", Paths.state_dir, "compiled snapshot directory"),
            ("--run-dir", Paths.run_dir, "live session records")):
        parser.add_argument(flag, metavar="DIR",
                            default=argparse.SUPPRESS if suppress else default,
                            help=f"{help_text} (default: {default})")


def _add_run(commands):
    run = commands.add_parser(
        "run", help="run a command in a fenced cgroup of its own (docs/run.md)",
        usage="netfence run --profile P [--profile Q] [--user U] [--name NAME] "
              "-- CMD [ARGS...]")
    run.add_argument("--profile", action="append", default=[], required=True,
                     help="a profile of the applied policy (repeatable)")
    run.add_argument("--user", help="run CMD as this account, with its groups")
    run.add_argument("--name", help="the tree's name (default: CMD's basename)")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]",
                     help="the command to run, and its arguments")


# Longer than any hook may hold the records lock (hook_timeout_ms is at most 60 s, and
# the launcher kills the hook 0.4 s after it at the latest).
LOCK_WAIT_S = 75


def main(argv=None):
    """The command: argv None reads sys.argv, and the process exits after (see
    _before_exit); tests and wrappers pass argv and go on."""
    try:
        return _main(argv)
    finally:
        if argv is None:
            _before_exit()


def _before_exit():
    """The interpreter's last garbage collections at exit walk every object the imports
    made (~10 ms for the ~250 modules reload loads, more than any collection during the
    run); objects frozen here are left to the exit itself. Nothing netfence keeps
    needs a collection to be released: files, sockets and locks are closed where
    they are used, stdout is flushed."""
    import gc
    gc.freeze()


def _main(argv):
    args = build_parser().parse_args(argv)
    paths = Paths(args.config_dir, args.state_dir, args.run_dir)
    from . import records
    records.Lock.max_wait_s = LOCK_WAIT_S
    handler = globals()[f"cmd_{args.command.replace('-', '_')}"]
    try:
        code = handler(args, paths) or 0
        sys.stdout.flush()                  # a closed pipe shows here, not at exit
        return code
    except UsageError as err:               # a bad argument: what argparse's errors exit
        print(f"netfence {args.command}: {err}", file=sys.stderr)
        return USAGE_EXIT
    except PolicyError as err:
        for line in str(err).splitlines():
            print(line, file=sys.stderr)
        return 1
    except NetfenceError as err:
        print(f"netfence {args.command}: {err}", file=sys.stderr)
        return PROBLEM_EXIT
    except BrokenPipeError:
        # `netfence status | head`: the reader left; say nothing more (Python would
        # print a traceback when it flushes stdout at exit)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return PROBLEM_EXIT


def cmd_check(args, paths):
    from .apply import compile_from
    try:
        policy, snap = compile_from(paths)
    except PolicyError as err:
        if not args.json:
            raise
        _print_json({"ok": False, "config_dir": paths.config_dir, "problems": [
            {"file": path, "line": line or None, "message": message}
            for path, line, message in err.problems]})
        return PROBLEM_EXIT
    if args.json:
        _print_json({"ok": True, "config_dir": paths.config_dir,
                     "files": [str(f) for f in policy.files],
                     "profiles": sorted(policy.profiles), "rules": len(policy.rules),
                     "policy_id": snap["policy_id"], "problems": []})
        return 0
    print(f"{paths.config_dir}: OK: {len(policy.files)} files, {len(policy.profiles)} "
          f"profiles, {len(policy.rules)} rules (policy {snap['policy_id']})")
    return 0


def _print_json(value):
    import json
    print(json.dumps(value, indent=2, sort_keys=True))


def cmd_reload(args, paths):
    from .apply import reload
    result = reload(paths)
    print(f"reloaded policy {result.policy_id}: {result.profiles} profiles, "
          f"{result.rules} rules, {result.kept} live entries kept")
    if result.attempts > 1:
        print(f"the ruleset changed while reading it: {result.attempts} attempts, logins "
              f"held off for {result.lock_held_ms:.1f} ms")
    for set_name, count in sorted(result.dropped.items()):
        print(f"dropped {count} live entries of set {set_name}: its profile was removed",
              file=sys.stderr)
    _warn_unresolved(result.unresolved)


def _warn_unresolved(names):
    if names:
        print(f"always rules: not found in NSS, skipped: {', '.join(names)} (gc resolves "
              f"them again every run)", file=sys.stderr)


def cmd_explain(args, paths):
    from .explain import explain, explain_state
    if args.json:
        _print_json(explain_state(paths, args.user, args.service, args.rhost, args.tty,
                                  args.at))
    else:
        print(explain(paths, args.user, args.service, args.rhost, args.tty, args.at),
              end="")


def cmd_status(args, paths):
    """Exit 1 when it reports a PROBLEM (drift, unreadable counters): scripts and
    monitoring can test the status as they would `netfence check`'s."""
    from .status import collect, format_text, problems
    state = collect(paths)
    if args.json:
        _print_json(state)
    else:
        print(format_text(state), end="")
    return PROBLEM_EXIT if problems(state) else 0


def cmd_metrics(args, paths):
    from .metrics import collect, render
    data = collect(paths)
    print(render(data), end="")
    if data["problem"]:
        print(f"netfence metrics: {data['problem']}", file=sys.stderr)


def cmd_run(args, paths):
    """Exit 2: bad arguments, unknown profile or account; 127/126: CMD cannot be
    executed; otherwise CMD's own status (run execs it)."""
    from .runtree import CommandError, run
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    try:
        return run(paths, args.profile, args.user, args.name, argv)
    except UsageError as err:
        print(f"netfence run: {err}", file=sys.stderr)
        return 2
    except CommandError as err:
        print(f"netfence run: {err}", file=sys.stderr)
        return err.status


def cmd_flush(args, paths):
    from .apply import flush
    existed, forgotten = flush(paths)
    print(f"{'removed' if existed else 'no'} table inet netfence; "
          f"{forgotten} session records removed; logins are unrestricted until "
          f"`netfence reload`")


def cmd_gc(args, paths):
    from .collect import gc
    from .drift import repair_table
    from .snapshot import read_snapshot
    # First the table: after a foreign `nft flush ruleset` every restricted login is
    # unrestricted (or refused) until it is back.
    failed = False
    try:
        repair = repair_table(paths)
        failed = repair.failed
        print(repair)
    except NetfenceError as err:          # the sessions below are still collected
        failed = True
        print(f"gc: table: check failed: {err}")
    try:
        applied = read_snapshot(paths.state_dir) or {}
    except NetfenceError as err:          # still collect sessions, in the default base
        failed, applied = True, {}
        print(f"gc: snapshot: {err}")
    base = applied.get("settings", {}).get("cgroup_base")
    report = gc(paths.run_dir, cgroup_base=base, state_dir=paths.state_dir)
    print(report)
    return 1 if report.errors or failed else 0


def _seconds(text):
    """A finite positive number of seconds (nan or inf would make watch spin)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: not a finite positive number")
    return value


def cmd_watch(args, paths):
    from .watch import run
    # under systemd (INVOCATION_ID set) the syslog line is enough; in a terminal or a
    # plain service manager the same line goes to stderr too
    return run(paths, args.gc_interval, to_stderr="INVOCATION_ID" not in os.environ)


def cmd_pam_line(args, paths):
    _check_absolute("hook path", args.hook)
    print(pam_line(args.hook, paths))


def _check_absolute(what, path):
    """pam_exec runs what the line names, relative to nowhere in particular."""
    if not os.path.isabs(path):
        raise UsageError(f"{what} must be absolute: {path!r}")


def pam_line(hook, paths):
    extra = []
    if paths.state_dir != Paths.state_dir:
        extra.append(f"state_dir={paths.state_dir}")
    if paths.run_dir != Paths.run_dir:
        extra.append(f"run_dir={paths.run_dir}")
    return " ".join(["session", "required", "pam_exec.so", "seteuid", "quiet", hook, *extra])


def cmd_install_hook(args, paths):
    from .hookstub import write_hook
    _check_absolute("hook path", args.path)
    write_hook(args.path, python=sys.executable)
    print(f"wrote {args.path}; PAM line: {pam_line(args.path, paths)}")


if __name__ == "__main__":
    sys.exit(main())
