"""`netfence verify` on a real `su -` session (private netns, private PAM stack): the
probe in the session's cgroup finds the denied port refused and an allowed one open,
leaves nothing in the session, and reports a session whose entry was removed."""

import json
import os

import pytest

from conftest import ONE_PROFILE, PORT_B, parse_view

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users, netns, su")


def verify(fence, *args):
    out = fence.nf.cli("verify", *args, "--json", check=False)
    return out.returncode, (json.loads(out.stdout) if out.stdout else None), out.stderr


def procs_of(fence, cgroup):
    with open(os.path.dirname(fence.nf.cg_root) + cgroup + "/cgroup.procs") as handle:
        return sorted(handle.read().split())


def test_verify_proves_a_live_su_session_is_fenced_and_leaves_it_alone(fence, user):
    fence.load(ONE_PROFILE.format(port=PORT_B, user=user.name, scope="session"))
    with fence.su_shell(user) as shell:
        cg = parse_view(shell.out(fence.view(ports=())))["cg"]
        before = procs_of(fence, cg)
        code, report, err = verify(fence, user.name)
        assert code == 0, (report, err)
        (session,) = report["sessions"]
        assert session["ok"] and session["results"][str(PORT_B)] == "refused", session
        allowed = [p for p in session["results"] if p != str(PORT_B)]
        assert [session["results"][p] for p in allowed] == ["ok"], session
        # the session: same processes, its shell still answers, its record unchanged
        assert procs_of(fence, cg) == before
        assert shell.out("echo still-here").strip() == "still-here"
        (record,) = fence.status()["sessions"]
        code, by_key, _ = verify(fence, "--session", record["key"])
        assert code == 0 and by_key["sessions"][0]["key"] == record["key"]

        # the session's entry removed behind netfence's back: verify says so
        fence.netns.nft("flush", "set", "inet", "netfence", "scg-fence")
        code, report, _ = verify(fence, str(user.uid))
        assert code == 1 and not report["sessions"][0]["ok"], report
        assert f"port {PORT_B}" in report["sessions"][0]["detail"]


def test_verify_of_a_user_without_a_session_is_a_problem(fence, user):
    fence.load(ONE_PROFILE.format(port=PORT_B, user=user.name, scope="session"))
    code, report, err = verify(fence, user.name)
    assert code == 1 and "no live session" in err
    out = fence.nf.cli("verify", check=False)
    assert out.returncode == 2                  # neither USER nor --session: usage
