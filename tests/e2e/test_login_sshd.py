"""netfence through a real OpenSSH server (key auth) in a private network namespace.

sshd runs with its own PAM service (/etc/pam.d/nftsvc-<hex>: pam_permit auth/account,
the netfence line). sshd's per-connection monitor is the PAM application: it is moved
into the session cgroup at open, so the user's shell and sshd's port forwards (made by
its unprivileged child, as the user) are inside. close_session runs in the monitor after
the client has returned: cleanup is polled for.
"""

import os
import shlex
import shutil

import pytest

from conftest import PORT_A, PORT_B, PORT_C, parse_view
from support.pamsvc import pam_service
from support.sshd import sshd_server, tcp_exchange

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users, netns, sshd"),
    pytest.mark.skipif(not all(shutil.which(p) or os.path.exists(f"/usr/sbin/{p}")
                               for p in ("sshd", "ssh", "ssh-keygen")),
                       reason="openssh-server/openssh-client not installed"),
]


def ports(seen):
    return tuple(seen[str(p)] for p in (PORT_A, PORT_B, PORT_C))


def through(netns, port, payload=b"hello through the tunnel\n"):
    """What comes back through a local forward: the echo, b"" (closed), or None when
    the connection failed outright."""
    try:
        return tcp_exchange(netns, port, payload, timeout=5)
    except ConnectionError:
        return None


@pytest.fixture
def ssh_fence(fence, user, other_user):
    """fence + a PAM service with the netfence line + sshd on it, keys for both users."""
    with pam_service(session_lines=[fence.pam_line()]) as svc, \
            sshd_server(fence.netns, svc.name) as server:
        server.add_key(user)
        server.add_key(other_user)
        yield fence, server, svc


def test_ssh_commands_and_port_forwarding(ssh_fence, user, other_user):
    fence, server, svc = ssh_fence
    fence.echo()
    fence.load(f"""
[profile.fence]
egress = [ {{ action = "reject", proto = "tcp", ports = [{PORT_B}] }} ]

[[rule]]
users = ["{user.name}"]
profiles = ["fence"]
""")
    r = server.ssh(user, fence.view())
    assert r.returncode == 0, f"{r.stderr}\n{server.log()}"
    seen = parse_view(r.stdout)
    assert seen["cg"].startswith(f"/{fence.nf.cgroup_base}/user-{user.uid}/session-")
    assert ports(seen) == ("ok", "refused", "ok")
    fence.wait_clean(what="the ssh session's close")

    r = server.ssh(other_user, fence.view())
    assert r.returncode == 0, r.stderr
    other = parse_view(r.stdout)
    assert not other["cg"].startswith(f"/{fence.nf.cgroup_base}/")
    assert ports(other) == ("ok", "ok", "ok")

    # a live session: the kernel and `netfence status` show it
    with fence.ssh_shell(server, user) as shell:
        cg = parse_view(shell.out(fence.view()))["cg"]
        assert fence.filled() == {"scg-fence": [fence.nft_cgroup(cg)]}
        (record,) = fence.status()["sessions"]
        assert (record["user"], record["service"], record["rhost"], record["tty"]) == (
            user.name, svc.name, "127.0.0.1", "ssh")
        assert record["cgroup"] == cg
    fence.wait_clean(what="the live ssh session's close")

    # ssh -L: the forwarded connection is made on the server side by sshd's child,
    # as the user, inside the session: subject to the user's policy
    with server.forward(user, PORT_B) as lport:
        # at once: ssh listens locally before the server has opened the PAM session,
        # but sshd serves no channel before that (threat model #6)
        assert through(fence.netns, lport) in (b"", None)       # closed, no echo
        _wait(lambda: "scg-fence" in fence.filled(), fence, "the forwarding session")
        assert through(fence.netns, lport) in (b"", None)
    with server.forward(user, PORT_A) as lport:
        assert through(fence.netns, lport) == b"hello through the tunnel\n"
    with server.forward(other_user, PORT_B) as lport:            # the same port, unfenced
        assert through(fence.netns, lport) == b"hello through the tunnel\n"
    fence.wait_clean(what="the forwarding sessions' close")
    opened, closed = fence.events("open"), fence.events("close")
    assert sum(f"user={user.name} " in e and "result=ok" in e for e in opened) == 4
    assert sum(f"user={user.name} " in e and "result=ok" in e for e in closed) == 4


