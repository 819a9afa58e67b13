"""Attacks on the hook by the user logging in, through real `su` logins (issue 7).

- flooding the PAM environment (pam_env user_readenv=1, ~/.pam_environment) so that
  pam_exec's own items and PAM_TYPE fall off a fixed-size table (finding 1);
- defeating the time bound: SIGALRM blocked and ignored before exec'ing setuid su, and
  a C call that never returns (a hanging NSS module) (finding 5);
- account names outside the portable set that NSS resolves: `name$` (Samba machine
  accounts), `DOMAIN\\user` (winbind), `a+b` (finding 7);
- no syslog daemon: the refusal is in the kernel log (finding 11).

Each login runs su inside the test's netns, in a private mount namespace where the test's
PAM stack (and, for some tests, other files) are bind-mounted over the host's; the host's
files are never edited.
"""

import os
import shutil
import subprocess
import sys
import time

import pytest

from conftest import PORT_A, PORT_B, parse_view, settle_uid
from netfence import records
from support.login import su_command
from support.users import throwaway_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users, netns, su")

POLICY = """
[profile.fence]
egress = [ {{ action = "reject", proto = "tcp", ports = [{port}] }} ]

[[rule]]
users = [{users}]
profiles = ["fence"]
"""

PAM_ENV = "session required pam_env.so user_readenv=1"
SU_SCRIPT = ('while [ $# -gt 0 ] && [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 99; '
             'shift 2; done; shift; exec "$@"')


def su_argv(fence, user, cmd, stack, binds=(), wrapper=()):
    """argv of `su - USER -c CMD` in the test's netns, in a private mount namespace with
    the PAM stack over /etc/pam.d/su-l and each (source, target) of `binds` mounted,
    run through `wrapper` (argv prefix that ends by exec'ing its arguments)."""
    path = f"{fence.nf.root}/pam-su-l-{len(os.listdir(fence.nf.root))}"
    with open(path, "w") as f:
        f.write(stack)
    os.chmod(path, 0o644)
    pairs = [path, "/etc/pam.d/su-l"]
    for source, target in binds:
        pairs += [source, target]
    return fence.netns.wrap(["unshare", "--mount", "--propagation", "private", "--", "sh",
                             "-c", SU_SCRIPT, "sh", *pairs, "--", *wrapper,
                             *su_command(user, cmd)])


def su(fence, user, cmd, stack, binds=(), wrapper=(), timeout=60):
    return subprocess.run(su_argv(fence, user, cmd, stack, binds, wrapper),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=dict(fence._ENV), cwd="/")


def write_pam_environment(user, lines):
    path = os.path.join(user.home, ".pam_environment")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chown(path, user.uid, user.gid)
    return path


def fenced(fence, r, user):
    """The login ran with the fence profile applied (PORT_B refused, PORT_A open)."""
    assert r.returncode == 0, (r.stdout, r.stderr, fence.log())
    seen = parse_view(r.stdout)
    assert seen["uid"] == str(user.uid)
    return (seen[str(PORT_A)], seen[str(PORT_B)]) == ("ok", "refused")


def refused(r):
    return r.returncode != 0 and "cannot open session" in r.stderr and "uid=" not in r.stdout


# ---- finding 1: flooding the PAM environment --------------------------------------------

FLOODS = {
    # 70+ names before pam_exec's items: the old launcher kept the first 64 PAM_*
    # variables, so PAM_SERVICE, PAM_USER and PAM_TYPE were dropped and the hook exited 0
    "plain": [f"PAM_X{i} DEFAULT=1" for i in range(100)],
    # a forged trailing block inside the first 64: the old hook took it for pam_exec's
    # (a close_session of root: nothing to do, exit 0)
    "forged-block": (["PAM_SERVICE DEFAULT=su-l", "PAM_USER DEFAULT=root",
                      "PAM_TYPE DEFAULT=close_session"]
                     + [f"PAM_X{i} DEFAULT=1" for i in range(90)]),
}


def pam_env_stack(fence, program):
    """The test PAM stack with pam_env (user_readenv=1) before the hook, which runs
    through the static launcher or as the Python program alone."""
    stack = fence.stack(before=[PAM_ENV])
    if program == "python-only":
        return python_only(fence, stack)
    if not fence.launcher:
        pytest.skip("no static hook launcher built")
    return stack


