"""Attacks through what a login program inherits besides its environment (found in
review of issue 7): resource limits and the cgroup su is started in. Real `su` logins
in a private network namespace."""

import os
import subprocess
import time

import pytest

from conftest import ONE_PROFILE, PORT_B
from support.pamsvc import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users, netns, su")

def has_cap_sys_resource():
    with open("/proc/self/status") as handle:
        caps = int(next(l for l in handle if l.startswith("CapEff:")).split()[1], 16)
    return bool(caps & (1 << 24))


@pytest.mark.parametrize("limit", ["64", "64:unlimited"])
def test_a_file_size_limit_cannot_cut_the_records(fence, user, limit):
    """`prlimit --fsize=64 su - USER`: the limit reaches the hook through setuid su. A
    cut record was skipped as damaged, and the next gc removed the "unrecorded"
    elements: the live session lost its fence. Now the launcher puts the limits back
    (a hard limit only with CAP_SYS_RESOURCE, which containers may lack), and a record
    that still cannot be written whole fails the login per on_error (deny): either
    fenced with whole records that gc keeps, or refused; never fenced and then not."""
    fence.load(ONE_PROFILE.format(port=PORT_B, user=user.name, scope="user"))
    argv = ["prlimit", f"--fsize={limit}", "--"] + fence._su_argv(
        user.name, "sleep 30", "su-l", None)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=fence._ENV, cwd="/")
    try:
        wait_until(lambda: fence.session_records() or proc.poll() is not None,
                   timeout=20, what="the login or its refusal")
        resettable = fence.launcher and (limit.endswith(":unlimited")
                                         or has_cap_sys_resource())
        if proc.poll() is not None:
            assert not resettable, f"refused: {proc.stderr.read()}\n{fence.log()}"
            assert "cannot open session" in proc.stderr.read().decode()
            assert fence.filled() == {} and fence.session_records() == []
            return
        assert fence.filled() == {"uid-fence": [user.uid]}
        report = fence.nf.cli("gc").stdout
        assert fence.filled() == {"uid-fence": [user.uid]}, report
        (session,) = fence.status()["sessions"]
        assert session["user"] == user.name
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def delegated_cgroup(fence, user):
    """A cgroup the user controls, as systemd delegates user@.service's subtree."""
    deleg, _ = fence.nf.make_cgroup("delegated")
    for path in (deleg, f"{deleg}/cgroup.procs", f"{deleg}/cgroup.freeze"):
        os.chown(path, user.uid, user.gid)
    return deleg


def su_in_cgroup(fence, user, cgroup, cmd):
    """`su - USER -c CMD` started from inside `cgroup`."""
    argv = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh",
            *fence._su_argv(user.name, cmd, "su-l", None)]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=fence._ENV, cwd="/")


def freeze(cgroup, frozen):
    with open(f"{cgroup}/cgroup.freeze", "w") as handle:
        handle.write("1" if frozen else "0")


def wait_logged(fence, event):
    """Wait for the hook's `result=ok` line of event (open or close)."""
    wait_until(lambda: any("result=ok" in e for e in fence.events(event)),
               timeout=20, what=f"the {event} to finish")


def hook_processes(fence):
    """pids of the hook's launcher and Python process (their command lines name it)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if fence.hook.encode() in cmdline and b"pytest" not in cmdline:
            found.append(int(name))
    return found


def cgroup_of(pid):
    with open(f"/proc/{pid}/cgroup") as handle:
        return [l[3:] for l in handle.read().splitlines() if l.startswith("0::")][0]


def test_the_hook_does_not_run_in_a_cgroup_the_user_can_freeze(fence, user):
    """su started from a cgroup the user owns (a delegated subtree, as under
    `systemd-run --user --scope`): the user freezes it while the hook holds the records
    lock, which stopped every login on the host and the hook's deadline with it. The
    launcher moves itself to the root cgroup first."""
    from netfence import records
    if not fence.launcher:
        pytest.skip("the launcher was not built")
    fence.load(ONE_PROFILE.format(port=PORT_B, user=user.name, scope="user"))
    deleg = delegated_cgroup(fence, user)
    records.ensure_dirs(fence.nf.run_dir)
    proc = None
    try:
        with records.Lock(fence.nf.run_dir):             # the hook waits here
            proc = su_in_cgroup(fence, user, deleg, "true")
            wait_until(lambda: hook_processes(fence), timeout=20, what="the hook")
            time.sleep(0.3)                               # the Python child started too
            pids = hook_processes(fence)
            assert [cgroup_of(p) for p in pids] == ["/"] * len(pids), pids
            freeze(deleg, True)                           # the user's move
        wait_logged(fence, "open")       # although su itself is frozen (in its cgroup)
        freeze(deleg, False)                              # su goes on
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        freeze(deleg, False)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_logout_does_not_put_the_hook_in_a_frozen_cgroup(fence, user):
    """The close moves the PAM application back to the cgroup it came from. That can
    be the user's, frozen meanwhile: the hook and its launcher must not go with it, or
    they would stop there holding the records lock (every login on the host waits)."""
    fence.load(ONE_PROFILE.format(port=PORT_B, user=user.name, scope="user"))
    deleg = delegated_cgroup(fence, user)
    proc = su_in_cgroup(fence, user, deleg, "sleep 1")
    try:
        wait_logged(fence, "open")
        freeze(deleg, True)                               # the user's move
        wait_logged(fence, "close")
        assert fence.session_records() == []
        assert fence.filled() == {}
    finally:
        freeze(deleg, False)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
