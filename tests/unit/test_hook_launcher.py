"""The static hook launcher (c_ext/hook_launcher.c) on its own: environment, signal
state, the hard deadline, the child's report, logging. The launcher executes
"<its own path>.py"; here that is a small stand-in program that records what it got
and then behaves as told (hang with every signal blocked, report a budget, exit N)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from netfence import hookstub

LAUNCHER = hookstub.launcher_path()
pytestmark = pytest.mark.skipif(LAUNCHER is None, reason="no static launcher was built")

CHILD = """\
#!{python} -IS
import os, signal, sys, time
args = sys.argv[1:]
out = [a for a in args if a.startswith("out=")][0][4:]
fd = int(args[-1].split("=")[1]) if args and args[-1].startswith("launcher_fd=") else -1
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
def _siblings():        # the launcher's other children, exited ones too (never reaped)
    ppid = os.getppid()
    kids = open(f"/proc/{{ppid}}/task/{{ppid}}/children").read().split()
    return [k for k in kids if k != str(os.getpid())]
def _procs():
    own = [l[3:].strip() for l in open("/proc/self/cgroup") if l.startswith("0::")]
    mount = [l.split(" - ")[0].split()[4] for l in open("/proc/self/mountinfo")
             if " - cgroup2 " in l]
    try:
        return open(mount[0] + own[0].rstrip("/") + "/cgroup.procs").read().split()
    except (IndexError, OSError):
        return None
def _cgroup_of(pid):   # a sibling's cgroup v2 path, None once it is reaped
    try:
        return [l[3:].strip() for l in open(f"/proc/{{pid}}/cgroup") if l.startswith("0::")][0]
    except (OSError, IndexError):
        return None
samples = []
if "watch" in args:   # the launcher's cgroup, sampled from the hook's start for 0.1 s
    until = time.monotonic() + 0.1
    while time.monotonic() < until:
        samples.append(_procs())
        time.sleep(0.002)
with open(out, "w") as f:
    f.write(repr({{"samples": samples,
                  "sibling_cgroups": {{k: _cgroup_of(k) for k in _siblings()}},
                  "argv": args, "environ": open("/proc/self/environ", "rb").read(),
                  "sigblk": int(status["SigBlk"], 16), "sigign": int(status["SigIgn"], 16),
                  "fifo": fd >= 0 and (os.fstat(fd).st_mode & 0o170000) == 0o010000,
                  "pid": os.getpid(), "cgroup": open("/proc/self/cgroup").read(),
                  "cgroup_procs": _procs(), "siblings": _siblings()}}))
for a in args:
    if a.startswith("report="):
        os.write(fd, a[7:].replace(",", " ").encode() + b"\\n")
        os.close(fd)
    elif a.startswith("sleep="):
        time.sleep(float(a[6:]))
    elif a == "hang":                     # a C call that never returns, deaf to signals
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        time.sleep(3600)
    elif a.startswith("exit="):
        sys.exit(int(a[5:]))
"""


@pytest.fixture
def launcher(tmp_path):
    path = tmp_path / "netfence-hook"
    shutil.copyfile(LAUNCHER, path)
    path.chmod(0o755)
    child = tmp_path / "netfence-hook.py"
    child.write_text(CHILD.format(python=sys.executable))
    child.chmod(0o755)
    return str(path)


def run(launcher, tmp_path, *args, env=None, preexec_fn=None, timeout=30):
    """(exit status, seconds, what the child recorded, stderr)."""
    out = tmp_path / "child.out"
    if out.exists():
        out.unlink()
    if env is None:
        env = {"PAM_SERVICE": "su-l", "PAM_USER": "alice", "PAM_TYPE": "open_session"}
    start = time.monotonic()
    proc = subprocess.run([launcher, f"out={out}", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=preexec_fn)
    took = time.monotonic() - start
    seen = eval(out.read_text()) if out.exists() else None     # noqa: S307 - our own repr
    return proc.returncode, took, seen, proc.stderr


def test_every_pam_variable_is_kept_in_order_and_nothing_else(launcher, tmp_path):
    """No fixed-size table: 5000 look-alikes from ~/.pam_environment do not push
    pam_exec's own items (and PAM_TYPE, last) out."""
    names = [f"PAM_X{i}" for i in range(5000)]
    env = {}
    for i, name in enumerate(names):
        env[name] = "1"
        if i % 1000 == 0:
            env[f"LD_PRELOAD{i}"] = "/evil.so"
    env.update({"LD_PRELOAD": "/evil.so", "PATH": "/x", "PAM_SERVICE": "su-l",
                "PAM_USER": "alice", "PAM_TYPE": "open_session"})
    code, _, seen, _ = run(launcher, tmp_path, "exit=0", env=env)
    assert code == 0
    got = [e.split(b"=")[0].decode() for e in seen["environ"].split(b"\0") if e]
    assert got == names + ["PAM_SERVICE", "PAM_USER", "PAM_TYPE"]


