"""Section 2: login time with 0, 1,000 and 10,000 live sessions, and with the
processes such sessions bring (close must not depend on them: it asks the user's
cgroups, not /proc).

Other users' live sessions are faked where the hook would see them: their elements in
the kernel (added with netfence's own Ruleset.add_elements) and their records in
run_dir (written with netfence.records), the PAM applications' pids above pid_max so
that none is ever alive.
"""

import json
import os
import subprocess
import time

from common import DriverSpec, SRC, log, median, ms, rnd, run_driver
from login import (LOGIN_GAP_MS, cg_key, login_sets, login_spec, reload_argv, setup_env,
                   uid_key)

FAKE_SESSION_CG = 10 ** 12          # fake cgroup ids of other sessions' cgroups
FAKE_USER_CG = 2 * 10 ** 12         # ... of their user cgroups
FAKE_UID = 3_000_000                # fake uids of other logged-in users
BIG_SIZE = 100_000                  # run.py --big


def fill_sessions(env, count):
    """`count` live sessions of other users: their elements in the kernel (through
    netfence's own Ruleset.add_elements) and their records in run_dir."""
    if not count:
        return
    sets = login_sets(env)
    for kind, key_kind, first in (("scg", "cg", FAKE_SESSION_CG), ("uid", "uid", FAKE_UID),
                                  ("ucg", "cg", FAKE_USER_CG)):
        for name in sets[kind]:
            env.helper("fill", name, key_kind, str(first), str(count))
    write_fake_records(env, count, sets)


def write_fake_records(env, count, sets):
    """Session, user and cgroup-reference records as the hook writes them, for `count`
    sessions whose PAM applications have pids above pid_max (never alive)."""
    from netfence import records
    with open("/proc/sys/kernel/pid_max") as handle:
        first_pid = int(handle.read()) + 1
    with open(os.path.join(env.state_dir, "compiled.json")) as handle:
        policy_id = json.load(handle)["policy_id"]
    records.ensure_dirs(env.run_dir)
    for i in range(count):
        key = f"{first_pid + i}-{1000 + i}"
        uid, sess_cg, user_cg = FAKE_UID + i, FAKE_SESSION_CG + i, FAKE_USER_CG + i
        user_path = f"/{env.cgroup_base}/user-{uid}"
        user_elements = {name: [uid_key(uid)] for name in sets["uid"]}
        user_elements.update({name: [cg_key(user_cg)] for name in sets["ucg"]})
        session = {
            "key": key, "user": f"fake{i}", "uid": uid, "service": "sshd",
            "rhost": "198.51.100.9", "tty": "ssh", "ppid": first_pid + i,
            "starttime": 1000 + i, "policy_id": policy_id,
            "user_profiles": ["no-servers", "no-mail"], "session_profiles": ["web-only"],
            "cgroup": f"{user_path}/session-{key}", "cgroup_id": sess_cg,
            "user_cgroup": user_path, "user_cgroup_id": user_cg, "created": True,
            "origin": "/", "base": env.cgroup_base,
            "session_elements": {name: [cg_key(sess_cg)] for name in sets["scg"]},
            "user_elements": user_elements, "opened_at": 1.7e9 + i,
        }
        records.write(records.session_path(env.run_dir, key), session)
        records.write(records.user_path(env.run_dir, uid), {
            "uid": uid, "user": f"fake{i}", "elements": user_elements, "sessions": [key],
            "user_cgroups": [user_path], "updated_at": 1.7e9 + i})
        records.write_refs(env.run_dir, sess_cg, [key])


def idle_processes(ws, count):
    """`count` sleeping processes (netbench idle), stopped and reaped at the end."""
    proc = subprocess.Popen([ws.netbench, "idle", str(count)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, text=True)
    ws.stack.callback(stop_idle, proc)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"could not start {count} idle processes")
    return proc


