#!/usr/bin/env python3
"""netfence benchmarks (see bench/README.md and docs/benchmarks.md).

    python3 bench/run.py [--quick] [--big] [--json FILE] [--only SECTION,...] [--profile]

Runs, as root, in network namespaces of its own (the host's ruleset is never touched):
  1 login   hook open/close wall time, with same-run baselines (bare interpreter,
            one `nft -f`, one `iptables -A` process per rule)
  2 scale   open/close time with 0, 1,000 and 10,000 live sessions (--big: and 100,000)
  3 packet  new TCP connections per second: empty ruleset, conntrack only, netfence
            with 10,000 sessions, the same with a 200-rule session profile, with
            accounting on, a blog-style linear chain
  4 reload  `netfence reload` of 10, 100, 1,000-rule policies, each against `nft -f`
            of the same table
  5 memory  peak RSS of the hook process (measured during section 1)
  6 launcher  the launcher's supervision cost
  7 sshd    `ssh -o BatchMode=yes u@127.0.0.1 true` through a real sshd, with the
            hook in its PAM service and without
Prints a table; --json writes one JSON object (milliseconds unless named otherwise).
Everything created (namespaces, cgroups, processes, the throwaway user, files under
/run/nfbench-<tag>) is removed on exit, also on failure or Ctrl-C, and checked.
"""

import argparse
import contextlib
import json
import os
import platform
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# common also puts src/ (netfence) and tests/ (support) on sys.path
from common import Workspace, leftovers, log, reap_children  # noqa: E402

FULL = {"logins": 100, "unseed_logins": 5, "scale_sizes": (0, 1000, 10000),
        "scale_rounds": 5, "scale_processes": 20000, "scale_process_rounds": 5,
        "scale_reloads": 3, "packet_sessions": 10000,
        "scale_per_round": 20, "packet_rounds": 10, "packet_seconds": 1,
        "reload_sizes": (10, 100, 1000), "reload_rounds": 10, "launcher_logins": 60,
        "sshd_logins": 50}
QUICK = {"logins": 50, "unseed_logins": 2, "scale_sizes": (0, 1000),
         "scale_rounds": 2, "scale_processes": 2000, "scale_process_rounds": 1,
         "scale_reloads": 2, "packet_sessions": 1000,
         "scale_per_round": 10, "packet_rounds": 3, "packet_seconds": 0.5,
         "reload_sizes": (10, 100, 1000), "reload_rounds": 3, "launcher_logins": 30,
         "sshd_logins": 20}
# --big: the scale section also at 100,000 live sessions (open_scale_ratio is then
# taken there); the reload with sessions is timed once at that size
BIG_SCALE_SIZE = 100000
SECTIONS = ("login", "scale", "packet", "reload", "launcher", "sshd")

# key, goal text, check; the first nine are issue 12's table
GOALS = {
    "connect_rate_ratio_netfence_vs_conntrack": (">= 0.95", lambda v: v >= 0.95),
    "connect_rate_ratio_netfence200_vs_conntrack": (">= 0.95", lambda v: v >= 0.95),
    "reload_vs_nft_f_ratio_1000": ("<= 3", lambda v: v <= 3),
    "reload_ms_at_10000_sessions": ("<= 1,000", lambda v: v <= 1000),
    "close_processes_ratio": ("<= 1.2", lambda v: v <= 1.2),
    "open_vs_bare_ratio": ("<= 1.5", lambda v: v <= 1.5),
    "sshd_login_ratio": ("<= 1.10", lambda v: v <= 1.10),
    "open_scale_ratio": ("<= 1.2 (at open_scale_ratio_sessions)", lambda v: v <= 1.2),
    "open_scale_ratio_at_100000": ("<= 1.2", lambda v: v <= 1.2),
    "connect_rate_ratio_netfence": (">= 0.95", lambda v: v >= 0.95),
    "connect_rate_ratio_linear": ("far below 1 (<= 0.5)", lambda v: v <= 0.5),
    "open_vs_iptables_seed_ratio": ("well below 1 (<= 0.5)", lambda v: v <= 0.5),
    "hook_peak_rss_mb": ("<= 25", lambda v: v <= 25),
}

# issue 12's table: every one is reported by a full run with --big
ISSUE_KEYS = ("connect_rate_ratio_netfence_vs_conntrack",
              "connect_rate_ratio_netfence200_vs_conntrack", "reload_vs_nft_f_ratio_1000",
              "reload_ms_at_10000_sessions", "close_processes_ratio", "open_vs_bare_ratio",
              "sshd_login_ratio", "open_scale_ratio_at_100000")