def test_arguments_pass_through_with_one_launcher_fd_last(launcher, tmp_path):
    code, _, seen, _ = run(launcher, tmp_path, "launcher_fd=0", "state_dir=/s", "exit=0",
                           "launcher_fd=1")
    assert code == 0
    assert seen["argv"][1:-1] == ["state_dir=/s", "exit=0"]
    assert seen["argv"][-1].startswith("launcher_fd=") and seen["fifo"]


@pytest.mark.parametrize("status", [0, 1, 3])
def test_exit_status_passes_through(launcher, tmp_path, status):
    assert run(launcher, tmp_path, f"exit={status}")[0] == status


def _hostile_signal_state():
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM, signal.SIGTERM, signal.SIGCHLD])
    signal.setitimer(signal.ITIMER_REAL, 0.05)          # would fire in the launcher


def test_inherited_signal_state_is_reset(launcher, tmp_path):
    code, _, seen, _ = run(launcher, tmp_path, "sleep=0.2", "exit=0",
                           preexec_fn=_hostile_signal_state)
    assert code == 0                                     # the inherited timer was cancelled
    for sig in (signal.SIGALRM, signal.SIGTERM, signal.SIGCHLD):
        bit = 1 << (sig - 1)
        assert not seen["sigblk"] & bit and not seen["sigign"] & bit, sig


@pytest.mark.parametrize("on_error,status", [("deny", 1), ("allow", 0)])
def test_hard_deadline_kills_a_hook_deaf_to_signals(launcher, tmp_path, on_error, status):
    code, took, seen, err = run(launcher, tmp_path, "timeout_ms=300", f"on_error={on_error}",
                                "debug", "hang", preexec_fn=_hostile_signal_state)
    assert code == status
    assert 0.3 <= took < 0.3 + 0.2 + 0.5, took           # budget + grace + margin
    result = "refused" if status else "allowed-after-error"
    assert (f"netfence: event=open user=alice service=su-l result={result} "
            f"on_error={on_error} error=timeout timeout_ms=300 ") in err, err
    assert not os.path.exists(f"/proc/{seen['pid']}"), "the hook was left running"


def test_default_budget_is_2000_ms(launcher, tmp_path):
    code, took, _, _ = run(launcher, tmp_path, "hang")
    assert code == 1 and 2.0 <= took < 2.0 + 0.2 + 0.8, took


def test_the_hooks_report_sets_budget_and_on_error(launcher, tmp_path):
    # the snapshot says more time than the PAM line: the hook is not cut off early
    code, took, _, _ = run(launcher, tmp_path, "timeout_ms=200",
                           "report=timeout_ms=1500,on_error=deny", "sleep=0.8", "exit=0")
    assert code == 0 and took >= 0.8
    # ... or less time, and allow: killed at that budget, and let in
    code, took, _, err = run(launcher, tmp_path, "timeout_ms=5000", "debug",
                             "report=timeout_ms=100,on_error=allow", "hang")
    assert code == 0 and took < 0.1 + 0.2 + 0.5, took
    assert "result=allowed-after-error on_error=allow error=timeout timeout_ms=100" in err
    # a report that makes no sense changes nothing
    code, took, _, _ = run(launcher, tmp_path, "timeout_ms=300",
                           "report=timeout_ms=0,on_error=maybe,timeout_ms=99999", "hang")
    assert code == 1 and took < 0.3 + 0.2 + 0.5, took


