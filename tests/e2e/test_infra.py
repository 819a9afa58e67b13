"""Self-tests of the end-to-end infrastructure, without netfence.

They prove that real logins (su, sshd with key auth, python-pam) run a pam_exec program
with the expected PAM items inside a test network namespace, that port forwarding
works, and that every helper cleans up after itself.
"""

import grp
import os
import pwd
import stat
import subprocess
import time

import shutil

import pytest

from support.login import PAM_SUCCESS, PamSession, PamSessionError, su_login
from support.pamsvc import (backed_up, env_recorder, pam_service, pam_stack_text,
                            root_tempdir, wait_until)
from support.sshd import echo_server, sshd_server, tcp_exchange
from support.users import throwaway_group, throwaway_user, user_processes

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: creates users, PAM services, namespaces, sshd")
requires_sshd = pytest.mark.skipif(
    not all(shutil.which(p) or os.path.exists(f"/usr/sbin/{p}")
            for p in ("sshd", "ssh", "ssh-keygen")),
    reason="openssh-server/openssh-client not installed (tests/run.sh installs them)")


def _netns_inode(ns):
    return os.readlink(ns.path)


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- users -------------------------------------------------------------------------------

def test_throwaway_user_and_groups_are_created_and_removed():
    with throwaway_group() as shared:
        with throwaway_user(groups=("students", shared)) as u:
            pw = pwd.getpwnam(u.name)
            assert u.name.startswith("nftu")
            assert (pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell) == (
                u.uid, u.gid, u.home, "/bin/bash")
            assert os.path.isdir(u.home) and os.stat(u.home).st_uid == u.uid
            students = u.groups["students"]
            assert students.startswith("students-")
            ids = subprocess.run(["id", "-Gn", u.name], capture_output=True, text=True,
                                 check=True).stdout.split()
            assert students in ids and shared.name in ids
            # a process left behind by the user, detached from everything
            subprocess.run(["setpriv", f"--reuid={u.uid}", f"--regid={u.gid}",
                            "--init-groups", "--", "setsid", "-f", "sleep", "1000"],
                           check=True)
            wait_until(lambda: user_processes(u.uid), what="the user's sleep")
            name, uid, home = u.name, u.uid, u.home
        # user, home, private group, created group and processes are gone
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
        with pytest.raises(KeyError):
            grp.getgrnam(name)
        with pytest.raises(KeyError):
            grp.getgrnam(students)
        assert not os.path.exists(home)
        assert user_processes(uid) == []
        # a group passed in is joined, not removed
        assert grp.getgrnam(shared.name)
    with pytest.raises(KeyError):
        grp.getgrnam(shared.name)


def test_throwaway_user_is_removed_when_the_test_fails():
    with pytest.raises(RuntimeError, match="boom"):
        with throwaway_user(password="s3cret-pw") as u:
            name = u.name
            shadow = subprocess.run(["getent", "shadow", name], capture_output=True,
                                    text=True).stdout
            assert shadow.split(":")[1].startswith("$")      # password was set
            raise RuntimeError("boom")
    with pytest.raises(KeyError):
        pwd.getpwnam(name)


# -- PAM files ---------------------------------------------------------------------------

def test_pam_service_writes_refuses_overwrite_and_removes():
    with pam_service(session_lines=["optional pam_permit.so"]) as svc:
        assert svc.name.startswith("nftsvc-") and svc.path == f"/etc/pam.d/{svc.name}"
        text = open(svc.path).read()
        assert "auth     required pam_permit.so" in text
        assert "session optional pam_permit.so" in text
        assert stat.S_IMODE(os.stat(svc.path).st_mode) == 0o644
        with pytest.raises(FileExistsError):
            with pam_service(svc.name, ["optional pam_permit.so"]):
                pass
        assert open(svc.path).read() == text     # the refused attempt changed nothing
        path = svc.path
    assert not os.path.exists(path)
    with pytest.raises(FileExistsError):          # never an existing system file
        with pam_service("su-l", []):
            pass
    assert os.path.exists("/etc/pam.d/su-l")


def test_backed_up_restores_bytes_mode_and_absence():
    with root_tempdir() as d:
        path = os.path.join(d, "some-file")
        original = b"line one\n\x00binary\xff\n"
        with open(path, "wb") as f:
            f.write(original)
        os.chmod(path, 0o640)
        with pytest.raises(RuntimeError):
            with backed_up(path):
                with open(path, "wb") as f:
                    f.write(b"changed")
                os.chmod(path, 0o777)
                raise RuntimeError("test failed while the file was changed")
        assert open(path, "rb").read() == original
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        with backed_up(path):
            os.unlink(path)
        assert open(path, "rb").read() == original
        new = os.path.join(d, "absent")
        with backed_up(new):
            open(new, "w").write("x")
        assert not os.path.exists(new)
        assert sorted(os.listdir(d)) == ["some-file"]    # no temp files left


