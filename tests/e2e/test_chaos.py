"""Chaos (issue 7): many real PAM logins and logouts from parallel workers, a random
tenth of the PAM applications SIGKILLed (before, during or after their open), reloads
running all along, and one foreign `nft flush ruleset` in between. After one
`netfence gc` the kernel must hold exactly what the live sessions and users need:
nothing leaked, nothing missing, and a sample of the live sessions still fenced.
"""

import os
import random
import threading
import time
from contextlib import ExitStack

import pytest

from conftest import PORT_A, PORT_B, PORT_C, settle_uid
from support.login import PAM_SUCCESS, PamSession, PamSessionError
from support.pamsvc import pam_service
from support.users import throwaway_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users, netns, PAM")

LOGINS = 200
WORKERS = 4
USERS = 4
KEEP_OPEN = 3                 # sessions each worker holds at a time (and at the end)
KILL_SHARE = 0.1

POLICY = """
[profile.sess]
egress = [ {{ action = "reject", proto = "tcp", ports = [{port_b}] }} ]

[profile.usr]
egress = [ {{ action = "reject", proto = "tcp", ports = [{port_c}] }} ]
ingress = [ {{ action = "allow", from = ["loopback"] }} ]
ingress_default = "deny"

[[rule]]
users = [{users}]
profiles = ["sess"]
scope = "session"

[[rule]]
users = [{users}]
profiles = ["usr"]
scope = "user"
"""


class Pause:
    """Workers run operations under the shared side; the flush takes it exclusively,
    so the foreign flush lands between operations, not inside one."""

    def __init__(self):
        self._cond = threading.Condition()
        self._active = 0
        self._stopped = False

    def __enter__(self):
        with self._cond:
            self._cond.wait_for(lambda: not self._stopped)
            self._active += 1

    def __exit__(self, *exc):
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def stop_the_world(self):
        with self._cond:
            self._stopped = True
            self._cond.wait_for(lambda: self._active == 0)

    def resume(self):
        with self._cond:
            self._stopped = False
            self._cond.notify_all()


class Chaos:
    def __init__(self, fence, service, users, seed):
        self.fence, self.service, self.users = fence, service, users
        self.rng = random.Random(seed)
        self.pause = Pause()
        self.lock = threading.Lock()
        self.live = []                  # open sessions at the end
        self.counts = {"logins": 0, "closes": 0, "killed": 0, "reloads": 0,
                       "failed": 0}
        self.failures = []
        self.done = threading.Event()

    def count(self, name, failure=None):
        with self.lock:
            self.counts[name] += 1
            if failure:
                self.failures.append(failure)

    def worker(self, index, logins):
        rng = random.Random(self.rng.random())
        held = []
        for n in range(logins):
            user = rng.choice(self.users)
            session = PamSession(self.service, user, rhost=f"198.51.100.{index + 1}",
                                 tty=f"pts/{n}", netns=self.fence.netns)
            with self.pause:
                if rng.random() < KILL_SHARE:
                    self.killed_login(session, rng)
                    continue
                self.login(session, held)
                if len(held) > KEEP_OPEN:
                    self.logout(held.pop(rng.randrange(len(held))))
        with self.lock:
            self.live += held

    def login(self, session, held):
        try:
            code = session.open(check=False)
        except PamSessionError as err:
            self.count("failed", f"open: {err}")
            return
        if code != PAM_SUCCESS:
            self.count("failed", f"open {code}: {session.stderr_text}")
            return
        self.count("logins")
        held.append(session)

    def logout(self, session):
        try:
            code = session.close(check=False)
        except PamSessionError as err:
            code = f"{err}"
        if code != PAM_SUCCESS:
            self.count("failed", f"close: {code}")
        else:
            self.count("closes")

    def killed_login(self, session, rng):
        """SIGKILL the PAM application at a random moment: during its open (the hook
        then runs on for a parent that is gone), or while the session is open."""
        def sigkill():
            if session.proc is not None and session.proc.poll() is None:
                session.proc.kill()      # only the signal: the pipes stay ours
        timer = threading.Timer(rng.uniform(0.0, 0.4), sigkill)
        timer.start()
        try:
            session.open(check=False)
        except PamSessionError:
            pass                         # killed before it answered
        timer.join()
        session.kill()
        self.count("killed")

    def reloader(self):
        while not self.done.is_set():
            with self.pause:
                result = self.fence.nf.cli("reload", check=False)
            if result.returncode != 0:
                self.count("failed", f"reload: {result.stderr.strip()}")
            else:
                self.count("reloads")
            time.sleep(0.3)

    def foreign_flush(self):
        """Someone else's firewall reload, between operations; the admin's answer is
        the one netfence documents: gc (every minute) restores the table."""
        self.pause.stop_the_world()
        try:
            self.fence.netns.nft("flush", "ruleset")
            restored = self.fence.nf.cli("gc", check=False)
            if restored.returncode != 0 or "table inet netfence" not in self.fence.ruleset():
                self.count("failed", f"gc did not restore the table: {restored.stderr}")
        finally:
            self.pause.resume()


