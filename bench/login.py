"""Sections 1 (login time and its baselines) and 5 (the hook's peak RSS), and what
the other sections share: private installations with the login policy, login specs,
held logins.

Every hook run goes through bench/c/driver.c, which starts it the way pam_exec does
(fork, setsid, stdio on /dev/null, only PAM_* in the environment, wait) from a fresh
"PAM application" per login that stays alive from open to close, and times it from
fork to wait. The baselines go through the same driver, in the same iteration as the
login they are compared with, so that machine noise hits them alike.
"""

import json
import os
import subprocess
import sys
import time

import policies
from common import (DriverSpec, log, median, ms, pam_env, percentile, remove_cgroup,
                    rnd, run_driver)

NFT = "/usr/sbin/nft"


# ---- a private installation with the login policy ------------------------------------

def setup_env(ws, name, user, account=False, service=policies.SERVICE,
              session_profile="web-only"):
    ns = ws.netns()
    env = ws.env(ns, name)
    env.session_profile = session_profile
    env.write_policy(policies.login_policy(user.name, user.groups["students"], env.cgroup_base,
                                           account=account, service=service,
                                           session_profile=session_profile))
    env.cli("reload")
    return env


def hook_argv(ws, env):
    return [ws.hook, "on_error=deny", f"state_dir={env.state_dir}", f"run_dir={env.run_dir}"]


def items(pam_type, user):
    return pam_env(pam_type, user.name, service=policies.SERVICE, tty="ssh",
                   rhost=policies.RHOST)


LOGIN_GAP_MS = 100     # between logins of the scale section (see docs/benchmarks.md)


def login_spec(ws, env, user, iterations, gap_ms=0):
    spec = DriverSpec(iterations)
    if gap_ms:
        spec.pause(gap_ms)
    spec.step("open", [hook_argv(ws, env)], items("open_session", user))
    spec.step("close", [hook_argv(ws, env)], items("close_session", user))
    return spec


def uid_key(uid):
    return uid.to_bytes(4, sys.byteorder).hex()


def cg_key(ident):
    return ident.to_bytes(8, sys.byteorder).hex()


