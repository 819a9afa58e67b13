"""Fixtures for end-to-end tests: real users, PAM stacks, su, sshd and python-pam.

Everything here needs root, and everything is removed at teardown even when the test
fails (users with their processes and homes, /etc/pam.d files, /run/nftest-* dirs,
sshd processes; network namespaces come from tests/conftest.py's `netns`).
"""

import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager

import pytest

from support.pamsvc import env_recorder, pam_stack_text, wait_until
from support.users import throwaway_user, user_processes

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def user():
    """A throwaway local user (support.users.User), once no process of an earlier
    holder of its uid is left (see settle_uid)."""
    if not IS_ROOT:
        pytest.skip("needs root to create users")
    with throwaway_user() as u:
        settle_uid(u.uid)
        yield u


# One profile that rejects tcp to {port}, for one user at one scope.
ONE_PROFILE = """
[profile.fence]
egress = [ {{ action = "reject", proto = "tcp", ports = [{port}] }} ]

[[rule]]
users = ["{user}"]
profiles = ["fence"]
scope = "{scope}"
"""


@pytest.fixture
def recorder():
    """A pam_exec program that records the PAM environment (support.pamsvc.EnvRecorder)."""
    if not IS_ROOT:
        pytest.skip("needs root")
    with env_recorder() as rec:
        yield rec


# ---- netfence logins (tests/e2e/test_login_*.py) ---------------------------------------
#
# `fence`: a private netfence installation (the `nf` fixture: netns, dirs, cgroup base)
# with the hook installed by `netfence install-hook`, a user-readable copy of probe.py,
# echo servers on fixed loopback ports, and helpers to log in through real su (with
# private PAM stacks mounted over su's files in a private mount namespace), to drive a
# live session's shell line by line, and to read the kernel's and netfence's state.
# Test modules import the constants, REPL, parse_view and read_kv from here.

SUPPORT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "support")
USER_PYTHON = "/usr/bin/python3"        # the users cannot reach root's interpreter
PORT_A, PORT_B, PORT_C = 7001, 7002, 7003
_END = "__nf_end__"
# a line-by-line shell: every line read is eval'ed, then an end marker with its status
REPL = f'while IFS= read -r __nf_l; do eval "$__nf_l"; echo "{_END} $?"; done'
_END_RE = re.compile(rf"{_END} (\d+)\n")

_BGPROBE = """\
import os, sys, time
probe = {"__name__": "probe"}
exec(open(sys.argv[1]).read(), probe)
out, ports = sys.argv[2], [int(p) for p in sys.argv[3:]]
n = 0
while True:
    n += 1
    start = time.time()
    res = " ".join(f"{p}={probe['probe']('tcp', '127.0.0.1', p, 1.0)}" for p in ports)
    with open(out + ".tmp", "w") as f:
        f.write(f"n={n} t={start} pid={os.getpid()} {res}\\n")
    os.replace(out + ".tmp", out)
    time.sleep(0.1)
"""


def read_kv(path):
    """{key: value} of a one-line "k=v k=v" file, or None when it does not exist yet."""
    try:
        with open(path) as f:
            return dict(w.split("=", 1) for w in f.read().split())
    except FileNotFoundError:
        return None


