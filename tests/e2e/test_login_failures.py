"""Failure modes of the hook through real logins (su, sshd, python-pam, pamtester).

- the kernel refuses the batch: on_error decides (policy setting, PAM argument wins);
- the hook cannot finish in time (run_dir lock held, FIFO as the snapshot): on_error;
- hostile PAM items: refused whatever on_error says, ruleset byte-identical;
- PYTHONPATH / LD_PRELOAD in the PAM environment (pam_env before netfence's line):
  nothing of it runs in the hook, the login works with its restrictions.
"""

import os
import shutil
import subprocess
import time

import pytest

from conftest import ONE_PROFILE, PORT_A, PORT_B, parse_view
from netfence import records
from support.login import PAM_SUCCESS, PamSession
from support.pamsvc import pam_service
from support.sshd import sshd_server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users, netns, PAM")

HAVE_SSHD = all(shutil.which(p) or os.path.exists(f"/usr/sbin/{p}")
                for p in ("sshd", "ssh", "ssh-keygen"))
KINDS = ["su", pytest.param("ssh", marks=pytest.mark.skipif(
    not HAVE_SSHD, reason="openssh-server/openssh-client not installed"))]

POLICY = ONE_PROFILE.replace("{scope}", "session")       # the rule's default scope


class Via:
    """Log in as `user` through su (private su-l stack) or ssh (the service file of a
    running sshd, rewritten per login: libpam reads it at every pam_start)."""

    def __init__(self, kind, fence, user, server=None, svc=None):
        self.kind, self.fence, self.user = kind, fence, user
        self.server, self.svc = server, svc

    def login(self, cmd, *args, before=()):
        stack = self.fence.stack(*args, before=before)
        if self.kind == "su":
            return self.fence.su(self.user, cmd, stacks={"su-l": stack}, timeout=30)
        with open(self.svc.path, "w") as f:
            f.write(stack)
        return self.server.ssh(self.user, cmd, timeout=30)

    def let_in(self, *args, before=()):
        """(logged in and ran the command, CompletedProcess). Exactly one hook run
        (open_session) must have logged its result meanwhile."""
        count = len(self.fence.events("open"))
        r = self.login("echo RAN-$(id -un)", *args, before=before)
        opened = self.fence.events("open")[count:]
        assert len(opened) == 1, (opened, r.stderr)
        return r.returncode == 0 and f"RAN-{self.user.name}" in r.stdout, r

    def refused(self, *args, before=()):
        """The login program refused the session: nothing ran."""
        ok, r = self.let_in(*args, before=before)
        if ok or "RAN-" in r.stdout or r.returncode == 0:
            return False
        if self.kind == "su":
            return "cannot open session" in r.stderr
        return True


@pytest.fixture(params=KINDS)
def via(request, fence, user):
    if request.param == "su":
        yield Via("su", fence, user)
        return
    with pam_service(session_lines=[fence.pam_line()]) as svc, \
            sshd_server(fence.netns, svc.name) as server:
        server.add_key(user)
        yield Via("ssh", fence, user, server, svc)


def nothing_left(fence):
    assert fence.session_records() == []
    assert fence.session_cgroups() == []
    assert fence.status()["sessions"] == []


def last_open(fence):
    return fence.events("open")[-1]


# ---- the kernel refuses the batch ------------------------------------------------------

def test_refused_batch_follows_on_error(fence, user, via):
    fence.load(POLICY.format(port=PORT_B, user=user.name), on_error="deny")
    fence.netns.nft("delete", "table", "inet", "netfence")    # the sets are gone

    assert via.refused()
    assert "result=refused on_error=deny" in last_open(fence)
    assert "KernelError" in last_open(fence)
    nothing_left(fence)

    ok, r = via.let_in("on_error=allow")                  # the PAM argument wins
    assert ok, r.stderr
    assert "result=allowed-after-error on_error=allow" in last_open(fence)
    nothing_left(fence)

    fence.load(POLICY.format(port=PORT_B, user=user.name), on_error="allow")
    fence.netns.nft("delete", "table", "inet", "netfence")
    ok, r = via.let_in()
    assert ok, r.stderr
    assert "result=allowed-after-error on_error=allow" in last_open(fence)
    assert via.refused("on_error=deny")                   # ... in both directions
    assert "result=refused on_error=deny" in last_open(fence)
    nothing_left(fence)
    assert fence.netns.nft("list", "tables").stdout == ""   # nothing re-created by a login


