"""`netfence watch` applies a time window when it opens, for a session that is already
open (root, private netns, the real clock: the test waits for the next minute). The
watcher's gc interval is 600 s: only the window timer (a CLOCK_REALTIME timerfd) can
apply it in time; with the timerfd left unarmed this test fails."""

import os
import time

import pytest

from netfence import records
from netfence.setkinds import TUID
from support.livesession import login
from support.pamsvc import wait_until
from support.watcher import Watcher
from test_reload import POLICY

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")

UID = 60031


def give_window(nf, key, windows):
    """What the login path records for a rule with `time` (profile lab, user scope)."""
    path = records.session_path(nf.run_dir, key)
    record = records.read(path)
    record["timed"] = [{"rule": 1, "scope": "user", "windows": windows, "elements": {
        "tuid-lab": [TUID.key(UID)], "any-tuid": [TUID.key(UID)]}}]
    records.write(path, record)


def test_a_window_opening_3s_after_the_login_applies_when_it_opens(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    nf.cli("reload")
    nf.echo_server(["tcp:127.0.0.1:80"])
    watcher = Watcher(nf).start()
    try:
        # wait until the next minute is 3-4 s away: windows have minute resolution
        wait_until(lambda: 56 <= time.time() % 60 < 57, timeout=61, interval=0.05,
                   what="3-4 s before a minute boundary")
        opens = (int(time.time()) // 60 + 1) * 60
        lt = time.localtime(opens)
        start = lt.tm_hour * 60 + lt.tm_min
        key, _app = login(nf, UID)
        give_window(nf, key, [[127, start, (start + 30) % 1440]])
        assert nf.probe("tcp", "127.0.0.1", 80, uid=UID) == "ok"   # not yet: lab not applied
        wait_until(lambda: time.time() >= opens, timeout=10, interval=0.01, what="the opening")
        wait_until(lambda: nf.probe("tcp", "127.0.0.1", 80, uid=UID, timeout=0.3) == "refused",
                   timeout=1, interval=0, what="lab to apply within 1 s of the opening")
        assert watcher.lines("windows"), watcher.log()
    finally:
        code = watcher.stop()
    assert code == 0 and "event=error" not in watcher.log(), watcher.log()