class LiveShell:
    """The shell of a live login (su, ssh), driven over pipes through REPL."""

    def __init__(self, proc, what, stderr_path=None):
        self.proc, self.what, self._stderr_path = proc, what, stderr_path
        self._buf = b""

    def send(self, line):
        """Write one line without waiting (e.g. to start a nested REPL)."""
        os.write(self.proc.stdin.fileno(), line.encode() + b"\n")

    def run(self, cmd, timeout=30):
        """Run one shell line in the session; returns (status, output)."""
        self.send(cmd)
        return self.wait_end(timeout)

    def out(self, cmd, timeout=30):
        status, text = self.run(cmd, timeout)
        assert status == 0, f"{cmd!r} exited {status} in {self.what}: {text}"
        return text

    def wait_end(self, timeout=30):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            text = self._buf.decode(errors="replace")
            match = _END_RE.search(text)
            if match:
                self._buf = text[match.end():].encode()
                return int(match.group(1)), text[:match.start()]
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.what}: no answer in {timeout}s; got {text!r}"
                                     f"\nstderr: {self.stderr()}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"{self.what} ended (exit {self.proc.wait()}); "
                                         f"output {text!r}\nstderr: {self.stderr()}")
                self._buf += chunk

    def stderr(self):
        if self._stderr_path and os.path.exists(self._stderr_path):
            with open(self._stderr_path, errors="replace") as f:
                return f.read()
        return ""

    def logout(self, timeout=30):
        """End the shell (EOF on its stdin) and wait for the login program to exit."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        return self.proc.wait(timeout=timeout)


def parse_view(text):
    """key=value lines (see Fence.view) as a dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


