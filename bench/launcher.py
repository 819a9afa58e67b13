"""Section "launcher": what the static launcher's hard time bound (signal reset, fork,
report pipe, deadline in the parent: c_ext/hook_launcher.c) adds to a login.

Three builds of the same hook, run interleaved in every iteration of one driver run
(bench/c/driver.c starts them as pam_exec does), each a full login (open, close) with
the login policy:

    supervised  the launcher built from c_ext/hook_launcher.c (what install-hook ships)
    exec_only   bench/c/launcher_exec_only.c: keep PAM_*, execute the Python hook; the
                launcher before issue 7, without its 64-entry flaw
    python      the Python hook program alone (installs without a static libc)

Figures: medians over `iterations` logins, the supervised/exec_only ratio and the
added milliseconds, per open and per close.
"""

import os
import subprocess
import sys

import login
from common import BENCH, ROOT, DriverSpec, log, median, ms, rnd, run_driver

VARIANTS = ("supervised", "exec_only", "python")


def _static(ws, source, out):
    subprocess.run(["gcc", "-static", "-O2", "-s", "-Wall", "-Wextra", "-o", out, source],
                   check=True, stdin=subprocess.DEVNULL)
    os.chmod(out, 0o755)


def build_hooks(ws):
    """{variant: path of the program pam_exec would run}."""
    from netfence.hookstub import script_text, search_path
    directory = ws.path("launcher-hooks")
    os.mkdir(directory, 0o755)
    text = script_text(sys.executable, search_path())
    paths = {}
    for name in VARIANTS:
        path = os.path.join(directory, name)
        with open(path + ".py", "w") as handle:
            handle.write(text)
        os.chmod(path + ".py", 0o755)
        paths[name] = path if name != "python" else path + ".py"
    _static(ws, os.path.join(ROOT, "c_ext", "hook_launcher.c"), paths["supervised"])
    _static(ws, os.path.join(BENCH, "c", "launcher_exec_only.c"), paths["exec_only"])
    return paths


def launcher_section(ws, user, iterations, warmup=3):
    env = login.setup_env(ws, "launcher", user)
    hooks = build_hooks(ws)
    args = ["on_error=deny", f"state_dir={env.state_dir}", f"run_dir={env.run_dir}"]

    def spec(n, stderr=None, order=VARIANTS):
        s = DriverSpec(n)
        extra = ["debug"] if stderr else []
        for name in order:
            for event in ("open", "close"):
                s.step(f"{event}_{name}", [[hooks[name], *args, *extra]],
                       login.items(f"{event}_session", user), stderr=stderr)
        return s

    # the warm-up logs (debug): every build must really fence and release the login
    warm_log = ws.path("launcher-warmup.log")
    run_driver(ws, env.netns, spec(warmup, warm_log), "launcher-warmup")
    with open(warm_log) as handle:
        lines = handle.read().splitlines()
    for event in ("open", "close"):
        done = [l for l in lines if l.startswith(f"netfence: event={event} ")
                and " result=ok " in l and " warning=" not in l]
        if len(done) != warmup * len(VARIANTS):
            raise RuntimeError(f"expected {warmup * len(VARIANTS)} {event} result=ok "
                               f"lines in the warm-up, got: {lines}")
    log(f"  {iterations} logins per build (supervised launcher, exec-only launcher, "
        f"Python alone), interleaved ...")
    # every build in every position equally often: the first cgroup move after a
    # pause costs more (RCU grace period, see cgroup_move_after_idle), so a fixed
    # order would bias the figures
    res = {}
    per = max(1, iterations // len(VARIANTS))
    for shift in range(len(VARIANTS)):
        order = VARIANTS[shift:] + VARIANTS[:shift]
        part = run_driver(ws, env.netns, spec(per, order=order), f"launcher-{shift}")
        for step, samples in part.items():
            res.setdefault(step, []).extend(samples)
    sessions = os.listdir(os.path.join(env.run_dir, "sessions"))
    if sessions:
        raise RuntimeError(f"session records left after the logins: {sessions}")
    out = {"launcher_logins": per * len(VARIANTS)}
    for event in ("open", "close"):
        for name in VARIANTS:
            out[f"launcher_{event}_ms_median_{name}"] = median(ms(res[f"{event}_{name}"]))
        sup = out[f"launcher_{event}_ms_median_supervised"]
        base = out[f"launcher_{event}_ms_median_exec_only"]
        out[f"launcher_{event}_added_ms"] = sup - base
        out[f"launcher_{event}_ratio_vs_exec_only"] = sup / base
        out[f"launcher_{event}_ratio_vs_python"] = (
            sup / out[f"launcher_{event}_ms_median_python"])
    return {k: rnd(v, 3) if isinstance(v, float) else v for k, v in out.items()}
