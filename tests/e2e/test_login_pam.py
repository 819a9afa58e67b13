"""netfence through PAM sessions opened by python-pam (support/login_driver.py) and
pamtester, on a throwaway PAM service, inside a private network namespace.

The driver process is the PAM application: PAM_RHOST and PAM_TTY are set with
pam_set_item, so rules on remote hosts and ttys can be exercised without a network
login.
"""

import os
import shutil

import pytest

from support.login import PAM_SUCCESS, PamSession
from support.pamsvc import pam_service

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users, netns, PAM")


def proc_cgroup(pid):
    with open(f"/proc/{pid}/cgroup") as f:
        return [l[3:] for l in f.read().splitlines() if l.startswith("0::")][0]


def test_pam_items_reach_rules_and_records(fence, user):
    fence.load(f"""
[profile.lab]
egress = [ {{ action = "reject", proto = "tcp", ports = [7002] }} ]
[profile.everywhere]
egress = [ {{ action = "deny", proto = "udp", ports = [53] }} ]

[[rule]]
users = ["{user.name}"]
rhosts = ["203.0.113.0/24"]
ttys = ["pts/*"]
profiles = ["lab"]

[[rule]]
users = ["{user.name}"]
profiles = ["everywhere"]
scope = "user"
""")
    with pam_service(session_lines=[fence.pam_line()]) as svc:
        first = PamSession(svc.name, user, rhost="203.0.113.9", tty="pts/7", netns=fence.netns)
        first.open()
        try:
            (record,) = fence.status()["sessions"]
            assert (record["user"], record["uid"], record["service"], record["rhost"],
                    record["tty"]) == (user.name, user.uid, svc.name, "203.0.113.9", "pts/7")
            assert record["ppid"] == first.pid
            assert record["session_profiles"] == ["lab"]
            assert record["user_profiles"] == ["everywhere"]
            cg = record["cgroup"]
            assert proc_cgroup(first.pid) == cg              # the application was moved
            assert fence.filled() == {"scg-lab": [fence.nft_cgroup(cg)],
                                      "uid-everywhere": [user.uid]}

            # the same user from elsewhere, at the same time: the user-scope rule only
            with PamSession(svc.name, user, rhost="198.51.100.1", tty="pts/8",
                            netns=fence.netns) as second:
                sessions = fence.status()["sessions"]
                assert sorted((s["rhost"], s["tty"]) for s in sessions) == [
                    ("198.51.100.1", "pts/8"), ("203.0.113.9", "pts/7")]
                assert fence.filled() == {"scg-lab": [fence.nft_cgroup(cg)],
                                          "uid-everywhere": [user.uid]}
                # a cgroup of its own, under the same user cgroup: its processes keep
                # the user-scope elements alive after logout (docs/security.md)
                second_cg = proc_cgroup(second.pid)
                assert second_cg != cg and second_cg.startswith(
                    f"/{fence.nf.cgroup_base}/user-{user.uid}/session-")
            # its close leaves the first session's elements, the uid's included
            assert fence.filled() == {"scg-lab": [fence.nft_cgroup(cg)],
                                      "uid-everywhere": [user.uid]}
            assert first.close() == PAM_SUCCESS
        finally:
            first.kill()
    fence.wait_clean(timeout=5)
    assert not fence.cgroup_exists(cg)
    assert fence.status()["sessions"] == []
    assert os.listdir(f"{fence.nf.run_dir}/users") == []


@pytest.mark.skipif(not shutil.which("pamtester"), reason="pamtester not installed")
def test_close_twice_is_harmless(fence, user):
    """pamtester runs open_session, close_session, close_session in one process (the
    PAM application): the second close finds no record and succeeds."""
    fence.load(f"""
[profile.lab]
egress = [ {{ action = "reject", proto = "tcp", ports = [7002] }} ]
[[rule]]
users = ["{user.name}"]
profiles = ["lab"]
""")
    with pam_service(session_lines=[fence.pam_line()]) as svc:
        r = fence.netns.run(["pamtester", "-I", "rhost=192.0.2.1", "-I", "tty=pts/1",
                             svc.name, user.name, "open_session", "close_session",
                             "close_session"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("session has successfully been closed") == 2, r.stdout
    (opened,) = fence.events("open")
    assert "result=ok" in opened and "rhost=192.0.2.1" in opened and "tty=pts/1" in opened
    first, second = fence.events("close")
    # one profile element and its guard element (any-scg)
    assert "result=ok" in first and "elements=2" in first
    assert "result=none" in second
    fence.wait_clean(timeout=1)


def test_session_killed_without_close_is_collected_by_gc(fence, user):
    """The PAM application dies without close_session (sshd's monitor SIGKILLed):
    `netfence gc` removes the session's elements, records and cgroup."""
    fence.load(f"""
[profile.lab]
egress = [ {{ action = "reject", proto = "tcp", ports = [7002] }} ]
[[rule]]
users = ["{user.name}"]
profiles = ["lab"]
""")
    with pam_service(session_lines=[fence.pam_line()]) as svc:
        s = PamSession(svc.name, user, netns=fence.netns)
        s.open()
        cg = proc_cgroup(s.pid)
        assert fence.filled() == {"scg-lab": [fence.nft_cgroup(cg)]}
        s.kill()
    assert fence.events("close") == []
    assert fence.filled() == {"scg-lab": [fence.nft_cgroup(cg)]}
    report = fence.nf.cli("gc").stdout
    assert "1 dead sessions closed" in report, report
    fence.wait_clean(timeout=1)
    assert not fence.cgroup_exists(cg)