class Fence:
    def __init__(self, nf):
        self.nf, self.netns = nf, nf.netns
        self.hook = f"{nf.root}/bin/netfence-hook"
        installed = nf.cli("install-hook", self.hook)
        assert "PAM line:" in installed.stdout, installed.stdout
        self.launcher = os.path.exists(self.hook + ".py")
        self.log_path = f"{nf.root}/hook.log"
        self.probe_path = f"{nf.root}/probe.py"
        shutil.copyfile(os.path.join(SUPPORT_DIR, "probe.py"), self.probe_path)
        os.chmod(self.probe_path, 0o644)
        self._echo = None
        self._procs = []

    # -- policy and PAM -------------------------------------------------------------
    def load(self, body, **settings):
        """Write the policy ([settings] with this test's cgroup_base) and reload."""
        lines = ["[settings]", f'cgroup_base = "{self.nf.cgroup_base}"']
        lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
        self.nf.write_policy("\n".join(lines) + "\n\n" + body)
        self.nf.cli("reload")

    def pam_line(self, *args, control="required", debug=True):
        """The netfence session line, as `netfence pam-line` prints it, with pam_exec's
        log= (the hook's stderr; `debug` makes the hook write its log line there)."""
        line = self.nf.cli("pam-line", "--hook", self.hook).stdout.strip()
        assert line.startswith("session required pam_exec.so seteuid quiet "), line
        line = line.replace(" quiet ", f" quiet log={self.log_path} ", 1)
        line = line.replace("session required ", f"session {control} ", 1)
        return " ".join([line, *(["debug"] if debug else []), *args])

    def stack(self, *args, before=(), **kw):
        """A complete PAM stack (pam_permit auth/account) with the netfence line."""
        return pam_stack_text([*before, self.pam_line(*args, **kw)])

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def warnings(self):
        return [l for l in self.log().splitlines()
                if l.startswith("netfence: event=") and " warning=" in l]

    def events(self, event=None):
        """The hook's result lines (`netfence: event=...`, not its `warning=` lines),
        optionally of one event."""
        lines = [l for l in self.log().splitlines()
                 if l.startswith("netfence: event=") and " warning=" not in l]
        return [l for l in lines if event is None or l.startswith(f"netfence: event={event} ")]

    # -- traffic --------------------------------------------------------------------
    def echo(self):
        """Echo servers (root, outside every session) on 127.0.0.1 PORT_A/B/C."""
        if self._echo is None:
            self._echo = self.nf.echo_server(
                [f"tcp:127.0.0.1:{p}" for p in (PORT_A, PORT_B, PORT_C)])
        return self._echo

    def probe_cmd(self, port, host="127.0.0.1", proto="tcp", timeout=1.0):
        return (f"{USER_PYTHON} -I -S {self.probe_path} {proto} {host} {port} {timeout}")

    def bg_probe_cmd(self, outfile, ports=(PORT_A, PORT_B)):
        """A shell line that leaves a process behind (nohup ... &, detached from the
        login's pipes) probing `ports` every 0.1 s; each round replaces `outfile` with
        "n=N t=START pid=PID PORT=result ..." (read it with read_kv)."""
        script = f"{self.nf.root}/bgprobe.py"
        if not os.path.exists(script):
            with open(script, "w") as f:
                f.write(_BGPROBE)
            os.chmod(script, 0o644)
        args = " ".join(str(p) for p in ports)
        return (f"nohup {USER_PYTHON} -I -S {script} {self.probe_path} {outfile} {args} "
                f"</dev/null >/dev/null 2>&1 &")

    def view(self, ports=(PORT_A, PORT_B, PORT_C)):
        """A shell line printing uid=, cg= (cgroup v2 path) and PORT=probe-result."""
        parts = ['echo "uid=$(id -u)"', "echo \"cg=$(sed -n 's/^0:://p' /proc/self/cgroup)\""]
        parts += [f'echo "{p}=$({self.probe_cmd(p)})"' for p in ports]
        return "; ".join(parts)

    # -- logins ---------------------------------------------------------------------
    def _su_argv(self, user, cmd, service, stacks):
        from support.login import su_command
        if stacks is None:
            stacks = {service: self.stack()}
        binds = []
        for name, text in stacks.items():
            path = f"{self.nf.root}/pam-{name}-{len(os.listdir(self.nf.root))}"
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o644)
            if not os.path.isfile(f"/etc/pam.d/{name}"):
                raise FileNotFoundError(f"/etc/pam.d/{name} must exist to be replaced")
            binds += [path, f"/etc/pam.d/{name}"]
        script = ('while [ $# -gt 0 ] && [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 99; '
                  'shift 2; done; shift; exec "$@"')
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script,
                "sh", *binds, "--", *su_command(user, cmd, service)]
        return self.netns.wrap(argv)

    _ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

    def su(self, user, cmd, service="su-l", stacks=None, timeout=60):
        """`su - USER -c CMD` in the netns, with `stacks` ({service: PAM text}, default
        the netfence stack for `service`) mounted over /etc/pam.d privately."""
        return subprocess.run(self._su_argv(user, cmd, service, stacks), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              env=self._ENV, cwd="/")

    @contextmanager
    def su_shell(self, user, service="su-l", stacks=None):
        """A live `su - USER` session whose shell runs REPL; logged out on exit."""
        err = f"{self.nf.root}/su-stderr-{len(os.listdir(self.nf.root))}"
        with open(err, "wb") as errf:
            proc = subprocess.Popen(self._su_argv(user, REPL, service, stacks),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=errf, env=self._ENV, cwd="/")
        self._procs.append(proc)
        shell = LiveShell(proc, f"su {user}", err)
        try:
            yield shell
        finally:
            _finish(proc)

    @contextmanager
    def ssh_shell(self, server, user, extra_args=()):
        """A live ssh session of `user` on `server` whose shell runs REPL."""
        err = f"{self.nf.root}/ssh-stderr-{len(os.listdir(self.nf.root))}"
        with open(err, "wb") as errf:
            with server.ssh_popen(user, REPL, extra_args, stderr=errf) as proc:
                shell = LiveShell(proc, f"ssh {user} {' '.join(extra_args)}", err)
                try:
                    yield shell
                finally:
                    try:                # log out cleanly (ssh_popen would kill it)
                        shell.logout(timeout=15)
                    except subprocess.TimeoutExpired:
                        pass

    # -- state ----------------------------------------------------------------------
    def ruleset(self):
        return self.netns.nft("list", "ruleset").stdout

    def sets(self):
        """{set name: [elements]} of table inet netfence, as nft lists them."""
        out = self.netns.nft("-j", "list", "table", "inet", "netfence").stdout
        found = {}
        for item in json.loads(out)["nftables"]:
            if "set" in item:
                found[item["set"]["name"]] = item["set"].get("elem", [])
        return found

    def elements(self, set_name):
        return self.sets()[set_name]

    def filled(self):
        """The non-empty profile sets. The guard sets (any-uid, any-ucg, any-scg) must
        hold exactly the union of the profile sets of their kind: checked here. nft
        prints a cgroup element as its path while the cgroup exists and as its id once
        it is gone: a listing taken while a close removes a session cgroup can show
        one element both ways (a path in one set, the id in the next), so a listing
        that disagrees is read again, for at most 2 s; a real difference stays."""
        for _attempt in range(10):
            sets = self.sets()
            if not self._guard_differences(sets):
                break
            time.sleep(0.2)
        assert not self._guard_differences(sets), sets
        return {name: elems for name, elems in sets.items()
                if elems and not name.startswith("any-")}

    @staticmethod
    def _guard_differences(sets):
        out = []
        for kind in ("uid", "ucg", "scg"):
            union = {e for name, elems in sets.items() if name.startswith(f"{kind}-")
                     for e in elems}
            if set(sets.get(f"any-{kind}", [])) != union:
                out.append(kind)
        return out

    def status(self):
        shown = self.nf.cli("status", "--json", check=False)
        assert shown.returncode in (0, 1), shown.stderr     # 1: it reports a PROBLEM
        return json.loads(shown.stdout)

    def session_records(self):
        path = f"{self.nf.run_dir}/sessions"
        return sorted(os.listdir(path)) if os.path.isdir(path) else []

    def cgroup_dirs(self):
        """Directories under this test's cgroup base, relative to the cgroup2 mount."""
        top = self.nf.cg_root
        mount = os.path.dirname(top)
        out = []
        for dirpath, _, _ in os.walk(top):
            out.append(dirpath[len(mount):])
        return sorted(out)

    def session_cgroups(self):
        return [d for d in self.cgroup_dirs() if "/session-" in d]

    def nft_cgroup(self, path):
        """How `nft list` prints a cgroupsv2 element of a live cgroup: its path relative
        to /sys/fs/cgroup (the CLI's fixed prefix)."""
        return os.path.relpath(os.path.dirname(self.nf.cg_root) + path, "/sys/fs/cgroup")

    def cgroup_exists(self, path):
        return os.path.isdir(os.path.dirname(self.nf.cg_root) + path)

    def wait_clean(self, timeout=15, what="cleanup"):
        """Poll until no element, no session record and no session cgroup is left."""
        def clean():
            return (not self.filled() and not self.session_records()
                    and not self.session_cgroups())
        try:
            wait_until(clean, timeout=timeout, interval=0.05, what=what)
        except TimeoutError as err:
            raise AssertionError(f"{err}: elements {self.filled()}, records "
                                 f"{self.session_records()}, cgroups {self.cgroup_dirs()}"
                                 f"\nhook log:\n{self.log()}") from None

    def cleanup(self):
        for proc in self._procs:
            _finish(proc)