# ---- the hook cannot finish in time ----------------------------------------------------

def test_hook_that_cannot_finish_in_time_follows_on_error(fence, user, via):
    """A hung gc (or anything) holding the run_dir lock: the hook gives up after
    timeout_ms instead of hanging the login (pam_exec has no timeout of its own)."""
    fence.load(POLICY.format(port=PORT_B, user=user.name))
    records.ensure_dirs(fence.nf.run_dir)
    with records.Lock(fence.nf.run_dir):
        start = time.monotonic()
        assert via.refused("timeout_ms=300")
        assert time.monotonic() - start < 10
        line = last_open(fence)
        assert "result=refused on_error=deny" in line and "timed out after 300 ms" in line
        assert float(line.split(" ms=")[1].split()[0]) < 1500, line

        ok, r = via.let_in("timeout_ms=300", "on_error=allow")
        assert ok, r.stderr
        assert "result=allowed-after-error" in last_open(fence)
    nothing_left(fence)
    assert fence.filled() == {}
    # the lock is free again: a login gets its restrictions as usual
    ok, r = via.let_in()
    assert ok, r.stderr
    assert "result=ok" in last_open(fence)
    fence.wait_clean()


def test_policy_hook_timeout_and_a_fifo_snapshot(fence, user):
    fence.load(POLICY.format(port=PORT_B, user=user.name), hook_timeout_ms=300)
    su = Via("su", fence, user)
    records.ensure_dirs(fence.nf.run_dir)
    with records.Lock(fence.nf.run_dir):
        start = time.monotonic()
        assert su.refused()                               # the policy's 300 ms
        assert time.monotonic() - start < 10
        assert "timed out after 300 ms" in last_open(fence)

    # a FIFO nobody writes planted as the snapshot must not hang the login either
    marshal_path = f"{fence.nf.state_dir}/login.marshal"
    os.unlink(marshal_path)
    os.mkfifo(marshal_path, 0o644)
    start = time.monotonic()
    assert su.refused("timeout_ms=300")
    assert "result=refused on_error=deny" in last_open(fence)
    ok, r = su.let_in("timeout_ms=300", "on_error=allow")
    assert ok, r.stderr
    assert "result=allowed-after-error" in last_open(fence)
    assert time.monotonic() - start < 10
    nothing_left(fence)


# ---- hostile PAM items -----------------------------------------------------------------

HOSTILE_ITEMS = [
    ("rhost", "a'b"), ("rhost", 'a"b'), ("rhost", "192.0.2.1;reboot"),
    ("rhost", "192.0.2.1\nevent=open result=ok"), ("rhost", "r" * 4096),
    ("rhost", "$(id)"), ("tty", "pts/1'"), ("tty", 'pts/"1'), ("tty", "pts/1;id"),
    ("tty", "pts/1\nevent=open result=ok"), ("tty", "t" * 4096), ("tty", "pts/1 x"),
]


HOSTILE_POLICY = f"""
[profile.fence]
egress = [ {{ action = "reject", proto = "tcp", ports = [{PORT_B}] }} ]

[[rule]]
users = ["*"]
profiles = ["fence"]
"""


def assert_all_refused_and_nothing_changed(fence, before, count):
    assert fence.ruleset() == before
    nothing_left(fence)
    opens = fence.events("open")
    assert len(opens) == count
    assert all("result=invalid" in line for line in opens), opens
    # nothing reached the log as a line of its own (newlines are escaped)
    assert not [l for l in fence.log().splitlines()
                if l and not l.startswith(("netfence: ", "*** "))]