# -- su ----------------------------------------------------------------------------------

def test_su_login_runs_the_session_stack_in_the_namespace(netns, user, recorder):
    stack = pam_stack_text([recorder.line()])
    r = su_login(user, "id -un; readlink /proc/self/ns/net", netns=netns, pam_stack=stack)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [user.name, _netns_inode(netns)]
    opened = recorder.wait_for("open_session")
    closed = recorder.wait_for("close_session")   # su waits for the shell, then closes
    for rec in opened + closed:
        assert rec["PAM_USER"] == user.name
        assert rec["PAM_SERVICE"] == "su-l"
        assert rec["PAM_RUSER"] == "root"
        assert rec["_NETNS"] == _netns_inode(netns)
        assert rec["_UID"] == "0" and rec["_EUID"] == "0"     # seteuid
        assert "PATH" not in rec                               # pam_exec: no PATH
    assert opened[0]["_PPID"] == closed[0]["_PPID"]            # same su process
    # the host's su-l was never touched
    assert recorder.path not in open("/etc/pam.d/su-l").read()


def test_su_login_with_the_host_stack_and_a_failing_required_hook(user):
    # the host's own su-l stack, outside any namespace
    r = su_login(user, "echo hello-from-$(id -un)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"hello-from-{user.name}"
    # a required pam_exec program that fails: su refuses to run anything
    with env_recorder(exit_code=1) as failing:
        stack = pam_stack_text([failing.line()], base="/etc/pam.d/su-l")
        r = su_login(user, "echo should-not-run", pam_stack=stack)
        assert r.returncode != 0
        assert "should-not-run" not in r.stdout
        assert "cannot open session" in r.stderr
        assert len(failing.of_type("open_session")) == 1
        assert failing.of_type("close_session") == []


def test_su_login_rejects_services_su_cannot_use(user):
    with pytest.raises(ValueError):
        su_login(user, "true", service="sshd")


# -- python-pam --------------------------------------------------------------------------

def test_pam_session_opens_and_closes_in_the_namespace(netns, user, recorder):
    with pam_service(session_lines=[recorder.line()]) as svc:
        with PamSession(svc.name, user, rhost="203.0.113.9", tty="pts/7",
                        netns=netns) as s:
            assert s.code == PAM_SUCCESS
            opened = recorder.wait_for("open_session")
            assert recorder.of_type("close_session") == []
            assert _pid_alive(s.pid)
            pid = s.pid
        closed = recorder.wait_for("close_session")
    assert not _pid_alive(pid)
    for rec in opened + closed:
        assert rec["PAM_SERVICE"] == svc.name
        assert rec["PAM_USER"] == user.name
        assert rec["PAM_RHOST"] == "203.0.113.9"
        assert rec["PAM_TTY"] == "pts/7"
        assert rec["_NETNS"] == _netns_inode(netns)
        assert rec["_PPID"] == str(pid)      # the driver is the PAM application
    assert s.messages == []


def test_pam_session_survives_modules_that_talk(user):
    """The python-pam segfault: a session module that uses the conversation after
    authenticate() returned. pam_exec `stdout` sends the program's output through it."""
    with env_recorder(stdout_text="hello through the conversation") as rec:
        with pam_service(session_lines=[rec.line(options="seteuid stdout")]) as svc:
            s = PamSession(svc.name, user)
            s.open()
            s.close()
        assert len(rec.records()) == 2
    assert (4, "hello through the conversation") in s.messages   # PAM_TEXT_INFO


def test_pam_session_reports_a_failing_required_hook(netns, user):
    with env_recorder(exit_code=3) as rec:
        with pam_service(session_lines=[rec.line()]) as svc:
            s = PamSession(svc.name, user, netns=netns)
            assert s.open(check=False) != PAM_SUCCESS
            assert not s.opened
            assert s.close() is None
            with pytest.raises(PamSessionError) as err:
                PamSession(svc.name, user, netns=netns).open()
            assert err.value.code == s.code
        assert len(rec.of_type("open_session")) == 2 and rec.of_type("close_session") == []


def test_pam_session_kill_skips_close_session(user, recorder):
    with pam_service(session_lines=[recorder.line()]) as svc:
        s = PamSession(svc.name, user)
        s.open()
        s.kill()
        assert not _pid_alive(s.pid)
        s.close()      # harmless after kill
    time.sleep(0.2)
    assert len(recorder.of_type("open_session")) == 1
    assert recorder.of_type("close_session") == []


# -- sshd --------------------------------------------------------------------------------

@requires_sshd
def test_sshd_key_login_runs_the_service_stack(netns, user, recorder):
    with pam_service(session_lines=[recorder.line()]) as svc:
        with sshd_server(netns, svc.name) as server:
            server.add_key(user)
            r = server.ssh(user, "id -un; readlink /proc/self/ns/net; cat /proc/self/loginuid")
            assert r.returncode == 0, f"{r.stderr}\n{server.log()}"
            assert r.stdout.split()[:2] == [user.name, _netns_inode(netns)]
            opened = recorder.wait_for("open_session")
            # close_session runs in the monitor after the client has returned: poll
            closed = recorder.wait_for("close_session")
            assert f"Accepted publickey for {user.name}" in server.log()
            server_dir, pid = server.dir, server.proc.pid
    for rec in opened + closed:
        assert rec["PAM_SERVICE"] == svc.name
        assert rec["PAM_USER"] == user.name
        assert rec["PAM_RHOST"] == "127.0.0.1"
        assert rec["PAM_TTY"] == "ssh"
        assert rec["_NETNS"] == _netns_inode(netns)
        assert rec["_UID"] == "0"
    assert opened[0]["_PPID"] == closed[0]["_PPID"]    # the per-connection monitor
    assert not os.path.exists(server_dir)
    assert not _pid_alive(pid)


@requires_sshd
def test_sshd_refuses_unknown_keys_and_failed_sessions(netns, user):
    with env_recorder(exit_code=1) as failing:
        with pam_service(session_lines=[failing.line()]) as svc, \
                sshd_server(netns, svc.name) as server:
            with throwaway_user() as stranger:
                server.add_key(stranger)
                os.unlink(os.path.join(server.keys_dir, stranger.name))
                r = server.ssh(stranger, "true")
                assert r.returncode == 255 and "Permission denied" in r.stderr
            assert failing.records() == []          # no session without auth
            server.add_key(user)
            r = server.ssh(user, "echo should-not-run")
            # sshd refuses the session: the client exits non-zero (254/255)
            assert r.returncode != 0 and "should-not-run" not in r.stdout
            failing.wait_for("open_session")
            assert failing.of_type("close_session") == []


@requires_sshd
def test_sshd_live_session_and_teardown_kills_everything(netns, user, recorder):
    with pam_service(session_lines=[recorder.line()]) as svc:
        with sshd_server(netns, svc.name) as server:
            server.add_key(user)
            with server.ssh_popen(user, "echo started; exec sleep 1000") as client:
                assert client.stdout.readline() == b"started\n"
                recorder.wait_for("open_session")
                assert server.session_pids()
                survivor = [p for p in user_processes(user.uid) if _comm(p) == "sleep"]
                assert len(survivor) == 1
            # the client is gone: sshd closes the session on its own, but a command
            # without a pty gets no SIGHUP: the sleep outlives its session (what
            # scope = "user" and netfence gc are about)
            recorder.wait_for("close_session")
            time.sleep(0.2)
            assert set(survivor) <= set(user_processes(user.uid))
            subprocess.run(["kill", "-KILL", *map(str, survivor)], check=True)
            wait_until(lambda: not user_processes(user.uid), what="the sleep to die")
            # a session still open at teardown is killed with the server
            held = server.ssh_popen(user, "exec sleep 1000")
            held.__enter__()
            try:
                recorder.wait_for("open_session", count=2)
                kids = server.session_pids()
                # open_session is recorded before sshd starts the user's command
                wait_until(lambda: user_processes(user.uid),
                           what="the held session's command to start")
                assert user_processes(user.uid)
                pid = server.proc.pid
            except BaseException:
                held.__exit__(None, None, None)
                raise
        # server stopped with the client still running
        held.__exit__(None, None, None)
    assert not _pid_alive(pid)
    assert not any(_pid_alive(k) for k in kids)
    assert not user_processes(user.uid)
    # killed monitors never ran close_session
    assert len(recorder.of_type("close_session")) == 1


@requires_sshd
def test_ssh_local_forward_reaches_an_echo_server(netns, user):
    with pam_service(session_lines=["optional pam_permit.so"]) as svc, \
            sshd_server(netns, svc.name) as server, \
            echo_server(netns) as echo_port:
        assert tcp_exchange(netns, echo_port, b"direct\n") == b"direct\n"
        server.add_key(user)
        with server.forward(user, echo_port) as local_port:
            assert local_port != echo_port
            payload = b"through the tunnel " * 1000
            assert tcp_exchange(netns, local_port, payload) == payload
            # the forward runs on the server side as the user
            assert tcp_exchange(netns, local_port, b"x", as_user=user) == b"x"
    with pytest.raises(ConnectionError):          # nothing listens in a fresh namespace
        tcp_exchange(netns, echo_port, b"gone")


def test_namespaces_are_isolated_from_the_host(netns):
    assert _netns_inode(netns) != os.readlink("/proc/self/ns/net")
    out = netns.run(["ip", "-o", "link"]).stdout
    assert [line.split(":")[1].strip() for line in out.splitlines()] == ["lo"]
