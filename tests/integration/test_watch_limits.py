"""`netfence watch` at the edges of its environment (root, private netns): /proc
mounted hidepid=2 under the unit's capabilities, too few file descriptors for one
pidfd per session, many logins while a user grant is in force.
"""

import concurrent.futures
import os
import time

import pytest

from netfence import grants
from support.livesession import login, logout
from support.pamsvc import wait_until
from support.watcher import UID, Watcher
from test_watch import loaded  # noqa: F401  (the fixture: policy loaded, echo server)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, cgroups")

# the unit's capability set, in a mount namespace whose /proc hides other users'
# processes (as on hosts with hidepid=2,gid=proc: root is not in that group): su's
# real uid is the user's
UNIT_CAPS = ["setpriv", "--bounding-set=-all,+net_admin", "--inh-caps=-all", "--"]
HIDEPID = ["unshare", "-m", "--propagation", "private", "sh", "-c",
           'mount -t proc -o hidepid=invisible,gid=4242 proc /proc && exec "$@"', "sh"]


def _stopped_cleanly(watcher):
    code = watcher.stop()
    assert code in (0, None), f"watch exited {code}\n{watcher.log()}"
    assert "event=error" not in watcher.log(), watcher.log()


def test_a_session_hidden_by_hidepid_stays_open_until_its_application_exits(loaded):
    nf = loaded
    key, app = login(nf, UID, user_profiles=["web"], app_uid=UID)
    # the setup really hides it: the test proves nothing otherwise
    seen = nf.netns.run(HIDEPID + UNIT_CAPS + ["cat", f"/proc/{app.pid}/stat"], check=False)
    assert seen.returncode != 0, seen.stdout
    record = f"{nf.run_dir}/sessions/{key}"
    watcher = Watcher(nf, wrap=HIDEPID + UNIT_CAPS).start()
    try:
        gcs = len(watcher.lines("gc"))
        watcher.proc.send_signal(1)                       # SIGHUP: a full gc now
        wait_until(lambda: len(watcher.lines("gc")) > gcs, timeout=5, interval=0.02,
                   what="a gc after SIGHUP")
        time.sleep(0.3)
        assert os.path.exists(record), watcher.log()
        assert nf.probe("tcp", "127.0.0.1", 80, uid=UID) == "refused"
        assert "hides" in watcher.log()
        app.kill()
        app.wait()
        wait_until(lambda: not os.path.exists(record), timeout=1, interval=0.01,
                   what="the session's close after its application exited")
    finally:
        _stopped_cleanly(watcher)


def test_sessions_beyond_the_descriptor_limit_still_close_and_flushes_are_repaired(loaded):
    nf = loaded
    watcher = Watcher(nf, wrap=["prlimit", "--nofile=64:64", "--"]).start()
    try:
        apps = [login(nf, UID, user_profiles=["web"])[1] for _ in range(80)]
        time.sleep(0.6)                                   # the element checks settle
        flushed = time.monotonic()
        nf.netns.nft("flush", "ruleset")
        wait_until(lambda: nf.probe("tcp", "127.0.0.1", 80, uid=UID, timeout=0.3)
                   == "refused", timeout=1, interval=0, what="enforcement back")
        assert time.monotonic() - flushed < 1.0
        watcher.wait_line("repair")
        for app in apps:
            app.kill()
            app.wait()
        wait_until(lambda: not os.listdir(f"{nf.run_dir}/sessions"), timeout=3,
                   interval=0.02, what="every dead session closed")
        assert len(watcher.lines("closed")) == 80
        # 64 descriptors, 32 kept free: 32 sessions had a pidfd, 48 none
        assert " pidfds=32" in watcher.lines("start")[0], watcher.log()
        assert len(watcher.lines("warning")) == 1, watcher.log()
    finally:
        _stopped_cleanly(watcher)


def _grant_user(nf, uid, seconds=3600):
    now = time.time()
    entry = {"id": "g-0000feed", "kind": "grant", "profile": "web", "uid": uid,
             "user": "nobody", "created": now, "expires": now + seconds,
             "reason": "test", "by": "root"}
    grants.write(nf.state_dir, [entry], now)


def test_a_burst_of_logins_under_a_user_grant_costs_a_few_reconciles(loaded):
    nf = loaded
    _grant_user(nf, UID)
    watcher = Watcher(nf).start()
    try:
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            logins = list(pool.map(lambda _: login(nf, UID, user_profiles=["web"]),
                                   range(50)))
        time.sleep(0.5)
        for key, app in logins:
            assert logout(nf, key) == "closed"
            app.kill()
    finally:
        _stopped_cleanly(watcher)
    reconciles = watcher.counts()["reconciles"]
    assert 1 <= reconciles <= 15, watcher.log()