def test_timeout_line_reaches_the_kernel_log_without_syslog(launcher, tmp_path):
    if os.geteuid() != 0 or not os.access("/dev/kmsg", os.R_OK | os.W_OK):
        pytest.skip("needs root and /dev/kmsg")
    kmsg = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    os.lseek(kmsg, 0, os.SEEK_END)
    argv = [launcher, f"out={tmp_path}/child.out", "timeout_ms=100", "hang"]
    if os.path.exists("/dev/log"):                      # no syslog in this mount namespace
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                'mount --bind /dev/null /dev/log && exec "$@"', "sh", *argv]
    proc = subprocess.run(argv, env={"PAM_TYPE": "close_session"}, capture_output=True,
                          timeout=30)
    assert proc.returncode == 1
    records = []
    try:
        while True:
            try:
                records.append(os.read(kmsg, 8192).decode(errors="replace"))
            except BlockingIOError:
                break
    finally:
        os.close(kmsg)
    found = [r for r in records if "netfence[" in r and "error=timeout timeout_ms=100" in r]
    assert found, records[-5:]
    assert found[0].startswith("83,")                    # authpriv.err
    assert ";netfence[" in found[0]
    assert "event=close user=- service=- result=refused" in found[0]


EXECVE = """
import ctypes, sys
entries = [e for e in sys.stdin.buffer.read().split(b"\\0") if e]
argv = (ctypes.c_char_p * (len(sys.argv)))(*[a.encode() for a in sys.argv[1:]], None)
envp = (ctypes.c_char_p * (len(entries) + 1))(*entries, None)
ctypes.CDLL(None, use_errno=True).execve(argv[0], argv, envp)
sys.exit(f"execve: errno {ctypes.get_errno()}")
"""


def test_timeout_line_shows_pam_items_safely(launcher, tmp_path):
    """The items in the launcher's line are the user's text: quoted with escapes, cut
    at 64 bytes, and pam_exec's copies (the last ones), not look-alikes."""
    entries = [("PAM_USER", "root"), ("PAM_SERVICE", "sshd"), ("PAM_SERVICE", "su-l"),
               ("PAM_USER", "a b'c\\d\nevent=open result=ok é" + "x" * 100),
               ("PAM_TYPE", "open_session")]
    block = b"".join(f"{k}={v}".encode() + b"\0" for k, v in entries)
    argv = [launcher, f"out={tmp_path}/child.out", "timeout_ms=100", "debug", "hang"]
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", EXECVE, *argv], input=block,
                          capture_output=True, timeout=30)
    assert proc.returncode == 1, proc.stderr
    (line,) = [l for l in proc.stderr.decode().splitlines() if "error=timeout" in l]
    assert line.startswith("netfence: event=open user='a b\\x27c\\x5cd\\x0aevent=open "
                           "result=ok \\xc3\\xa9xxx"), line
    assert "x" * 40 not in line and "' service=su-l result=refused on_error=deny " in line


# ---- priming the cgroup migration (issue 12) ----------------------------------------

