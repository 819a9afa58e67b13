"""netfence through real `su` logins (service su-l, and su), in a private network namespace.

su runs inside the test's netns with a private PAM stack (pam_permit auth, the netfence
session line from `netfence pam-line`) mounted over /etc/pam.d/su-l in a private mount
namespace; the host's files are never edited. The user's side runs
/usr/bin/python3 tests/support/probe.py (copied into the test's root-owned dir) against
root's echo servers on 127.0.0.1:7001-7003, which are outside every session.
"""

import os
import shlex
import signal
import time

import pytest

from conftest import (ONE_PROFILE, PORT_A, PORT_B, PORT_C, REPL, kill_and_expect_release,
                      parse_view, read_kv, settle_uid)
from support.pamsvc import wait_until
from support.users import user_processes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users, netns, su")


def own_session_cgroup(fence, user, cg):
    return cg.startswith(f"/{fence.nf.cgroup_base}/user-{user.uid}/session-")


def test_su_session_scope(fence, user, other_user):
    fence.echo()
    fence.load(ONE_PROFILE.format(port=PORT_B, user=user.name, scope="session"))

    with fence.su_shell(user) as shell:
        seen = parse_view(shell.out(fence.view()))
        assert seen["uid"] == str(user.uid)
        cg = seen["cg"]
        assert own_session_cgroup(fence, user, cg), cg
        assert (seen[str(PORT_A)], seen[str(PORT_B)], seen[str(PORT_C)]) == (
            "ok", "refused", "ok")
        # the kernel holds exactly this session's cgroup, nothing keyed by uid
        assert fence.filled() == {"scg-fence": [fence.nft_cgroup(cg)]}
        (record,) = fence.status()["sessions"]
        assert (record["user"], record["service"], record["rhost"], record["tty"]) == (
            user.name, "su-l", "", "")
        assert record["cgroup"] == cg and record["created"] is True
        assert fence.session_records() == [record["key"]]
        assert fence.cgroup_exists(cg)

        # another user, named by no rule, meanwhile: untouched, and not moved anywhere
        r = fence.su(other_user, fence.view())
        assert r.returncode == 0, r.stderr
        other = parse_view(r.stdout)
        assert other["uid"] == str(other_user.uid)
        assert not other["cg"].startswith(f"/{fence.nf.cgroup_base}/"), other["cg"]
        assert (other[str(PORT_A)], other[str(PORT_B)], other[str(PORT_C)]) == (
            "ok", "ok", "ok")
        assert any(f"user={other_user.name} " in e and "result=none" in e
                   for e in fence.events("open"))
        assert fence.filled() == {"scg-fence": [fence.nft_cgroup(cg)]}   # unchanged

    assert shell.proc.returncode == 0, shell.stderr()
    # su runs close_session before it exits: everything is gone at once
    assert fence.filled() == {}
    assert not fence.cgroup_exists(cg)
    assert not fence.cgroup_exists(os.path.dirname(cg))        # user-UID too
    assert fence.session_records() == []
    assert fence.status()["sessions"] == []
    assert fence.events("close")[-1].count("result=ok") == 1


def test_hook_log_numbers_rules_like_explain(fence, user):
    """docs/hook.md's log example and docs/policy.md number rules from 1, as
    `netfence explain` prints them ("rule 1 (file:line)")."""
    fence.load(ONE_PROFILE.format(port=PORT_B, user=user.name, scope="session"))
    explained = fence.nf.cli("explain", user.name, "--service", "su-l").stdout
    assert "rule 1 (" in explained
    r = fence.su(user, "true")
    assert r.returncode == 0, r.stderr
    (opened,) = fence.events("open")
    assert " rules=1 " in opened, opened