def _finish(proc):
    for f in (proc.stdin, proc.stdout):
        try:
            if f is not None:
                f.close()
        except OSError:
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def fence(nf):
    """A netfence installation with the hook, echo servers and login helpers (Fence)."""
    f = Fence(nf)
    try:
        yield f
    finally:
        f.cleanup()


def settle_uid(uid, timeout=15):
    """Wait until no process has `uid`, zombies included. useradd hands the uid of the
    previous test's user to the next one, and that user's killed processes stay zombies
    until PID 1 reaps them (~1.5 s on this machine's init); tests that count a uid's
    processes (support.users.user_processes) would see them."""
    wait_until(lambda: not user_processes(uid, zombies=True), timeout=timeout,
               interval=0.05, what=f"uid {uid} to have no process left")


def kill_and_expect_release(fence, user, pid):
    """Kill the last process left from a user-scope login: the next gc releases the
    uid and nothing of it is left (elements, user record)."""
    os.kill(pid, signal.SIGKILL)
    settle_uid(user.uid)
    report = fence.nf.cli("gc").stdout
    assert "1 users released" in report, report
    assert fence.filled() == {}
    assert os.listdir(f"{fence.nf.run_dir}/users") == []


@pytest.fixture
def other_user():
    """A second throwaway user (not named by test policies: unrestricted)."""
    if not IS_ROOT:
        pytest.skip("needs root to create users")
    with throwaway_user() as u:
        settle_uid(u.uid)
        yield u
