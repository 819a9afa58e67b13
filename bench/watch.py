"""`netfence watch`'s figures (docs/watch.md), in a private network namespace:

  - SIGKILL of a session's PAM application -> its record, entries and cgroup gone;
  - `nft flush ruleset` -> enforcement back, seen by a probe running as the fenced uid;
  (median and worst of --tries each)
  - watch's CPU time per login (opens and closes of --sessions sessions), its RSS
    after them and at start, and its idle CPU over --idle seconds;
  - --concurrent live sessions at once: watch's descriptors and RSS with them, a
    flush repaired with them live, and all of them killed -> every record gone.

    sudo python3 bench/watch.py [--tries 20] [--sessions 2000] [--concurrent 1000]
                                [--idle 30] [--json F]

Runs from the checkout (src/ and tests/support on the path, as bench/run.py).
"""

import argparse
import json
import os
import subprocess
import sys
import time

from common import NetNS, NfEnv, median, rnd  # first: puts src/ and tests/ on sys.path

from support.livesession import login, logout
from support.watcher import POLICY, PROBER, UID, Watcher

def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.001)
    return time.monotonic()


def kill_to_cleanup(nf, tries):
    """Seconds from SIGKILL to the record and the session cgroup gone."""
    out = []
    for _ in range(tries):
        keep, keep_app = login(nf, UID, user_profiles=["web"])   # the user stays fenced
        key, app = login(nf, UID, user_profiles=["web"])
        cgroup = [d for d in os.listdir(f"{nf.cg_root}/user-{UID}") if key in d][0]
        path = f"{nf.cg_root}/user-{UID}/{cgroup}"
        start = time.monotonic()
        app.kill()
        app.wait()
        end = wait_for(lambda: not os.path.exists(f"{nf.run_dir}/sessions/{key}")
                       and not os.path.exists(path))
        out.append(end - start)
        logout(nf, keep)
        keep_app.kill()
        keep_app.wait()
    return out


def flush_to_enforcement(nf, tries):
    """Seconds from `nft flush ruleset` to the fenced uid's first refused probe."""
    key, app = login(nf, UID, user_profiles=["web"])
    prober = nf.netns.popen(["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
                             sys.executable, "-I", "-S", "-c", PROBER, "0.002"],
                            stdout=subprocess.PIPE, text=True)
    out = []
    try:
        for _ in range(tries):
            while prober.stdout.readline().split()[1] != "refused":
                pass
            started = time.time()
            nf.netns.nft("flush", "ruleset")
            # from before `nft` started to the first refused probe after one that
            # passed (the flush took effect): an upper bound, nft's own time included
            unfenced = False
            while True:
                stamp, result = prober.stdout.readline().split()
                if float(stamp) < started:
                    continue
                unfenced = unfenced or result == "ok"
                if unfenced and result == "refused":
                    out.append(float(stamp) - started)
                    break
            time.sleep(0.2)
    finally:
        prober.kill()
        prober.wait()
        logout(nf, key)
        app.kill()
        app.wait()
    return out


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def many_sessions(nf, watcher, count):
    """(watch's CPU ms per session open+close, RSS kB at start, RSS kB after)."""
    pid = watcher.proc.pid
    rss_start, cpu_start = watcher.rss_kb(), cpu_seconds(pid)
    for number in range(count):
        key, app = login(nf, UID, user_profiles=["web"])
        if number % 2:
            logout(nf, key)
        app.kill()                        # odd: closed by watch; even: already closed
        app.wait()
    wait_for(lambda: not os.listdir(f"{nf.run_dir}/sessions"), timeout=30)
    time.sleep(1.5)                       # the last element check
    return ((cpu_seconds(pid) - cpu_start) * 1000 / count, rss_start, watcher.rss_kb())


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def concurrent_sessions(nf, watcher, count, tries):
    """count sessions live at once: watch's descriptors and RSS, flush -> enforcement
    (tries), then SIGKILL of all -> every record gone."""
    pid = watcher.proc.pid
    apps = [login(nf, UID, user_profiles=["web"])[1] for _ in range(count)]
    time.sleep(1.0)
    result = {"count": count, "fds": open_fds(pid), "rss_kb": watcher.rss_kb()}
    result["flush_to_enforcement"] = summary(flush_to_enforcement(nf, tries))
    start = time.monotonic()
    for app in apps:
        app.kill()
    for app in apps:
        app.wait()
    result["kill_all_to_closed_s"] = rnd(wait_for(
        lambda: not os.listdir(f"{nf.run_dir}/sessions"), timeout=60) - start, 3)
    time.sleep(1.0)                       # the records' deletions reach watch
    result["fds_after"] = open_fds(pid)
    return result


def summary(values):
    return {"median_ms": rnd(median(values) * 1000, 1), "worst_ms": rnd(max(values) * 1000, 1),
            "tries": len(values)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--concurrent", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    results = {}
    with NetNS() as netns, NfEnv(netns) as nf:
        nf.write_policy(POLICY.format(base=nf.cgroup_base))
        nf.cli("reload")
        nf.echo_server(["tcp:127.0.0.1:80"])
        watcher = Watcher(nf, gc_interval=600).start()
        try:
            results["rss_start_kb"] = watcher.rss_kb()
            results["sigkill_to_cleanup"] = summary(kill_to_cleanup(nf, args.tries))
            results["flush_to_enforcement"] = summary(flush_to_enforcement(nf, args.tries))
            per_login, rss_before, rss_after = many_sessions(nf, watcher, args.sessions)
            results["sessions"] = {"count": args.sessions, "cpu_ms_per_session": rnd(per_login, 3),
                                   "rss_before_kb": rss_before, "rss_after_kb": rss_after}
            if args.concurrent:
                results["concurrent"] = concurrent_sessions(nf, watcher, args.concurrent,
                                                            min(args.tries, 5))
            results["checks_reconciles"] = None     # filled from the stop line
            before = cpu_seconds(watcher.proc.pid)
            time.sleep(args.idle)
            results["idle"] = {"seconds": args.idle,
                               "cpu_percent": rnd((cpu_seconds(watcher.proc.pid) - before)
                                                  * 100 / args.idle, 3)}
            results["repairs_logged"] = len(watcher.lines("repair"))
        finally:
            watcher.stop()
        if watcher.lines("stop"):
            results["checks_reconciles"] = watcher.counts()
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