def stop_idle(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def process_headroom():
    with open("/proc/sys/kernel/pid_max") as handle:
        pid_max = int(handle.read())
    running = sum(1 for name in os.listdir("/proc") if name.isdigit())
    return max(0, pid_max - running - 8192)


def scale_envs(ws, user, sizes):
    """({size: env with that many live sessions, checked, after two warm-up logins},
    {size: its setup time in s})."""
    envs, setup_s = {}, {}
    for size in sizes:
        started = time.monotonic()
        env = setup_env(ws, f"scale{size}", user)
        fill_sessions(env, size)
        counts = json.loads(env.helper("counts").stdout)
        for set_name in sum(login_sets(env).values(), []):
            if counts[set_name] != size:
                raise RuntimeError(f"{set_name} holds {counts[set_name]}, not {size}")
        run_driver(ws, env.netns, login_spec(ws, env, user, 2), f"scale{size}-warmup")
        envs[size] = env
        setup_s[size] = time.monotonic() - started
        if size >= BIG_SIZE:
            log(f"  {size:,} live sessions set up in {setup_s[size]:.0f} s")
    return envs, setup_s


def reloads_with_sessions(ws, envs, reps):
    """reload with live sessions: it reads every element back and every record (once
    at the --big size: it takes long there)."""
    out = {}
    for size, env in envs.items():
        spec = DriverSpec(reps if size < BIG_SIZE else 1)
        spec.step("reload", [reload_argv(env)], [("PYTHONPATH", SRC)])
        res = run_driver(ws, env.netns, spec, f"scale{size}-reload")
        out[f"reload_ms_at_{size}_sessions"] = median(ms(res["reload"]))
    return out


def scale_section(ws, user, sizes, rounds, per_round, processes=0, process_rounds=2,
                  reload_reps=3):
    envs, setup_s = scale_envs(ws, user, sizes)
    samples = {size: {"open": [], "close": []} for size in sizes}
    log(f"  {rounds} rounds x {per_round} logins at {', '.join(map(str, sizes))} "
        f"live sessions ...")
    for r in range(rounds):
        for size in (sizes if r % 2 == 0 else sizes[::-1]):
            env = envs[size]
            res = run_driver(ws, env.netns,
                             login_spec(ws, env, user, per_round, LOGIN_GAP_MS), f"scale{size}")
            samples[size]["open"] += ms(res["open"])
            samples[size]["close"] += ms(res["close"])
    out = {}
    for size in sizes:
        out[f"open_ms_median_at_{size}"] = median(samples[size]["open"])
        out[f"close_ms_median_at_{size}"] = median(samples[size]["close"])
        out[f"scale_setup_s_at_{size}"] = setup_s[size]
        if size:
            out[f"open_scale_ratio_at_{size}"] = (out[f"open_ms_median_at_{size}"]
                                                  / out["open_ms_median_at_0"])
    largest = max(sizes)
    out["open_scale_ratio_sessions"] = largest
    out["open_scale_ratio"] = out[f"open_ms_median_at_{largest}"] / out["open_ms_median_at_0"]
    out["close_scale_ratio"] = out[f"close_ms_median_at_{largest}"] / out["close_ms_median_at_0"]
    # Live sessions come with processes; close asks the kernel's cgroup accounting of
    # the closing user only, so `processes` more (sleeping) processes on the host must
    # not change its cost: the same logins at the largest size with them.
    processes = min(processes, process_headroom())
    if processes:
        proc_rounds = process_rounds
        log(f"  {proc_rounds} rounds x {per_round} logins at {largest} sessions with "
            f"{processes} extra processes ...")
        idle = idle_processes(ws, processes)
        with_procs = {"open": [], "close": []}
        env = envs[largest]
        for r in range(proc_rounds):
            res = run_driver(ws, env.netns,
                             login_spec(ws, env, user, per_round, LOGIN_GAP_MS),
                             f"scale{largest}-procs")
            with_procs["open"] += ms(res["open"])
            with_procs["close"] += ms(res["close"])
        stop_idle(idle)
        out["scale_extra_processes"] = processes
        out["open_ms_median_with_processes"] = median(with_procs["open"])
        out["close_ms_median_with_processes"] = median(with_procs["close"])
        out["close_processes_ratio"] = (out["close_ms_median_with_processes"]
                                        / out[f"close_ms_median_at_{largest}"])
        # the same for open, which never looked at other processes: how much slower
        # the machine itself is with them (process start, page faults, scheduling)
        out["open_processes_ratio"] = (out["open_ms_median_with_processes"]
                                       / out[f"open_ms_median_at_{largest}"])
    out.update(reloads_with_sessions(ws, envs, reload_reps))
    return {k: rnd(v, 3) if isinstance(v, float) else v for k, v in out.items()}, envs