def python_only(fence, stack):
    """`stack` with the hook installed without the static launcher (the Python
    program alone, as on machines without a static libc)."""
    from netfence.hookstub import write_hook
    path = f"{fence.nf.root}/bin/netfence-hook-python"
    if not os.path.exists(path):
        assert write_hook(path, launcher=False) == [path]
    assert f" {fence.hook} " in stack
    return stack.replace(f" {fence.hook} ", f" {path} ")


@pytest.mark.parametrize("program", ["launcher", "python-only"])
@pytest.mark.parametrize("flood", sorted(FLOODS))
def test_flooded_pam_environment_cannot_skip_the_hook(fence, user, flood, program):
    fence.echo()
    fence.load(POLICY.format(port=PORT_B, users=f'"{user.name}"'))
    write_pam_environment(user, FLOODS[flood])
    stack = pam_env_stack(fence, program)
    r = su(fence, user, fence.view() + '; echo "x99=${PAM_X89:-unset}"', stack)
    # pam_env did read the file (Debian 12, linux-pam 1.5.2: user_readenv is honoured)
    assert parse_view(r.stdout).get("x99") == "1", (r.stdout, r.stderr)
    assert fenced(fence, r, user), (r.stdout, fence.log())
    (opened,) = fence.events("open")
    assert f"user={user.name} " in opened and "result=ok" in opened, opened
    fence.wait_clean(what="the flooded login's close")
    (closed,) = fence.events("close")
    assert "result=ok" in closed, closed
    # the look-alikes were reported, in a bounded number of lines per run
    assert 2 <= len(fence.warnings()) <= 2 * 10, fence.warnings()


def clock_window(span_min=120):
    """A time window of the policy language around the machine's local time now."""
    now = time.localtime()
    minute = now.tm_hour * 60 + now.tm_min
    start, end = (minute - span_min) % 1440, (minute + span_min) % 1440
    return f"* {start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


def shifted_tz(hours=12):
    """A POSIX TZ string whose local time is `hours` away from the machine's."""
    east = (time.localtime().tm_gmtoff // 3600 + hours + 12) % 24 - 12
    return f"NFT{-east:+d}"


@pytest.mark.parametrize("program", ["launcher", "python-only"])
def test_pam_environment_tz_cannot_move_the_clock_out_of_a_rule(fence, user, program):
    """A rule with a time window is evaluated in the machine's local time. TZ from
    ~/.pam_environment (pam_env user_readenv=1) reaches a hook run without the
    launcher; libc would take it for the local time zone, and a user could shift the
    clock 12 h, out of the window, and log in unrestricted."""
    fence.echo()
    window = clock_window()
    fence.load(POLICY.format(port=PORT_B, users=f'"{user.name}"') + f'time = "{window}"\n')
    write_pam_environment(user, [f"TZ DEFAULT={shifted_tz()}"])
    stack = pam_env_stack(fence, program)
    r = su(fence, user, fence.view() + '; echo "tz=$TZ"', stack)
    assert parse_view(r.stdout).get("tz") == shifted_tz(), r.stdout   # pam_env set it
    assert fenced(fence, r, user), (r.stdout, fence.log())
    (opened,) = fence.events("open")
    # the rule's window, open until its end in the machine's local time
    assert "result=ok" in opened and f"timed=session:fence@{window[-5:]}" in opened, opened


# ---- finding 5: the time bound ----------------------------------------------------------

BLOCK_SIGALRM = [sys.executable, "-I", "-S", "-c",
                 "import os, signal, sys\n"
                 "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                 "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])\n"
                 "os.execvp(sys.argv[1], sys.argv[1:])\n"]


def hook_pids(fence):
    """pids of this test's hook processes (launcher or Python), by their command line."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if fence.hook.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def timed_login(fence, argv, hold, limit):
    """Start the login, keep `hold` (a context manager) until it ends or `limit`
    seconds passed, then release it and wait. Returns (seconds, CompletedProcess).
    A login still hanging 20 s later has its hook killed (a test of a broken build
    must not leave it behind)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=dict(fence._ENV),
                            cwd="/")
    with hold:
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            pass
        took = time.monotonic() - start
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        for pid in hook_pids(fence):
            os.kill(pid, 9)
        out, err = proc.communicate(timeout=20)
    return took, subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.parametrize("program", ["launcher", "python-only"])