def test_hostile_rhost_and_tty_are_refused_and_change_nothing(fence, user):
    fence.load(HOSTILE_POLICY, on_error="allow")     # hostile input is refused even so
    before = fence.ruleset()
    assert "table inet netfence" in before
    with pam_service(session_lines=[fence.pam_line()]) as svc:
        for item, value in HOSTILE_ITEMS:
            s = PamSession(svc.name, user, netns=fence.netns, **{item: value})
            code = s.open(check=False)
            s.close()
            assert code != PAM_SUCCESS, (item, value)
            assert f"invalid PAM_{item.upper()}" in last_open(fence), (item, value)
        assert_all_refused_and_nothing_changed(fence, before, len(HOSTILE_ITEMS))
        # the same service and user with sane items: opened and fenced
        with PamSession(svc.name, user, rhost="192.0.2.1", tty="pts/1", netns=fence.netns):
            assert len(fence.filled()["scg-fence"]) == 1
    fence.wait_clean(timeout=5)


@pytest.mark.skipif(not shutil.which("pamtester"),
                    reason="pamtester not installed (Debian package pamtester)")
def test_hostile_user_names_are_refused_and_change_nothing(fence, user):
    """PAM_USER: pam_permit takes any name, so pamtester can open sessions for names
    that look like options, are 4 KB long or carry shell syntax."""
    fence.load(HOSTILE_POLICY, on_error="allow")
    before = fence.ruleset()
    names = ["-" + user.name, "u" * 4096, f"{user.name};id", f"{user.name}'x",
             f"{user.name}\nevent=open"]
    with pam_service(session_lines=[fence.pam_line()]) as svc:
        for name in names:
            r = fence.netns.run(["pamtester", "--", svc.name, name, "open_session"],
                                check=False)
            assert r.returncode != 0 and "successfully opened" not in r.stdout, name
            assert "invalid PAM_USER" in last_open(fence), name
    assert_all_refused_and_nothing_changed(fence, before, len(names))


# ---- environment injection through pam_env --------------------------------------------

PY_PAYLOAD = """\
try:
    import os, sys
    with open({marker!r}, "a") as f:
        f.write("{tag} euid=%d exe=%s\\n" % (os.geteuid(), sys.executable))
except OSError:
    pass
"""

