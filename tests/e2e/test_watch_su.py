"""`netfence watch` with real su logins (root, private netns): the PAM application of
a live session SIGKILLed while its shell lives on.

What happens (docs/watch.md, "A killed PAM application"): su dies, its shell does not
(no terminal hangs it up; su's child is not killed with its parent). watch sees the
pidfd fire and closes the session exactly as gc would: the session's entries go
within 1 s, the user's other session keeps its own. The session cgroup cannot be
removed while the orphaned shell is in it; watch removes it within 1 s of the
shell's exit (cgroup.events). Until then that shell runs without its session-scope
entries, as it did with gc alone (a minute later): proven below, not hidden.
"""

import os
import signal
import time

from conftest import ONE_PROFILE, PORT_A, parse_view
from support.pamsvc import wait_until
from support.watcher import Watcher


def _record_of(fence, pid):
    for name in fence.session_records():
        if name.startswith(f"{pid}-"):
            return name
    raise AssertionError(f"no session record of pid {pid}: {fence.session_records()}")


def test_sigkilled_su_is_closed_within_1s_and_the_other_session_untouched(fence, user):
    fence.load(ONE_PROFILE.format(port=PORT_A, user=user.name, scope="session"))
    fence.echo()
    watcher = Watcher(fence.nf).start()
    try:
        with fence.su_shell(user.name) as killed, fence.su_shell(user.name) as kept:
            for shell in (killed, kept):
                assert parse_view(shell.out(fence.view()))[str(PORT_A)] == "refused"
            killed_key = _record_of(fence, killed.proc.pid)
            kept_key = _record_of(fence, kept.proc.pid)
            cgroup = parse_view(killed.out(fence.view()))["cg"]
            start = time.monotonic()
            os.kill(killed.proc.pid, signal.SIGKILL)
            killed.proc.wait()                # su's parent reaps it
            wait_until(lambda: killed_key not in fence.session_records(), timeout=1,
                       interval=0.005, what="the killed session's record to go")
            assert time.monotonic() - start < 1.0
            assert fence.nft_cgroup(cgroup) not in str(fence.filled())
            # the other session: record, cgroup element and restriction unchanged
            assert kept_key in fence.session_records()
            assert parse_view(kept.out(fence.view()))[str(PORT_A)] == "refused"
            # the orphaned shell lives on in the old cgroup, without its entries
            orphan = parse_view(killed.out(fence.view()))
            assert orphan["cg"] == cgroup and fence.cgroup_exists(cgroup)
            assert orphan[str(PORT_A)] == "ok"
            start = time.monotonic()
            killed.logout()                   # EOF: the shell exits
            wait_until(lambda: not fence.cgroup_exists(cgroup), timeout=1, interval=0.005,
                       what="the orphan cgroup to go after its last process")
            assert kept_key in fence.session_records()
        fence.wait_clean(timeout=2)
    finally:
        code = watcher.stop()
    assert code == 0, watcher.log()
    assert "event=error" not in watcher.log(), watcher.log()


def test_watch_killed_and_restarted_20_times_during_100_su_logins(fence, user):
    """Logins never need watch: with it SIGKILLed and started again every 5 logins
    (each start a full resync), every su login succeeds and nothing is left."""
    fence.load(ONE_PROFILE.format(port=PORT_A, user=user.name, scope="session"))
    fence.echo()
    watcher = Watcher(fence.nf)
    try:
        for number in range(100):
            if number % 5 == 0:
                watcher.stop(signal.SIGKILL)
                watcher.start()
            out = fence.su(user.name, fence.view(ports=(PORT_A,)))
            assert out.returncode == 0, (number, out.stderr, fence.log()[-2000:])
            assert parse_view(out.stdout)[str(PORT_A)] == "refused", (number, out.stdout)
        assert watcher.log().count("event=start") == 20
        fence.wait_clean(timeout=5)
        assert os.listdir(f"{fence.nf.run_dir}/users") == []
    finally:
        code = watcher.stop()
    assert code == 0, watcher.log()
    assert len(fence.events("open")) == 100