TABLE = [
    ("1 login (ms)", ["logins", "open_ms_median", "open_ms_p95", "close_ms_median",
                      "close_ms_p95", "open_ms_median_uid_only", "close_ms_median_uid_only",
                      "bare_python_ms_median", "nft_f_ms_median",
                      "nft_f_delete_ms_median", "iptables_seed_ms_median",
                      "iptables_unseed_ms_median", "iptables_seed_processes",
                      "open_vs_bare_ratio", "open_uid_only_vs_bare_ratio",
                      "open_vs_iptables_seed_ratio", "cgroup_move_after_idle_ms_median",
                      "cgroup_move_again_ms_median"]),
    ("2 scale (ms)", ["open_ms_median_at_0", "open_ms_median_at_1000",
                      "open_ms_median_at_10000", "close_ms_median_at_0",
                      "close_ms_median_at_1000", "close_ms_median_at_10000",
                      "open_ms_median_at_100000", "close_ms_median_at_100000",
                      "open_scale_ratio", "close_scale_ratio", "open_scale_ratio_sessions",
                      "open_scale_ratio_at_1000", "open_scale_ratio_at_10000",
                      "open_scale_ratio_at_100000", "scale_setup_s_at_100000",
                      "scale_extra_processes",
                      "open_ms_median_with_processes", "close_ms_median_with_processes",
                      "close_processes_ratio", "open_processes_ratio", "reload_ms_at_0_sessions",
                      "reload_ms_at_1000_sessions", "reload_ms_at_10000_sessions",
                      "reload_ms_at_100000_sessions"]),
    ("3 packet (connections/s)", [
        "packet_live_sessions", "linear_chain_rules", "connect_rate_empty_unrestricted",
        "connect_rate_netfence_unrestricted", "connect_rate_linear_unrestricted",
        "connect_rate_empty_restricted", "connect_rate_netfence_restricted",
        "connect_rate_linear_restricted", "connect_rate_ratio_netfence",
        "connect_rate_ratio_netfence_unrestricted", "connect_rate_ratio_linear",
        "connect_rate_ratio_linear_unrestricted", "connect_rate_conntrack_unrestricted",
        "connect_rate_conntrack_restricted", "connect_rate_ratio_conntrack",
        "connect_rate_ratio_conntrack_unrestricted", "connect_rate_ratio_netfence_vs_conntrack",
        "connect_rate_ratio_netfence_vs_conntrack_unrestricted", "connect_failures",
        "connect_rate_ratio_empty_again", "connect_rate_ratio_empty_again_unrestricted",
        "connect_rate_accounting_unrestricted", "connect_rate_accounting_restricted",
        "connect_rate_ratio_accounting", "connect_rate_ratio_accounting_unrestricted",
        "connect_rate_ratio_accounting_vs_netfence",
        "connect_rate_ratio_accounting_vs_netfence_unrestricted",
        "connect_rate_netfence200_unrestricted", "connect_rate_netfence200_restricted",
        "connect_rate_ratio_netfence200", "connect_rate_ratio_netfence200_unrestricted",
        "connect_rate_ratio_netfence200_vs_conntrack",
        "connect_rate_ratio_netfence200_vs_conntrack_unrestricted",
        "connect_rate_ratio_netfence200_vs_netfence",
        "connect_rate_ratio_netfence200_vs_netfence_unrestricted",
        "connect_rate_floor_restricted", "connect_rate_ratio_floor_vs_conntrack",
        "connect_rate_ratio_netfence_vs_floor", "conntrack_entries_netfence"]),
    ("4 reload (ms)", ["reload_ms_10", "reload_ms_100", "reload_ms_1000",
                       "reload_nft_f_ms_10", "reload_nft_f_ms_100", "reload_nft_f_ms_1000",
                       "reload_vs_nft_f_ratio_10", "reload_vs_nft_f_ratio_100",
                       "reload_vs_nft_f_ratio_1000", "reload_nft_f_rules_changed_1000",
                       "reload_nft_rules_10", "reload_nft_rules_100", "reload_nft_rules_1000"]),
    ("5 memory (MiB)", ["hook_peak_rss_mb", "hook_peak_rss_mb_median",
                        "bare_python_peak_rss_mb"]),
    ("6 launcher (ms; supervised vs exec-only launcher, same run)", [
        "launcher_logins", "launcher_open_ms_median_supervised",
        "launcher_open_ms_median_exec_only", "launcher_open_ms_median_python",
        "launcher_open_added_ms", "launcher_open_ratio_vs_exec_only",
        "launcher_open_ratio_vs_python", "launcher_close_ms_median_supervised",
        "launcher_close_ms_median_exec_only", "launcher_close_ms_median_python",
        "launcher_close_added_ms", "launcher_close_ratio_vs_exec_only",
        "launcher_close_ratio_vs_python"]),
    ("7 sshd (ms; ssh ... true with the hook in sshd's PAM service / without)", [
        "sshd_logins", "sshd_login_ms_median_hook", "sshd_login_ms_median_plain",
        "sshd_login_ms_p95_hook", "sshd_login_ms_p95_plain", "sshd_login_added_ms",
        "sshd_hook_open_ms_median", "sshd_login_ratio_paired",
        "sshd_login_ratio"]),
]


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_sections(cfg, sections, results, errors, state):
    from support.users import throwaway_user

    import launcher
    import login
    import packet
    import profile_hook
    import reloads
    import scale
    import sshd_login

    with contextlib.ExitStack() as stack:
        user = stack.enter_context(throwaway_user(prefix="nfb", groups=("students",)))
        state["user"] = user.name
        state["group"] = user.groups["students"]
        ws = Workspace(stack)
        state["tag"] = ws.tag
        state["paths"] = ws.owned_paths
        steps = {
            "login": lambda: login.login_section(ws, user, cfg["logins"],
                                                 unseed_iterations=cfg["unseed_logins"])[0],
            "scale": lambda: scale.scale_section(ws, user, list(cfg["scale_sizes"]),
                                                 cfg["scale_rounds"], cfg["scale_per_round"],
                                                 cfg["scale_processes"],
                                                 cfg["scale_process_rounds"],
                                                 cfg["scale_reloads"])[0],
            "packet": lambda: packet.packet_section(ws, user, cfg["packet_sessions"],
                                                    cfg["packet_rounds"], cfg["packet_seconds"]),
            "reload": lambda: reloads.reload_section(ws, list(cfg["reload_sizes"]),
                                                     cfg["reload_rounds"]),
            "profile": lambda: {"profile": profile_hook.profile(ws, user)},
            "launcher": lambda: launcher.launcher_section(ws, user, cfg["launcher_logins"]),
            "sshd": lambda: sshd_login.sshd_section(ws, user, cfg["sshd_logins"]),
        }
        for name in sections:
            log(f"== {name}")
            started = time.monotonic()
            try:
                results.update(steps[name]())
            except KeyboardInterrupt:
                raise
            except Exception as err:           # noqa: BLE001 - report it, run the rest
                errors[name] = f"{type(err).__name__}: {err}"
                log(f"  FAILED: {errors[name]}")
            log(f"  ({time.monotonic() - started:.1f} s)")


