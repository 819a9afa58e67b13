"""Section 7 (sshd): what a user feels, end to end: `ssh -o BatchMode=yes
u@127.0.0.1 true` through a real OpenSSH server, with the netfence hook in sshd's PAM
service and without.

One network namespace with the login policy (its session rule names the hooked PAM
service), two sshd servers on 127.0.0.1 in it (tests/support/sshd.py: key auth, their
own config and host key), each under its own PAM service named after its program:
  hook   auth/account pam_permit, session pam_permit and the netfence line (the
         benchmark's hook program, on_error=deny, `debug` with pam_exec's log= so that
         every open and close leaves its result line);
  plain  the same without the netfence line.
The throwaway user logs in with a key, `ssh -o BatchMode=yes ... true`, alternately on
each server (hook, plain, plain, hook, ...), timed from the client's start to its exit
(an ssh client in the namespace through nsenter, the same argv but the port). Between
logins, untimed, the run waits until the server's per-connection processes are gone:
sshd runs close_session after the client has returned, and a close must not overlap the
next login. sshd_login_ratio = median(hook) / median(plain) (sshd_login_ratio_paired:
the median of the ratios within each alternated pair); sshd_hook_open_ms_median
is the median of the ms= the hook logged for its opens (its work after the interpreter
started), for telling the hook's own time from the rest of what the login adds.

Proof that the hook ran: before the timed logins, one login on each server prints its
cgroup (hook: inside the session cgroup under the installation's cgroup base; plain:
not); afterwards the hook's log holds exactly one `event=open ... result=ok` and one
`event=close ... result=ok` line of the user per hooked login, and no session record,
element or cgroup is left.
"""

import json
import os
import secrets
import subprocess
import time

from common import log, median, percentile, rnd
from login import hook_argv, setup_env
from support.pamsvc import pam_service, wait_until
from support.sshd import sshd_server

CGROUP_OF_SHELL = "sed -n 's/^0:://p' /proc/self/cgroup"


def _servers(ws, env, names):
    """{variant: SshServer}, each with its PAM service; everything on ws.stack."""
    hook_line = " ".join(["session required pam_exec.so seteuid quiet",
                          f"log={env.hook_log}", *hook_argv(ws, env), "debug"])
    stacks = {"hook": ["session required pam_permit.so", hook_line],
              "plain": ["session required pam_permit.so"]}
    servers = {}
    for variant, name in names.items():
        service = ws.stack.enter_context(pam_service(name, stacks[variant]))
        ws.owned_paths.append(service.path)
        server = ws.stack.enter_context(sshd_server(env.netns, name))
        ws.owned_paths.append(server.dir)
        servers[variant] = server
    return servers


def _events(env, event, user):
    try:
        with open(env.hook_log, errors="replace") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return []
    return [line for line in lines if line.startswith(f"netfence: event={event} ")
            and f" user={user.name} " in line and " warning=" not in line]


def _wait_idle(server, timeout=30):
    wait_until(lambda: not server.session_pids(), timeout=timeout,
               what="sshd's per-connection processes to exit (close_session)")


def _login(server, user):
    """Wall time (ms) of one `ssh ... true`; raises if it failed."""
    argv = server.ssh_argv(user, "true")
    started = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    elapsed = (time.perf_counter() - started) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"ssh to {server.service_name} exited {proc.returncode}: "
                           f"{proc.stderr.strip()}\n{server.log()[-2000:]}")
    _wait_idle(server)
    return elapsed


def _verify(env, servers, user):
    """One login on each server shows where the user's shell runs."""
    base = f"/{env.cgroup_base}/user-{user.uid}/session-"
    for variant, server in servers.items():
        out = server.ssh(user, CGROUP_OF_SHELL)
        if out.returncode != 0:
            raise RuntimeError(f"ssh ({variant}) failed: {out.stderr}\n{server.log()[-2000:]}")
        inside = out.stdout.strip().startswith(base)
        if inside != (variant == "hook"):
            raise RuntimeError(f"ssh ({variant}): the shell runs in {out.stdout.strip()!r}")
        _wait_idle(server)
    return len(_events(env, "open", user)), len(_events(env, "close", user))


def _check_after(env, user, expected):
    """Every hooked login opened and closed once, and left nothing; returns the ms=
    the hook logged for its timed opens (its own work, interpreter start excluded)."""
    opened = [e for e in _events(env, "open", user) if " result=ok" in e]
    closed = [e for e in _events(env, "close", user) if " result=ok" in e]
    if len(opened) != expected or len(closed) != expected:
        raise RuntimeError(f"the hook logged {len(opened)} opens and {len(closed)} closes "
                           f"of {user.name}, expected {expected} each")
    counts = json.loads(env.helper("counts").stdout)
    left = os.listdir(os.path.join(env.run_dir, "sessions"))
    if any(counts.values()) or left:
        raise RuntimeError(f"left after the ssh logins: elements {counts}, records {left}")
    return [float(word[3:]) for line in opened[1:] for word in line.split()
            if word.startswith("ms=")]


def sshd_section(ws, user, logins):
    names = {variant: f"nfb{variant}-{secrets.token_hex(3)}" for variant in ("hook", "plain")}
    env = setup_env(ws, "sshd", user, service=names["hook"])
    env.hook_log = os.path.join(env.root, "hook.log")
    servers = _servers(ws, env, names)
    for server in servers.values():
        server.add_key(user)
    opened, closed = _verify(env, servers, user)
    if (opened, closed) != (1, 1):
        raise RuntimeError(f"the verifying login logged {opened} opens, {closed} closes")
    samples = {"hook": [], "plain": []}
    order = ["hook", "plain"]
    log(f"  {logins} ssh logins with the hook and {logins} without, alternated ...")
    for i in range(logins):
        for variant in (order if i % 2 == 0 else order[::-1]):
            samples[variant].append(_login(servers[variant], user))
    hook_ms = _check_after(env, user, logins + 1)
    out = {"sshd_logins": logins, "sshd_hook_open_ms_median": rnd(median(hook_ms), 2)}
    for variant, values in samples.items():
        out[f"sshd_login_ms_median_{variant}"] = rnd(median(values), 2)
        out[f"sshd_login_ms_p95_{variant}"] = rnd(percentile(values, 95), 2)
    out["sshd_login_ratio"] = rnd(median(samples["hook"]) / median(samples["plain"]), 3)
    out["sshd_login_added_ms"] = rnd(median(samples["hook"]) - median(samples["plain"]), 2)
    # the same within each alternated pair: less sensitive to the load drifting
    pairs = [a / b for a, b in zip(samples["hook"], samples["plain"])]
    out["sshd_login_ratio_paired"] = rnd(median(pairs), 3)
    return out