def test_blocked_sigalrm_cannot_stretch_the_time_bound(fence, user, program):
    """SIGALRM blocked and ignored before exec'ing setuid su: the mask and the
    disposition survive into pam_exec's child. The hook must still give up after
    timeout_ms (while the run_dir lock is held) and refuse under on_error=deny, with
    the static launcher (which resets the signal state) and without it (the Python
    hook takes SIGALRM back itself)."""
    fence.load(POLICY.format(port=PORT_B, users=f'"{user.name}"'))
    records.ensure_dirs(fence.nf.run_dir)
    stack = fence.stack("timeout_ms=500")
    if program == "python-only":
        stack = python_only(fence, stack)
    elif not fence.launcher:
        pytest.skip("no static hook launcher built")
    argv = su_argv(fence, user, "echo RAN", stack, wrapper=BLOCK_SIGALRM)
    took, r = timed_login(fence, argv, records.Lock(fence.nf.run_dir), limit=8)
    assert refused(r), (r.stdout, r.stderr)
    assert took < 0.5 + 2.0, took                      # su's own start included
    (line,) = fence.events("open")
    assert "result=refused" in line and "on_error=deny" in line, line
    assert float(line.split(" ms=")[1].split()[0]) < 500 + 300, line
    assert fence.session_records() == [] and fence.filled() == {}


HANG_NSS = r"""
#include <nss.h>
#include <pwd.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>
/* getpwnam that never returns in the netfence hook (PAM_TYPE in its environment),
   with every signal blocked: an LDAP server that does not answer, at its worst */
enum nss_status _nss_hesiod_getpwnam_r(const char *name, struct passwd *pw,
                                       char *buf, size_t len, int *err)
{
    sigset_t all;
    struct timespec t = {1, 0};
    if (!getenv("PAM_TYPE"))
        return NSS_STATUS_NOTFOUND;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, 0);
    for (;;)
        nanosleep(&t, 0);
}
"""


def nss_module_target():
    for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64",
              "/usr/lib"):
        if os.path.isfile(f"{d}/libnss_hesiod.so.2"):
            return f"{d}/libnss_hesiod.so.2"
    return None


@pytest.mark.parametrize("on_error,source", [("deny", "pam-line"), ("allow", "policy"),
                                             ("allow", "pam-line")])
def test_stuck_nss_lookup_is_cut_off_by_the_launcher(fence, user, on_error, source):
    """A user lookup that never returns and blocks every signal (a hung LDAP/sssd
    answer): nothing inside the Python hook can end it. The static launcher kills it
    at the deadline and applies on_error, from the PAM line or, as the hook reported
    before the lookup, from the policy; its own log line names the timeout."""
    if not fence.launcher:
        pytest.skip("no static hook launcher built: no hard deadline")
    target = nss_module_target()
    if target is None or not shutil.which("gcc"):
        pytest.skip("needs gcc and libnss_hesiod.so.2 to mount a hanging module over")
    root = fence.nf.root
    with open(f"{root}/hang.c", "w") as f:
        f.write(HANG_NSS)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", f"{root}/libnss_hang.so.2",
                    f"{root}/hang.c"], check=True, capture_output=True)
    with open(f"{root}/nsswitch.conf", "w") as f:
        f.write("passwd: hesiod files\ngroup: files\nshadow: files\nhosts: files\n")
    binds = [(f"{root}/libnss_hang.so.2", target), (f"{root}/nsswitch.conf",
                                                    "/etc/nsswitch.conf")]
    if source == "policy":
        fence.load(POLICY.format(port=PORT_B, users=f'"{user.name}"'), on_error=on_error,
                   hook_timeout_ms=400)
        stack = fence.stack()
    else:
        fence.load(POLICY.format(port=PORT_B, users=f'"{user.name}"'))
        stack = fence.stack("timeout_ms=400", f"on_error={on_error}")
    kmsg = Kmsg()
    argv = su_argv(fence, user, "echo RAN", stack, binds=binds)
    took, r = timed_login(fence, argv, _Nothing(), limit=10)
    assert took < 0.4 + 2.5, took
    if on_error == "deny":
        assert refused(r), (r.stdout, r.stderr)
    else:
        assert r.returncode == 0 and "RAN" in r.stdout, (r.stdout, r.stderr)
    result = "refused" if on_error == "deny" else "allowed-after-error"
    # the only line is the launcher's (the Python hook never got to log)
    (line,) = fence.events("open")
    assert f"result={result} on_error={on_error} error=timeout timeout_ms=400" in line, line
    lines = kmsg.wait_for(f"result={result} on_error={on_error} error=timeout")
    assert lines[0].startswith("netfence[") and "event=open" in lines[0], lines
    assert hook_pids(fence) == []                      # killed, not left behind


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---- finding 7: account names beyond the portable set -----------------------------------