def test_su_user_scope_outlives_the_session(fence, user):
    fence.echo()
    fence.load(ONE_PROFILE.format(port=PORT_B, user=user.name, scope="user"))
    out = f"{user.home}/bg-probe"

    with fence.su_shell(user) as shell:
        seen = parse_view(shell.out(fence.view()))
        assert (seen[str(PORT_A)], seen[str(PORT_B)]) == ("ok", "refused")
        # egress at user scope is keyed by uid; the session still gets a cgroup, whose
        # processes keep the uid's elements after logout
        assert own_session_cgroup(fence, user, seen["cg"]), seen["cg"]
        assert fence.filled() == {"uid-fence": [user.uid]}
        shell.out(fence.bg_probe_cmd(out))
        first = wait_until(lambda: read_kv(out), what="the background prober")
    assert shell.proc.returncode == 0, shell.stderr()
    logged_out = time.time()

    # the uid still has a process: its element stays, the session record goes
    assert fence.filled() == {"uid-fence": [user.uid]}
    assert fence.session_records() == []
    assert os.listdir(f"{fence.nf.run_dir}/users") == [str(user.uid)]
    pid = int(first["pid"])
    assert pid in user_processes(user.uid)
    # rounds that started after the logout are still fenced
    later = wait_until(lambda: (lambda r: r if r and float(r["t"]) > logged_out + 0.05
                                else None)(read_kv(out)), what="a probe after logout")
    assert (later[str(PORT_A)], later[str(PORT_B)]) == ("ok", "refused")

    # gc keeps it while the process lives
    fence.nf.cli("gc")
    assert fence.filled() == {"uid-fence": [user.uid]}
    kill_and_expect_release(fence, user, pid)


def test_su_session_scope_ends_at_close_and_gc_removes_the_busy_cgroup(fence, user):
    """Session scope: a process left behind keeps nothing fenced after the close (the
    documented difference to user scope), its cgroup stays while busy, and `netfence
    gc` removes the cgroup once it is empty (docs/hook.md, "Failures")."""
    fence.echo()
    fence.load(ONE_PROFILE.format(port=PORT_B, user=user.name, scope="session"))
    out = f"{user.home}/bg-probe"
    with fence.su_shell(user) as shell:
        cg = parse_view(shell.out(fence.view()))["cg"]
        assert own_session_cgroup(fence, user, cg)
        shell.out(fence.bg_probe_cmd(out))
        first = wait_until(lambda: read_kv(out), what="the background prober")
        assert first[str(PORT_B)] == "refused"
    assert shell.proc.returncode == 0, shell.stderr()
    logged_out = time.time()
    assert fence.filled() == {}
    assert fence.session_records() == []
    assert fence.cgroup_exists(cg)                      # the prober is still in it
    later = wait_until(lambda: (lambda r: r if r and float(r["t"]) > logged_out + 0.05
                                else None)(read_kv(out)), what="a probe after logout")
    assert later[str(PORT_B)] == "ok"

    os.kill(int(first["pid"]), signal.SIGKILL)
    settle_uid(user.uid)
    report = fence.nf.cli("gc").stdout
    assert not fence.cgroup_exists(cg), (
        f"`netfence gc` left the empty session cgroup {cg} of cgroup_base "
        f"{fence.nf.cgroup_base!r}: {report}")
    assert not fence.cgroup_exists(os.path.dirname(cg))
    assert os.listdir(f"{fence.nf.run_dir}/users") == []