@pytest.fixture
def own_cgroup():
    """A root-owned cgroup of its own to start the launcher in (moved in before exec)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: cgroups")
    from netfence import cgroups
    mount = cgroups.cgroup2_mount()
    path = f"{mount}/nflaunch-{os.getpid()}-{time.monotonic_ns()}"
    os.mkdir(path)
    yield path
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.05)
    os.rmdir(path)


def _start_in(path):
    def move():
        with open(f"{path}/cgroup.procs", "w") as handle:
            handle.write("0")
    return move


def _left_in(path, wait=2.0):
    deadline = time.monotonic() + wait
    while True:
        with open(f"{path}/cgroup.procs") as handle:
            pids = handle.read().split()
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.02)


def test_open_primes_a_migration_that_moves_nothing(launcher, tmp_path, own_cgroup):
    """At open the launcher forks a child that moves itself into the cgroup it is in
    (the kernel's grace period then starts before the interpreter): the hook still runs
    where the launcher was started, and nothing is left in that cgroup afterwards."""
    code, _, seen, _ = run(launcher, tmp_path, "sleep=0.1", "exit=0",
                           preexec_fn=_start_in(own_cgroup))
    assert code == 0
    assert len(seen["siblings"]) == 1            # the priming child
    assert seen["cgroup"].strip().endswith("::/" + os.path.basename(own_cgroup))
    assert _left_in(own_cgroup) == []


def _close_env(*before):
    return dict(before, PAM_SERVICE="su-l", PAM_USER="alice", PAM_TYPE="close_session")


def test_close_primes_from_the_root_cgroup_never_in_the_session_cgroup(launcher, tmp_path,
                                                                       own_cgroup):
    """At close the hook counts the tasks left in the session cgroup besides the
    launcher and itself (the user's release) and removes it: the launcher's priming
    child is born in the root cgroup (clone3 CLONE_INTO_CGROUP), so the session cgroup
    never holds more than the launcher and the hook, sampled from the hook's start."""
    for _ in range(5):
        code, _, seen, _ = run(launcher, tmp_path, "watch", "exit=0", env=_close_env(),
                               preexec_fn=_start_in(own_cgroup))
        assert code == 0
        assert len(seen["siblings"]) == 1                # the priming child
        assert set(seen["sibling_cgroups"].values()) <= {"/", None}
        assert str(seen["pid"]) in seen["cgroup_procs"]
        assert len(seen["cgroup_procs"]) == 2            # the launcher and the hook
        assert seen["samples"] and all(len(pids) == 2 for pids in seen["samples"])
        assert seen["cgroup"].strip().endswith("::/" + os.path.basename(own_cgroup))
        assert _left_in(own_cgroup) == []


def test_close_primer_cannot_be_steered_into_a_user_cgroup(launcher, tmp_path, own_cgroup):
    """The attack: a login whose application sits in a cgroup the user controls (a
    delegated subtree, here a cgroup chowned to a uid), with a PAM environment full of
    look-alikes naming that cgroup. The launcher leaves it for the root cgroup, and
    the priming child is born in the root cgroup: nothing of the hook is left in the
    user's cgroup or below it, and nothing but the launcher's own child moves."""
    user_cg = f"{own_cgroup}/delegated"
    os.mkdir(user_cg)
    try:
        os.chown(user_cg, 64999, 64999)
        os.chown(f"{user_cg}/cgroup.procs", 64999, 64999)
        rel = user_cg[len(os.path.dirname(own_cgroup)):]
        env = _close_env(("PAM_CGROUP", rel), ("PAM_ORIGIN", f"../..{rel}"),
                         ("PAM_RHOST", rel))
        code, _, seen, _ = run(launcher, tmp_path, "watch", "exit=0", env=env,
                               preexec_fn=_start_in(user_cg))
        assert code == 0
        assert seen["cgroup"].strip().endswith("0::/")   # the hook runs in the root
        assert set(seen["sibling_cgroups"].values()) <= {"/", None}
        assert _left_in(user_cg) == []
    finally:
        os.rmdir(user_cg)


def test_open_still_primes_in_place(launcher, tmp_path, own_cgroup):
    """An open's priming child stays a fork in the launcher's own cgroup (where the
    PAM application is moved from); only the close's is born in the root cgroup."""
    code, _, seen, _ = run(launcher, tmp_path, "exit=0", preexec_fn=_start_in(own_cgroup))
    assert code == 0
    assert len(seen["siblings"]) == 1
    assert set(seen["sibling_cgroups"].values()) <= {"/" + os.path.basename(own_cgroup), None}