def test_concurrent_sessions_get_their_own_restrictions(ssh_fence, user):
    """One user, three live sessions at once: ssh from 127.0.0.2, ssh from 127.0.0.1, and
    su (no remote host); each gets only the profile its own rule gives."""
    fence, server, _ = ssh_fence
    fence.echo()
    fence.load(f"""
[profile.no-a]
egress = [ {{ action = "reject", proto = "tcp", ports = [{PORT_A}] }} ]
[profile.no-b]
egress = [ {{ action = "reject", proto = "tcp", ports = [{PORT_B}] }} ]
[profile.no-c]
egress = [ {{ action = "reject", proto = "tcp", ports = [{PORT_C}] }} ]

[[rule]]
users = ["{user.name}"]
rhosts = ["127.0.0.2"]
profiles = ["no-b"]

[[rule]]
users = ["{user.name}"]
rhosts = ["127.0.0.1"]
profiles = ["no-c"]

[[rule]]
users = ["{user.name}"]
rhosts = ["local"]
profiles = ["no-a"]
""")
    with fence.ssh_shell(server, user, ["-b", "127.0.0.2"]) as far, \
            fence.ssh_shell(server, user) as near, \
            fence.su_shell(user) as local:
        views = {name: parse_view(sh.out(fence.view()))
                 for name, sh in (("far", far), ("near", near), ("local", local))}
        assert ports(views["far"]) == ("ok", "refused", "ok")
        assert ports(views["near"]) == ("ok", "ok", "refused")
        assert ports(views["local"]) == ("refused", "ok", "ok")
        cgs = {name: v["cg"] for name, v in views.items()}
        assert len(set(cgs.values())) == 3
        sessions = fence.status()["sessions"]
        assert sorted((s["rhost"], s["cgroup"]) for s in sessions) == sorted(
            [("127.0.0.2", cgs["far"]), ("127.0.0.1", cgs["near"]), ("", cgs["local"])])
        assert fence.filled() == {"scg-no-b": [fence.nft_cgroup(cgs["far"])],
                                  "scg-no-c": [fence.nft_cgroup(cgs["near"])],
                                  "scg-no-a": [fence.nft_cgroup(cgs["local"])]}

        assert far.logout() is not None
        _wait(lambda: "scg-no-b" not in fence.filled(), fence, "the far session's close")
        assert not fence.cgroup_exists(cgs["far"])
        # the others are untouched and still fenced
        assert ports(parse_view(near.out(fence.view()))) == ("ok", "ok", "refused")
        assert ports(parse_view(local.out(fence.view()))) == ("refused", "ok", "ok")
        assert sorted(s["rhost"] for s in fence.status()["sessions"]) == ["", "127.0.0.1"]
    fence.wait_clean(what="the remaining sessions' close")


def _wait(predicate, fence, what):
    from support.pamsvc import wait_until
    try:
        wait_until(predicate, timeout=15, interval=0.05, what=what)
    except TimeoutError as err:
        raise AssertionError(f"{err}: {fence.filled()}\n{fence.log()}") from None


def test_ssh_to_localhost_from_a_session_is_a_login_of_its_own(ssh_fence, user):
    """`ssh localhost` from inside a session does NOT join that session: sshd's new
    monitor is forked by the listener, outside the session cgroup, so the inner login
    gets a cgroup (or none) and restrictions of its own rules, decided by its own
    items (rhost 127.0.0.1 here), as docs/hook.md ("Session cgroups") says."""
    fence, server, _ = ssh_fence
    fence.echo()
    fence.load(f"""
[profile.no-b]
egress = [ {{ action = "reject", proto = "tcp", ports = [{PORT_B}] }} ]
[profile.no-c]
egress = [ {{ action = "reject", proto = "tcp", ports = [{PORT_C}] }} ]

[[rule]]
users = ["{user.name}"]
rhosts = ["127.0.0.2"]
profiles = ["no-b"]

[[rule]]
users = ["{user.name}"]
rhosts = ["127.0.0.1"]
profiles = ["no-c"]
""")
    # the user's own copy of its client key, to ssh from inside the session
    key = os.path.join(user.home, "id_nftest")
    shutil.copyfile(os.path.join(server.client_dir, user.name), key)
    os.chown(key, user.uid, user.gid)
    os.chmod(key, 0o600)
    inner_ssh = " ".join(server.ssh_argv(user, "CMD")[3:-1]).replace(
        os.path.join(server.client_dir, user.name), key)
    with fence.ssh_shell(server, user, ["-b", "127.0.0.2"]) as outer:
        seen = parse_view(outer.out(fence.view()))
        assert ports(seen) == ("ok", "refused", "ok")
        status, text = outer.run(f"{inner_ssh} {shlex.quote(fence.view())}")
        assert status == 0, text
        inner = parse_view(text)
        assert inner["cg"] != seen["cg"]
        assert inner["cg"].startswith(f"/{fence.nf.cgroup_base}/user-{user.uid}/session-")
        assert ports(inner) == ("ok", "ok", "refused")        # its own rule only
        assert ports(parse_view(outer.out(fence.view()))) == ("ok", "refused", "ok")
    fence.wait_clean(what="both sessions' close")