def test_su_from_inside_a_session(fence, user, other_user):
    """`su USER` inside USER's own session joins that session's cgroup (restrictions
    accumulate; the inner close keeps the outer's); `su - OTHER` moves to OTHER's own
    session cgroup with OTHER's rules only (docs/hook.md, "Session cgroups")."""
    fence.echo()
    fence.load(f"""
[profile.outer]
egress = [ {{ action = "reject", proto = "tcp", ports = [{PORT_B}] }} ]
[profile.inner]
egress = [ {{ action = "reject", proto = "tcp", ports = [{PORT_C}] }} ]
[profile.other]
egress = [ {{ action = "reject", proto = "tcp", ports = [{PORT_A}] }} ]

[[rule]]
users = ["{user.name}"]
services = ["su-l"]
profiles = ["outer"]

[[rule]]
users = ["{user.name}"]
services = ["su"]
profiles = ["inner"]

[[rule]]
users = ["{other_user.name}"]
profiles = ["other"]
""")
    # both su services use the test stack (pam_permit auth: no passwords), privately
    stack = fence.stack()
    stacks = {"su-l": stack, "su": stack}
    with fence.su_shell(user, stacks=stacks) as shell:
        outer = parse_view(shell.out(fence.view()))
        cg = outer["cg"]
        assert own_session_cgroup(fence, user, cg)
        assert (outer[str(PORT_A)], outer[str(PORT_B)], outer[str(PORT_C)]) == (
            "ok", "refused", "ok")

        # `su USER` (service su) from inside: a nested shell, driven through the same pipe
        shell.send(f"su {user.name} -c {shlex.quote(REPL)}")
        inner = parse_view(shell.out(fence.view()))
        assert inner["cg"] == cg                                  # joined, not moved
        assert (inner[str(PORT_A)], inner[str(PORT_B)], inner[str(PORT_C)]) == (
            "ok", "refused", "refused")
        sessions = fence.status()["sessions"]
        assert sorted(s["service"] for s in sessions) == ["su", "su-l"]
        assert {s["cgroup"] for s in sessions} == {cg}
        assert [s["created"] for s in sessions if s["service"] == "su"] == [False]
        assert fence.filled() == {"scg-outer": [fence.nft_cgroup(cg)],
                                  "scg-inner": [fence.nft_cgroup(cg)]}
        shell.send("exit")                       # the inner shell; su closes its session
        status, _ = shell.wait_end()
        assert status == 0

        # the inner close removed only its own profile; the outer is still fenced
        assert fence.filled() == {"scg-outer": [fence.nft_cgroup(cg)]}
        again = parse_view(shell.out(fence.view()))
        assert again["cg"] == cg and fence.cgroup_exists(cg)
        assert (again[str(PORT_A)], again[str(PORT_B)], again[str(PORT_C)]) == (
            "ok", "refused", "ok")

        # `su - OTHER` from inside: OTHER's session cgroup and OTHER's rules only
        status, text = shell.run(f"su - {other_user.name} -c {shlex.quote(fence.view())}")
        assert status == 0, text
        moved = parse_view(text)
        assert moved["uid"] == str(other_user.uid)
        assert own_session_cgroup(fence, other_user, moved["cg"]), moved["cg"]
        assert (moved[str(PORT_A)], moved[str(PORT_B)], moved[str(PORT_C)]) == (
            "refused", "ok", "ok")
        assert not fence.cgroup_exists(moved["cg"])               # closed with its su
        assert fence.filled() == {"scg-outer": [fence.nft_cgroup(cg)]}
        assert [s["service"] for s in fence.status()["sessions"]] == ["su-l"]
    assert shell.proc.returncode == 0, shell.stderr()
    fence.wait_clean(timeout=5)


def test_reload_and_a_foreign_flush_keep_a_live_session_fenced(fence, user):
    """A reload carries live elements over; after someone flushes the whole ruleset
    (threat model #12), reload puts them back from the session records."""
    fence.echo()
    fence.load(ONE_PROFILE.format(port=PORT_B, user=user.name, scope="session"))
    with fence.su_shell(user) as shell:
        cg = parse_view(shell.out(fence.view()))["cg"]
        fence.nf.cli("reload")
        assert fence.filled() == {"scg-fence": [fence.nft_cgroup(cg)]}
        assert parse_view(shell.out(fence.view()))[str(PORT_B)] == "refused"
        fence.netns.nft("flush", "ruleset")
        assert parse_view(shell.out(fence.view()))[str(PORT_B)] == "ok"   # unfenced now
        out = fence.nf.cli("reload").stdout
        assert "1 live entries kept" in out, out
        assert fence.filled() == {"scg-fence": [fence.nft_cgroup(cg)]}
        assert parse_view(shell.out(fence.view()))[str(PORT_B)] == "refused"
    assert shell.proc.returncode == 0, shell.stderr()
    fence.wait_clean(timeout=5)