@pytest.mark.parametrize("prefix,suffix", [("rt", "$"), ("NFTDOM\\", ""), ("nft+", "")],
                         ids=["dollar", "domain-backslash", "plus"])
def test_accounts_with_unusual_names_log_in_and_are_fenced(fence, prefix, suffix):
    fence.echo()
    with throwaway_user(prefix=prefix, suffix=suffix) as odd:
        settle_uid(odd.uid)
        # the policy language cannot name it: a rule for every user covers it
        fence.load(POLICY.format(port=PORT_B, users='"*"'))
        r = su(fence, odd, fence.view(), fence.stack())
        assert fenced(fence, r, odd), (r.stdout, r.stderr, fence.log())
        (opened,) = fence.events("open")
        assert "result=ok" in opened and f"uid={odd.uid}" in opened, opened
        fence.wait_clean(what=f"the close of {odd.name!r}")

        # named by no rule: logs in unrestricted, nothing recorded
        fence.load(POLICY.format(port=PORT_B, users='"nobody"'))
        r = su(fence, odd, fence.view(), fence.stack())
        assert r.returncode == 0, (r.stderr, fence.log())
        seen = parse_view(r.stdout)
        assert (seen[str(PORT_A)], seen[str(PORT_B)]) == ("ok", "ok"), seen
        assert "result=none" in fence.events("open")[-1]
        assert fence.filled() == {} and fence.session_records() == []


# ---- finding 11: logs without a syslog daemon -------------------------------------------

class Kmsg:
    """Lines the kernel log gets from now on (/dev/kmsg, read non-blocking from the
    position saved at creation)."""

    def __init__(self):
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self.fd, 0, os.SEEK_END)
        self.seen = []

    def read(self):
        while True:
            try:
                record = os.read(self.fd, 8192)
            except BlockingIOError:
                return self.seen
            except BrokenPipeError:         # overwritten meanwhile: read on
                continue
            head, _, text = record.decode(errors="replace").partition(";")
            self.seen.append((int(head.split(",")[0]), text.rstrip("\n")))

    def wait_for(self, needle, timeout=5):
        deadline = time.monotonic() + timeout
        while True:
            found = [t for _, t in self.read() if "netfence[" in t and needle in t]
            if found or time.monotonic() > deadline:
                assert found, (needle, self.seen[-20:])
                return found

    def __del__(self):
        os.close(self.fd)


def test_refusal_without_syslog_is_in_the_kernel_log(fence, user):
    """No /dev/log (none on this machine; elsewhere /dev/null is mounted over it in the
    login's mount namespace): the hook's line goes to /dev/kmsg, as authpriv.err."""
    if not os.access("/dev/kmsg", os.R_OK | os.W_OK):
        pytest.skip("no /dev/kmsg")
    fence.load(POLICY.format(port=PORT_B, users=f'"{user.name}"'))
    fence.netns.nft("delete", "table", "inet", "netfence")     # the batch will fail
    binds = [("/dev/null", "/dev/log")] if os.path.exists("/dev/log") else []
    kmsg = Kmsg()
    r = su(fence, user, "echo RAN", fence.stack(debug=False), binds=binds)
    assert refused(r), (r.stdout, r.stderr)
    (line,) = kmsg.wait_for(f"event=open user={user.name} ")
    assert "result=refused on_error=deny" in line and "KernelError" in line, line
    priority = [p for p, t in kmsg.seen if t == line][0]
    assert priority == (10 << 3) | 3, priority            # authpriv.err
    assert line.startswith("netfence[")
