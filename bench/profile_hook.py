"""bench/run.py --profile: where a login's time goes.

Three views of the same open/close, each run by the driver like pam_exec runs the hook:
  phases      bench/hook_phases.py: the hook's main() with timers on the functions that
              do the work (median over several logins), interpreter start excluded;
  importtime  `python3 -X importtime`: the modules the hook imports, by self time;
  cprofile    `python3 -m cProfile`: the functions with the most own time.
"""

import ast
import os
import pstats
import sys

from common import DriverSpec, log, median, ms, rnd, run_driver
from login import hook_argv, items, setup_env

BENCH = os.path.dirname(os.path.abspath(__file__))


def _hook_py(ws):
    return ws.hook + ".py" if os.path.exists(ws.hook + ".py") else ws.hook


def profile(ws, user, logins=15):
    from netfence.hookstub import search_path
    env = setup_env(ws, "profile", user)
    args = hook_argv(ws, env)[1:]
    py = [sys.executable, "-I", "-S"]
    out = {}

    # phases
    files = {ev: ws.path(f"phases-{ev}.jsonl") for ev in ("open", "close")}
    spec = DriverSpec(logins).pause(100)          # logins spaced out, like real ones
    for ev in ("open", "close"):
        spec.step(ev, [py + [os.path.join(BENCH, "hook_phases.py"),
                             f"--path={':'.join(search_path())}", f"--out={files[ev]}", *args]],
                  items(f"{ev}_session", user))
    spec.step("bare", [py + ["-c", "pass"]], items("open_session", user))
    res = run_driver(ws, env.netns, spec, "profile-phases")
    out["bare_python_ms_median"] = rnd(median(ms(res["bare"])), 2)
    for ev in ("open", "close"):
        runs = [ast.literal_eval(line) for line in open(files[ev])]
        names = sorted({k for r in runs for k in r})
        phases = {k: rnd(median([r.get(k, 0.0) for r in runs]), 2) for k in names}
        out[f"{ev}_wall_ms_median"] = rnd(median(ms(res[ev])), 2)
        out[f"{ev}_phases_ms"] = dict(sorted(phases.items(), key=lambda kv: -kv[1]))

    # -X importtime (last of a few runs: warm page cache)
    spec = DriverSpec(3)
    err = {ev: ws.path(f"importtime-{ev}.txt") for ev in ("open", "close")}
    for ev in ("open", "close"):
        spec.step(ev, [[sys.executable, "-X", "importtime", "-I", "-S", _hook_py(ws), *args]],
                  items(f"{ev}_session", user), stderr=err[ev])
    run_driver(ws, env.netns, spec, "profile-importtime")
    for ev in ("open", "close"):
        out[f"{ev}_importtime"] = _importtime(open(err[ev]).read())

    # cProfile
    spec = DriverSpec(1)
    stats = {ev: ws.path(f"cprofile-{ev}.prof") for ev in ("open", "close")}
    for ev in ("open", "close"):
        spec.step(ev, [py + ["-m", "cProfile", "-o", stats[ev], _hook_py(ws), *args]],
                  items(f"{ev}_session", user))
    run_driver(ws, env.netns, spec, "profile-cprofile")
    for ev in ("open", "close"):
        st = pstats.Stats(stats[ev])
        rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:10]
        out[f"{ev}_cprofile_top_tottime"] = [
            f"{tt * 1000:.2f} ms  {os.path.basename(f)}:{line}({fn})"
            for (f, line, fn), (_cc, _nc, tt, _ct, _callers) in rows]
    print_profile(out)
    return out


def _importtime(text):
    """{"total_ms", "netfence_ms", "top": [(module, self ms)]} of the last run."""
    run = text.split("import time: self [us] | cumulative | imported package")[-1]
    rows = []
    for line in run.splitlines():
        if not line.startswith("import time:"):
            continue
        self_us, cumulative, name = line[len("import time:"):].split("|")
        rows.append((name.strip(), int(self_us), int(cumulative), len(name) - len(name.lstrip())))
    total = sum(r[1] for r in rows)
    ours = sum(r[1] for r in rows if r[0].startswith("netfence"))
    top = sorted(rows, key=lambda r: -r[1])[:12]
    return {"total_ms": rnd(total / 1000, 2), "netfence_modules_ms": rnd(ours / 1000, 2),
            "top_self_ms": [[name, rnd(s / 1000, 2)] for name, s, _c, _d in top]}


def print_profile(out):
    log(f"  bare interpreter {out['bare_python_ms_median']} ms")
    for ev in ("open", "close"):
        log(f"  {ev}: wall {out[f'{ev}_wall_ms_median']} ms; phases (ms, median):")
        for name, value in out[f"{ev}_phases_ms"].items():
            log(f"    {value:8.2f}  {name}")
        imp = out[f"{ev}_importtime"]
        log(f"  {ev} -X importtime: {imp['total_ms']} ms in all, netfence modules "
            f"{imp['netfence_modules_ms']} ms; top: "
            + ", ".join(f"{n} {v}" for n, v in imp["top_self_ms"][:8]))
        log(f"  {ev} cProfile, own time:")
        for row in out[f"{ev}_cprofile_top_tottime"][:6]:
            log(f"    {row}")
