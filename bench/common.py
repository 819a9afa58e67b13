"""Shared plumbing for bench/run.py: the workspace, private netfence installations,
the C helpers, statistics and cleanup checks.

Everything a run creates lives under one root-owned 0755 directory /run/nfbench-<tag>
(policy files under /tmp would be refused), in network namespaces held by `unshare -n`
(tests/support/netns.py) and in cgroups under <cgroup2 mount>/nfbench-<tag>-*; the
throwaway users come from tests/support/users.py. Every object is registered on one
ExitStack as soon as it exists, so an exception or Ctrl-C still removes it, and
`leftovers()` checks afterwards that nothing is left.
"""

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
SRC = os.path.join(ROOT, "src")
TESTS = os.path.join(ROOT, "tests")
for _path in (SRC, TESTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)
# the CLI (`python -m netfence.cli`) and helpers run in subprocesses
os.environ["PYTHONPATH"] = os.pathsep.join(
    [SRC] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

from support.netns import NetNS  # noqa: E402
from support.nfenv import NfEnv, cgroup2_mount, remove_cgroup_tree  # noqa: E402

PREFIX = "nfbench-"
NSHELPER = os.path.join(BENCH, "nshelper.py")


def log(*words):
    print(*words, file=sys.stderr, flush=True)


# ---- statistics ---------------------------------------------------------------------

def median(values):
    return statistics.median(values) if values else None


def percentile(values, pct):
    """Nearest-rank percentile (p95 of 50 samples is the 48th smallest)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def rnd(value, digits=2):
    return None if value is None else round(value, digits)


# ---- the workspace ------------------------------------------------------------------

def build_in_place():
    """The bench imports netfence from src/: build its C parts there as an install
    does (c_ext/build_fastpath.py: the cffi extension and the static launcher, both
    git-ignored), when missing or older than their sources. Without them the hook would
    run without its launcher and with the Python fast path, which is not what an
    installation runs (the launcher primes the cgroup migration at open)."""
    c_ext = os.path.join(ROOT, "c_ext")
    built = os.path.join(SRC, "netfence", "_hook_launcher")
    sources = [os.path.join(c_ext, name) for name in os.listdir(c_ext)]
    newest = max(os.path.getmtime(path) for path in sources)
    extension = [name for name in os.listdir(os.path.join(SRC, "netfence"))
                 if name.startswith("_fastpath") and name.endswith(".so")]
    if (os.path.exists(built) and extension
            and os.path.getmtime(built) >= newest):
        return
    log("building the hook's C parts in src/ (c_ext/build_fastpath.py)")
    subprocess.run([sys.executable, os.path.join(c_ext, "build_fastpath.py")],
                   check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    if not os.path.exists(built):
        raise RuntimeError("the static hook launcher could not be built (no libc.a?)")


class Workspace:
    """/run/nfbench-<tag>: compiled helpers (bin/), the hook program (hook/), and one
    directory per private netfence installation."""

    def __init__(self, stack):
        self.stack = stack
        self.tag = secrets.token_hex(4)
        self.root = f"/run/{PREFIX}{self.tag}"
        self.cg_mount = cgroup2_mount()
        # paths outside self.root the run creates (PAM service files, sshd's
        # directories): leftovers() checks that they, and processes run from them, are gone
        self.owned_paths = []
        os.mkdir(self.root, 0o755)
        stack.callback(shutil.rmtree, self.root, ignore_errors=True)
        os.chmod(self.root, 0o755)
        self.bin = self.path("bin")
        os.mkdir(self.bin, 0o755)
        self.driver = self._compile("driver")
        self.netbench = self._compile("netbench")
        self.hook = self._write_hook()

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def _compile(self, name):
        out = os.path.join(self.bin, name)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", out, os.path.join(BENCH, "c", f"{name}.c")],
                       check=True, stdin=subprocess.DEVNULL)
        return out

    def _write_hook(self):
        build_in_place()
        from netfence.hookstub import write_hook
        path = self.path("hook", "netfence-hook")
        self.hook_files = write_hook(path, python=sys.executable)
        return path

    def netns(self):
        """A fresh network namespace, removed when the run ends (or with `close`)."""
        ns = NetNS().__enter__()
        self.stack.callback(ns.__exit__, None, None, None)
        ns.run(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=10000 60999"], check=False)
        return ns

    def env(self, ns, name):
        """A private netfence installation (config, state, run dirs, cgroup base)."""
        env = BenchEnv(ns, self, name).__enter__()
        self.stack.callback(env.__exit__, None, None, None)
        return env

    def popen(self, argv, graceful=False, **kw):
        """A long-running helper, stopped (and reaped) when the run ends: SIGKILL, or
        with graceful SIGTERM first (the driver then finishes the command it runs)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, **kw)
        self.stack.callback(stop_process, proc, graceful)
        return proc


def stop_process(proc, graceful=False, grace=30):
    if proc.poll() is None and graceful:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