C_PAYLOAD = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void injected(void) {
    char exe[512] = "";
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    FILE *f = fopen("%s", "a");
    if (n > 0) exe[n] = 0;
    if (f) { fprintf(f, "ld_preload euid=%%d exe=%%s\n", (int)geteuid(), exe); fclose(f); }
}
"""


@pytest.fixture
def injection(fence):
    """An envfile for pam_env with PYTHONPATH (a fake netfence package and a
    sitecustomize) and, with the static launcher, LD_PRELOAD (a library whose
    constructor writes the marker). Marker and files live in the test's root-only
    dir: only code running as root can write the marker."""
    root = fence.nf.root
    marker = f"{root}/injected"
    evil = f"{root}/evil"
    os.makedirs(f"{evil}/netfence")
    for path, tag in ((f"{evil}/netfence/__init__.py", "netfence-package"),
                      (f"{evil}/sitecustomize.py", "sitecustomize")):
        with open(path, "w") as f:
            f.write(PY_PAYLOAD.format(marker=marker, tag=tag))
    with open(f"{evil}/netfence/hook.py", "w") as f:
        f.write(PY_PAYLOAD.format(marker=marker, tag="netfence-hook")
                + "def main(argv):\n    return 0\n")
    env = [f"PYTHONPATH={evil}", f"PYTHONSTARTUP={evil}/sitecustomize.py",
           "PAM_USER=root", "PAM_RHOST=10.9.9.9"]
    library = None
    if fence.launcher and shutil.which("gcc"):
        with open(f"{root}/evil.c", "w") as f:
            f.write(C_PAYLOAD % marker)
        library = f"{root}/evil.so"
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", library, f"{root}/evil.c"],
                       check=True, capture_output=True)
        os.chmod(library, 0o644)
        env += [f"LD_PRELOAD={library}", f"LD_LIBRARY_PATH={evil}"]
    envfile = f"{root}/pam-env"
    with open(envfile, "w") as f:
        f.write("\n".join(env) + "\n")
    pam_env = f"session required pam_env.so envfile={envfile} conffile=/dev/null"
    control = f"{root}/unprotected"                 # a hook written without -I or launcher
    with open(control, "w") as f:
        f.write("#!/usr/bin/python3\nimport netfence\n")
    os.chmod(control, 0o755)

    class Injection:
        pass
    inj = Injection()
    inj.marker, inj.library, inj.pam_env, inj.control = marker, library, pam_env, control

    def read():
        try:
            with open(marker) as f:
                return f.read()
        except FileNotFoundError:
            return ""
    inj.read = read
    return inj


@pytest.mark.parametrize("kind", ["su", pytest.param("ssh", marks=pytest.mark.skipif(
    not HAVE_SSHD, reason="openssh not installed")), "pam"])
def test_pam_environment_cannot_inject_code_into_the_hook(fence, user, injection, kind):
    fence.echo()
    fence.load(POLICY.format(port=PORT_B, user=user.name))
    stack_before = [injection.pam_env]
    if kind == "pam":
        with pam_service(session_lines=[*stack_before, fence.pam_line()]) as svc:
            with PamSession(svc.name, user, rhost="192.0.2.7", netns=fence.netns) as s:
                (record,) = fence.status()["sessions"]
                assert (record["user"], record["rhost"]) == (user.name, "192.0.2.7")
                assert fence.filled() == {"scg-fence": [fence.nft_cgroup(record["cgroup"])]}
                env = s.env()
                assert env.get("PYTHONPATH", "").endswith("/evil")   # pam_env did its part
    else:
        if kind == "su":
            via = Via("su", fence, user)
            r = via.login(fence.view(), before=stack_before)
        else:
            with pam_service(session_lines=[*stack_before, fence.pam_line()]) as svc, \
                    sshd_server(fence.netns, svc.name) as server:
                server.add_key(user)
                r = server.ssh(user, fence.view() + '; echo "env-pythonpath=$PYTHONPATH"')
                fence.wait_clean(what="the ssh session's close")
        assert r.returncode == 0, r.stderr
        seen = parse_view(r.stdout)
        assert (seen[str(PORT_A)], seen[str(PORT_B)]) == ("ok", "refused")
        assert seen["cg"].startswith(f"/{fence.nf.cgroup_base}/user-{user.uid}/")
        if kind == "ssh":
            assert seen["env-pythonpath"].endswith("/evil")       # it reached the user
    (opened,) = fence.events("open")
    assert f"user={user.name} " in opened and "result=ok" in opened
    # the look-alike items were seen and ignored, at open and at close
    assert sum("PAM environment sets PAM_RHOST: ignored" in w for w in fence.warnings()) == 2
    fence.wait_clean(timeout=10)
    assert len(fence.events("close")) == 1
    assert injection.read() == "", injection.read()

    # control: the same PAM environment does run code in an unprotected pam_exec program
    with pam_service(session_lines=[injection.pam_env,
                                    f"session required pam_exec.so seteuid quiet "
                                    f"{injection.control}"]) as svc:
        PamSession(svc.name, user, netns=fence.netns).open()
    marks = injection.read()
    assert "netfence-package euid=0" in marks and "sitecustomize euid=0" in marks, marks
    if injection.library is None:
        pytest.skip("LD_PRELOAD part not run: no static hook launcher built (or no gcc)")
    assert "ld_preload euid=0" in marks, marks