def source_version():
    """The commit of the netfence source measured (+dirty with local changes in src/)."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def print_table(results, out):
    width = max(len(k) for _, keys in TABLE for k in keys)
    for title, keys in TABLE:
        shown = [k for k in keys if k in results]
        if not shown:
            continue
        print(f"\n{title}", file=out)
        for key in shown:
            value = results[key]
            goal = ""
            if key in GOALS and value is not None:
                text, check = GOALS[key]
                goal = f"goal {text}: {'met' if check(value) else 'MISSED'}"
            print(f"  {key:<{width}}  {fmt(value):>12}  {goal}", file=out)
    missing = [key for key in ISSUE_KEYS if results.get(key) is None]
    if missing:
        print(f"\nissue 12 keys not measured in this run: {', '.join(missing)}", file=out)


def report(args, results, errors, left):
    """The table (on stderr when the JSON goes to stdout), then the JSON."""
    for key in GOALS:
        if results.get(key) is not None:
            results.setdefault("goals", {})[key] = GOALS[key][1](results[key])
    if errors:
        results["errors"] = errors
    out = sys.stderr if args.json == "-" else sys.stdout
    print_table(results, out)
    print(f"\nduration {results['duration_s']} s; cleanup: "
          f"{'verified, nothing left' if not left else 'LEFT: ' + '; '.join(left)}", file=out)
    for name, err in errors.items():
        print(f"section {name} failed: {err}", file=out)
    if args.json:
        text = json.dumps(results, indent=2, sort_keys=True) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            with open(args.json, "w") as handle:
                handle.write(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions, 1,000 instead of 10,000 sessions (< 2 min)")
    parser.add_argument("--big", action="store_true",
                        help=f"the scale section also at {BIG_SCALE_SIZE:,} live sessions "
                             "(setup takes minutes)")
    parser.add_argument("--json", metavar="FILE", nargs="?", const="-",
                        help="write the results as one JSON object to FILE (without FILE "
                             "or -: to stdout, the table then goes to stderr)")
    parser.add_argument("--only", metavar="SECTIONS",
                        help=f"comma-separated subset of {','.join(SECTIONS)} (and profile)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the hook (phase timers, -X importtime, cProfile)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run as root: it creates network namespaces, cgroups and a user")
    sections = SECTIONS if not args.only else tuple(args.only.split(","))
    if args.profile and "profile" not in sections:
        sections += ("profile",)
    unknown = set(sections) - set(SECTIONS) - {"profile"}
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    cfg = dict(QUICK if args.quick else FULL)
    if args.big:
        cfg["scale_sizes"] = tuple(cfg["scale_sizes"]) + (BIG_SCALE_SIZE,)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)

    started = time.monotonic()
    results = {"quick": bool(args.quick), "big": bool(args.big), "python": sys.version.split()[0],
               "kernel": platform.release(), "cpus": os.cpu_count(),
               "netfence_commit": source_version(),
               "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    errors, state = {}, {}
    interrupted = False
    try:
        run_sections(cfg, sections, results, errors, state)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: cleaned up")
    left_children = reap_children()       # none expected: every helper was stopped
    if left_children:
        log(f"reaped {left_children} leftover child processes")
    left = leftovers(state.get("tag"), [state["user"]] if "user" in state else [],
                     [state["group"]] if "group" in state else [], state.get("paths", ()))
    results["cleanup_leftovers"] = left
    results["duration_s"] = round(time.monotonic() - started, 1)
    report(args, results, errors, left)
    if interrupted:
        return 130
    return 1 if errors or left else 0


if __name__ == "__main__":
    sys.exit(main())