class HeldLogin:
    """One login whose PAM application stays alive (driver `hold`) until close()."""

    def __init__(self, ws, env, user):
        self.env = env
        path = login_spec(ws, env, user, 1).hold("open").write(ws.path(f"hold-{env.tag}.spec"))
        self.proc = ws.popen(env.netns.wrap([ws.driver, path]), graceful=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        opened = self.proc.stdout.readline().split()
        held = self.proc.stdout.readline().split()
        if len(opened) != 5 or opened[3] != "0" or len(held) != 3 or held[0] != "hold":
            raise RuntimeError(f"held login failed to open: {opened} {held}")
        self.open_us = float(opened[2])
        self.pid = int(held[2])
        with open(f"/proc/{self.pid}/cgroup") as handle:
            self.cgroup = next(line[3:].strip() for line in handle if line.startswith("0::"))
        self.cgroup_dir = ws.cg_mount + self.cgroup

    def close(self):
        out, _ = self.proc.communicate("\n", timeout=30)
        closed = out.split()
        if len(closed) != 5 or closed[3] != "0":
            raise RuntimeError(f"held login failed to close: {out!r}")
        return float(closed[2])


def login_sets(env):
    """{"uid"|"ucg"|"scg": [set names]} a benchmark login adds its keys to: the
    profile sets, and the guard sets when the compiled policy has them (the union sets
    the base chains test first, "guards" in the login part)."""
    with open(os.path.join(env.state_dir, "compiled.json")) as handle:
        guards = json.load(handle)["login"].get("guards") or {}
    session = getattr(env, "session_profile", "web-only")
    out = {"uid": ["uid-no-mail"], "ucg": ["ucg-no-servers"], "scg": [f"scg-{session}"]}
    for kind in out:
        if guards.get(f"{kind}_set"):
            out[kind].append(guards[f"{kind}_set"])
    return out


def verify_login(ws, env, user):
    """Open one session and check the kernel and the records, then close it and check
    that everything is gone: a hook that exits 0 without doing its job must not pass
    for a fast one. Returns a short description."""
    login = HeldLogin(ws, env, user)
    try:
        elements = json.loads(env.helper("elements").stdout)
        session_key = cg_key(os.stat(login.cgroup_dir).st_ino)
        user_key = cg_key(os.stat(os.path.dirname(login.cgroup_dir)).st_ino)
        keys = {"uid": uid_key(user.uid), "ucg": user_key, "scg": session_key}
        expected = {name: keys[kind] for kind, names in login_sets(env).items()
                    for name in names}
        for set_name, key in expected.items():
            if key not in elements.get(set_name, ()):
                raise RuntimeError(f"open did not add {key} to {set_name}: {elements}")
        extra = {s: k for s, k in elements.items() if k and s not in expected}
        if extra:
            raise RuntimeError(f"open added unexpected elements: {extra}")
        sessions = os.listdir(os.path.join(env.run_dir, "sessions"))
        if len(sessions) != 1:
            raise RuntimeError(f"expected one session record, found {sessions}")
    finally:
        login.close()
    elements = json.loads(env.helper("elements").stdout)
    if any(elements.values()):
        raise RuntimeError(f"close left elements behind: {elements}")
    if os.listdir(os.path.join(env.run_dir, "sessions")) or os.path.exists(login.cgroup_dir):
        raise RuntimeError("close left a session record or cgroup behind")
    return (f"open added {len(expected)} elements ({', '.join(expected)}), cgroup "
            f"{login.cgroup}; close removed them, the record and the cgroup")


# ---- section 1 and 5 ----------------------------------------------------------------

def nft_files(ws, env, user):
    """`nft -f` files adding / deleting the same elements a login adds, with the
    cgroups as paths (the nft CLI accepts no numeric cgroup id)."""
    base = os.path.join(ws.cg_mount, f"nfbench-{ws.tag}-nftf")
    ws.stack.callback(remove_cgroup, base)
    session_dir = os.path.join(base, f"user-{user.uid}", "session-1")
    os.makedirs(session_dir)
    rel_session = os.path.relpath(session_dir, "/sys/fs/cgroup")
    rel_user = os.path.dirname(rel_session)
    if rel_session.startswith(".."):
        raise RuntimeError(f"cgroup2 mount {ws.cg_mount} is not under /sys/fs/cgroup")
    values = {"uid": str(user.uid), "ucg": f'"{rel_user}"', "scg": f'"{rel_session}"'}
    paths = {}
    for verb in ("add", "delete"):
        paths[verb] = ws.path(f"nft-{verb}.nft")
        with open(paths[verb], "w") as handle:
            for kind, names in login_sets(env).items():
                for name in names:
                    handle.write(f"{verb} element inet netfence {name} {{ {values[kind]} }}\n")
    return paths


def login_section(ws, user, iterations, warmup=3, unseed_iterations=5, move_samples=10):
    env = setup_env(ws, "login", user)
    verified = verify_login(ws, env, user)
    log(f"  verified: {verified}")
    # same namespace, same table (same profiles), a policy that needs no cgroup
    uid_env = ws.env(env.netns, "login-uid")
    uid_env.write_policy(policies.login_policy(user.name, user.groups["students"],
                                               uid_env.cgroup_base, uid_only=True))
    uid_env.cli("reload")
    nft = nft_files(ws, env, user)
    ipt_add = policies.iptables_commands(user.uid, "-A")
    ipt_del = policies.iptables_commands(user.uid, "-D")
    ipt_flush = [["/usr/sbin/iptables", "-F", "OUTPUT"], ["/usr/sbin/ip6tables", "-F", "OUTPUT"]]
    bare = [sys.executable, "-I", "-S", "-c", "pass"]
    open_env = items("open_session", user)

    def spec(n, unseed=False):
        s = login_spec(ws, env, user, n)
        s.step("open_uid", [hook_argv(ws, uid_env)], items("open_session", user))
        s.step("close_uid", [hook_argv(ws, uid_env)], items("close_session", user))
        s.step("bare", [bare], open_env)
        s.step("nft_add", [[NFT, "-f", nft["add"]]])
        s.step("nft_del", [[NFT, "-f", nft["delete"]]])
        s.step("ipt_add", ipt_add)
        s.step("ipt_del" if unseed else "ipt_flush", ipt_del if unseed else ipt_flush)
        return s

    run_driver(ws, env.netns, spec(warmup), "login-warmup")
    log(f"  {iterations} logins, each with its baselines (bare python, nft -f, "
        f"{len(ipt_add)} x iptables -A) ...")
    res = run_driver(ws, env.netns, spec(iterations), "login")
    log(f"  {unseed_iterations} more with iptables -D per rule ...")
    unseed = run_driver(ws, env.netns, spec(unseed_iterations, unseed=True), "login-unseed")
    leftover = json.loads(env.helper("counts").stdout)
    if any(leftover.values()):
        raise RuntimeError(f"elements left after the logins: {leftover}")
    open_ms, close_ms, bare_ms = ms(res["open"]), ms(res["close"]), ms(res["bare"])
    out = {
        "logins": len(open_ms),
        "open_ms_median": median(open_ms), "open_ms_p95": percentile(open_ms, 95),
        "close_ms_median": median(close_ms), "close_ms_p95": percentile(close_ms, 95),
        "open_ms_median_uid_only": median(ms(res["open_uid"])),
        "close_ms_median_uid_only": median(ms(res["close_uid"])),
        "bare_python_ms_median": median(bare_ms),
        "nft_f_ms_median": median(ms(res["nft_add"])),
        "nft_f_delete_ms_median": median(ms(res["nft_del"])),
        "iptables_seed_ms_median": median(ms(res["ipt_add"])),
        "iptables_unseed_ms_median": median(ms(unseed["ipt_del"])),
        "iptables_seed_processes": len(ipt_add),
        "iptables_seed_ipv4_rules": sum(1 for a in ipt_add if not a[0].endswith("ip6tables")),
        "iptables_seed_ipv6_rules": sum(1 for a in ipt_add if a[0].endswith("ip6tables")),
        "policy_net_rules": policies.net_rule_count(),
    }
    out["open_vs_bare_ratio"] = out["open_ms_median"] / out["bare_python_ms_median"]
    out["open_vs_iptables_seed_ratio"] = out["open_ms_median"] / out["iptables_seed_ms_median"]
    out["open_uid_only_vs_bare_ratio"] = (out["open_ms_median_uid_only"]
                                          / out["bare_python_ms_median"])
    first, second = cgroup_move_cost(ws, move_samples)
    out["cgroup_move_after_idle_ms_median"] = first
    out["cgroup_move_again_ms_median"] = second
    # section 5: wait4() rusage of each hook process itself (the driver's child)
    hook_rss = [s[2] for s in res["open"] + res["close"]]
    out["hook_peak_rss_mb"] = max(hook_rss) / 1024
    out["hook_peak_rss_mb_median"] = median(hook_rss) / 1024
    out["bare_python_peak_rss_mb"] = max(s[2] for s in res["bare"]) / 1024
    return {k: rnd(v, 3) if isinstance(v, float) else v for k, v in out.items()}, env


def cgroup_move_cost(ws, samples, idle=0.25):
    """(median ms of the first write to cgroup.procs after `idle` s without any
    migration, median ms of a second one right after). The first one waits for an RCU
    grace period (cgroup_threadgroup_rwsem's rcu_sync) unless the cgroup2 hierarchy is
    mounted with favordynmods; this is what a session cgroup costs at open and close."""
    base = os.path.join(ws.cg_mount, f"nfbench-{ws.tag}-move")
    ws.stack.callback(remove_cgroup, base)
    os.mkdir(base)
    with open("/proc/self/cgroup") as handle:
        origin = next(line[3:].strip() for line in handle if line.startswith("0::"))
    proc = ws.popen(["sleep", "600"])
    first, second = [], []
    for _ in range(samples):
        time.sleep(idle)
        for target, out in ((base, first), (ws.cg_mount + origin, second)):
            started = time.perf_counter()
            with open(os.path.join(target, "cgroup.procs"), "w") as handle:
                handle.write(str(proc.pid))
            out.append((time.perf_counter() - started) * 1000)
    proc.kill()
    proc.wait()
    return median(first), median(second)


def reload_argv(env):
    return [sys.executable, "-m", "netfence.cli", "--config-dir", env.config_dir,
            "--state-dir", env.state_dir, "--run-dir", env.run_dir, "reload"]
