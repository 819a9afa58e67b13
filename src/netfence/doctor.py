"""`netfence doctor`: does enforcement really work here? Every check is one line,
`ok` or `problem`, with what to do; exit 0 when all are ok, 1 otherwise (2 is usage,
from argparse). Read only for the host: the kernel probe and the login check work in
network namespaces of their own (docs/doctor.md)."""

import json
import os

from .errors import StateError

SYSTEM_PAM_DIR = "/etc/pam.d"


def run_checks(paths, pam_dir=SYSTEM_PAM_DIR, login=True):
    """[{"check", "ok", "detail", "fix"}] in the order the issue lists them."""
    # imported here: cli loads this module for every command (its parser), and the
    # checks' imports cost every reload ~4.5 ms
    from . import doctor_checks, doctor_pam
    steps = [doctor_checks.check_kernel, doctor_checks.check_cgroup,
             lambda: doctor_pam.check_pam(pam_dir),
             lambda: doctor_checks.check_policy(paths),
             lambda: doctor_checks.check_table(paths),
             lambda: doctor_checks.check_services(paths),
             doctor_checks.check_log_sink]
    if login:
        from .doctor_login import check_login
        steps.append(lambda: check_login(pam_dir))
    out = []
    for step in steps:
        for name, ok, detail, fix in step():
            out.append({"check": name, "ok": bool(ok), "detail": detail, "fix": fix})
    return out


def format_text(results):
    lines = []
    for result in results:
        word = "ok     " if result["ok"] else "problem"
        line = f"{word} {result['check']}: {result['detail']}"
        if result["fix"]:
            line += f"\n          -> {result['fix']}"
        lines.append(line)
    bad = sum(not r["ok"] for r in results)
    lines.append(f"{len(results)} checks, {bad} problem(s)")
    return "\n".join(lines) + "\n"


def _need_root(command):
    if os.geteuid() != 0:
        raise StateError(f"must run as root: {command} reads the kernel's table, the "
                         "records and the PAM files, and probes in namespaces")


def cmd_doctor(args, paths):
    _need_root("doctor")
    results = run_checks(paths, args.pam_dir, login=not args.no_login)
    return _report(results, "checks", format_text, args.json)


def cmd_verify(args, paths):
    _need_root("verify")
    from .verify import format_text as verify_text, verify
    results = verify(paths, user=args.user, key=args.session)
    return _report(results, "sessions", verify_text, args.json)


def _report(results, name, text, as_json):
    """Print the results (text or {"ok", name: results}); exit 0 all ok, 1 a problem."""
    ok = all(r["ok"] for r in results)
    if as_json:
        print(json.dumps({"ok": ok, name: results}, indent=2))
    else:
        print(text(results), end="")
    return 0 if ok else 1


def add_commands(commands):
    """The doctor and verify subparsers (cli.py calls this once)."""
    doctor = commands.add_parser("doctor", help="check that enforcement really works here "
                                 "(docs/doctor.md)")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--no-login", action="store_true",
                        help="skip the real login of a throwaway user")
    doctor.add_argument("--pam-dir", default=SYSTEM_PAM_DIR, metavar="DIR",
                        help="PAM service files to check (default: %(default)s)")
    verify = commands.add_parser("verify", help="prove from inside live sessions that "
                                 "their restrictions bite")
    who = verify.add_mutually_exclusive_group(required=True)
    who.add_argument("user", nargs="?", help="a user name or uid with live sessions")
    who.add_argument("--session", metavar="KEY", help="one session (netfence status)")
    verify.add_argument("--json", action="store_true", help="machine-readable output")


EXAMPLES = {
    "doctor": ["netfence doctor", "netfence doctor --no-login --json | jq '.checks[] | "
               "select(.ok | not)'"],
    "verify": ["netfence verify alice", "netfence verify --session 1234-5678"],
}