class BenchEnv(NfEnv):
    """tests/support's NfEnv, rooted in the benchmark's workspace."""

    def __init__(self, netns, workspace, name):
        super().__init__(netns)
        self.tag = f"{workspace.tag}-{name}"
        self.root = workspace.path(name)
        self.config_dir = f"{self.root}/etc"
        self.state_dir = f"{self.root}/state"
        self.run_dir = f"{self.root}/run"
        self.cgroup_base = f"{PREFIX}{self.tag}"
        self.cg_root = os.path.join(workspace.cg_mount, self.cgroup_base)

    def __exit__(self, *exc):
        super().__exit__(*exc)
        remove_cgroup_tree(self.cg_root)       # again: a hook may have been mid-login

    def helper(self, *args, check=True, input=None):
        """bench/nshelper.py inside the namespace (the Ruleset must be created there)."""
        return self.netns.run([sys.executable, NSHELPER, *args], check=check, input=input)


# ---- the login driver ---------------------------------------------------------------

class DriverSpec:
    """A spec file for bench/c/driver.c."""

    def __init__(self, iterations):
        self.lines = [f"iterations {int(iterations)}"]

    def step(self, name, commands, env=(), stderr=None):
        """A step: its environment ([(name, value)], in order) and its commands."""
        self.lines.append(f"step {name}")
        self.lines += [f"env {k}={v}" for k, v in env]
        if stderr:
            self.lines.append(f"stderr {stderr}")
        for argv in commands:
            if any("\t" in a or "\n" in a for a in argv):
                raise ValueError(f"unusable argument in {argv!r}")
            self.lines.append("cmd " + "\t".join(argv))
        return self

    def pause(self, ms):
        """Sleep `ms` before every iteration (untimed)."""
        self.lines.append(f"pause {int(ms)}")
        return self

    def hold(self, step):
        self.lines.append(f"hold {step}")
        return self

    def write(self, path):
        with open(path, "w") as handle:
            handle.write("\n".join(self.lines) + "\n")
        return path


def pam_env(pam_type, user, service="sshd", tty="ssh", rhost="203.0.113.7"):
    """The environment pam_exec builds: its own items in its order, PAM_TYPE last."""
    env = [("PAM_SERVICE", service), ("PAM_USER", user)]
    if tty:
        env.append(("PAM_TTY", tty))
    if rhost:
        env.append(("PAM_RHOST", rhost))
    env.append(("PAM_TYPE", pam_type))
    return env


def parse_driver(text):
    """{step: [(microseconds, status, maxrss_kb)]} from the driver's output."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 5 or parts[0] == "hold":
            continue
        out.setdefault(parts[1], []).append((float(parts[2]), int(parts[3]), int(parts[4])))
    return out


def run_driver(ws, ns, spec, name, timeout=600):
    """Run a spec in the namespace; returns parse_driver's dict. A failed command
    (non-zero status) raises: a benchmark of a failing login is meaningless."""
    path = spec.write(ws.path(f"{name}.spec"))
    proc = subprocess.Popen(ns.wrap([ws.driver, path]), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        # SIGTERM: the driver lets the running command (a hook) finish, then exits
        stop_process(proc, graceful=True)
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"driver {name} exited {proc.returncode}: {stderr.strip()}")
    result = parse_driver(stdout)
    for step, samples in result.items():
        bad = [s for s in samples if s[1] != 0]
        if bad:
            raise RuntimeError(f"driver {name}: step {step} failed {len(bad)} of "
                               f"{len(samples)} times (status {bad[0][1]})")
    return result


def ms(samples):
    return [s[0] / 1000 for s in samples]


# ---- cleanup checks -----------------------------------------------------------------

def leftovers(tag, users=(), groups=(), paths=()):
    """What a run with this tag left behind (empty list: nothing); `paths`: files and
    directories outside /run/nfbench-<tag> it created."""
    import grp
    import pwd
    found = []
    for group in groups:
        try:
            grp.getgrnam(group)
            found.append(f"group {group}")
        except KeyError:
            pass
    for name in os.listdir("/run"):
        if name == f"{PREFIX}{tag}":
            found.append(f"/run/{name}")
    found += [path for path in paths if os.path.lexists(path)]
    mount = cgroup2_mount()
    for name in os.listdir(mount):
        if name.startswith(f"{PREFIX}{tag}"):
            found.append(os.path.join(mount, name))
    for user in users:
        try:
            pwd.getpwnam(user)
            found.append(f"user {user}")
        except KeyError:
            pass
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmd = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if f"{PREFIX}{tag}" in cmd or ppid == me or any(p in cmd for p in paths):
            found.append(f"process {pid}: {cmd.strip()}")
    return found


def reap_children(timeout=10.0):
    """Wait for every remaining child (after all helpers were stopped); SIGKILL what
    is still running at the deadline. Returns how many were reaped.

    Not a subreaper on purpose: the hook's detached netlink-closing child
    (NF_DETACH_CLOSE) is reparented to init as in production, instead of piling up
    here as zombies that close's /proc scan would then have to read."""
    import signal
    reaped = 0
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid:
            reaped += 1
            continue
        if time.monotonic() > deadline:
            for child in _children():
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
        time.sleep(0.01)


def _children():
    me = os.getpid()
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if int(handle.read().rsplit(")", 1)[1].split()[1]) == me:
                    out.append(int(pid))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return out


def remove_cgroup(path):
    remove_cgroup_tree(path)