def cgroup_of(pid):
    with open(f"/proc/{pid}/cgroup") as handle:
        return [l[3:] for l in handle.read().splitlines() if l.startswith("0::")][0]


def expected_elements(fence, live):
    sessions = {s.pid: cgroup_of(s.pid) for s in live}
    users = {s.user for s in live}
    uids = {u.uid for u in fence_users(fence) if u.name in users}
    user_cgroups = {os.path.dirname(cg) for cg in sessions.values()}
    return {"scg-sess": sorted(fence.nft_cgroup(cg) for cg in sessions.values()),
            "uid-usr": sorted(uids),
            "ucg-usr": sorted(fence.nft_cgroup(cg) for cg in user_cgroups)}


def fence_users(fence):
    return fence._chaos_users


def test_chaos_logins_kills_reloads_and_a_foreign_flush(fence):
    fence.echo()
    seed = int(os.environ.get("NETFENCE_CHAOS_SEED", time.time()))
    with ExitStack() as stack:
        users = [stack.enter_context(throwaway_user()) for _ in range(USERS)]
        for user in users:
            settle_uid(user.uid)
        fence._chaos_users = users
        fence.load(POLICY.format(port_b=PORT_B, port_c=PORT_C,
                                 users=", ".join(f'"{u.name}"' for u in users)))
        svc = stack.enter_context(pam_service(session_lines=[fence.pam_line(debug=False)]))
        chaos = Chaos(fence, svc.name, users, seed)
        stack.callback(lambda: [s.kill() for s in chaos.live])

        per_worker = LOGINS // WORKERS
        threads = [threading.Thread(target=chaos.worker, args=(i, per_worker))
                   for i in range(WORKERS)]
        reloader = threading.Thread(target=chaos.reloader)
        started = time.monotonic()
        for thread in threads + [reloader]:
            thread.start()
        while sum(chaos.counts[k] for k in ("logins", "killed", "failed")) < LOGINS // 2:
            time.sleep(0.05)
        chaos.foreign_flush()
        for thread in threads:
            thread.join(600)
        chaos.done.set()
        reloader.join(120)
        elapsed = time.monotonic() - started

        report = fence.nf.cli("gc").stdout.strip()
        want = expected_elements(fence, chaos.live)
        found = {name: sorted(elems) for name, elems in fence.filled().items()}
        leaked = {n: sorted(set(found.get(n, [])) - set(want.get(n, []))) for n in found}
        missing = {n: sorted(set(want[n]) - set(found.get(n, []))) for n in want}
        n_leaked = sum(len(v) for v in leaked.values())
        n_missing = sum(len(v) for v in missing.values())
        print(f"\nchaos seed={seed} {elapsed:.1f}s: " + " ".join(
            f"{k}={v}" for k, v in chaos.counts.items())
            + f" live={len(chaos.live)} leaked={n_leaked} missing={n_missing}\n{report}"
            + f"\nleaked: {leaked}\nmissing: {missing}")

        assert chaos.failures == [], chaos.failures[:5]
        assert chaos.counts["killed"] > 0 and chaos.counts["reloads"] > 0
        assert n_leaked == 0 and n_missing == 0, (leaked, missing)
        keys = sorted(s["key"] for s in fence.status()["sessions"])
        from netfence.liveness import session_key
        assert keys == sorted(session_key(s.pid)[0] for s in chaos.live)

        for session in random.Random(seed).sample(chaos.live, min(5, len(chaos.live))):
            cgroup = os.path.dirname(fence.nf.cg_root) + cgroup_of(session.pid)
            uid = next(u.uid for u in users if u.name == session.user)
            seen = [fence.nf.probe("tcp", "127.0.0.1", port, uid=uid, cgroup=cgroup)
                    for port in (PORT_A, PORT_B, PORT_C)]
            assert seen == ["ok", "refused", "refused"], (session.user, seen)
