"""A private netfence installation for one test: directories, CLI, cgroups, probes.

Policy files must sit in root-owned directories that nobody else can write (the
parser refuses others, like sudo), so each test gets /run/nftest-<hex>/ instead of a
pytest tmp_path under the world-writable /tmp.
"""

import os
import secrets
import shutil
import subprocess
import sys
import time

from netfence.cgroups import cgroup2_mount

SUPPORT = os.path.dirname(os.path.abspath(__file__))


class NfEnv:
    def __init__(self, netns):
        self.netns = netns
        self.tag = secrets.token_hex(4)
        self.root = f"/run/nftest-{self.tag}"
        self.config_dir = f"{self.root}/etc"
        self.state_dir = f"{self.root}/state"
        self.run_dir = f"{self.root}/run"
        self.cgroup_base = f"nftest-{self.tag}"
        self.cg_root = os.path.join(cgroup2_mount(), self.cgroup_base)
        self._procs = []

    def __enter__(self):
        for path in (self.root, self.config_dir, f"{self.config_dir}/netfence.d",
                     self.state_dir, self.run_dir):
            os.makedirs(path, mode=0o755)
            os.chmod(path, 0o755)
        return self

    def __exit__(self, *exc):
        for proc in self._procs:
            proc.kill()
            proc.wait()
        remove_cgroup_tree(self.cg_root)
        shutil.rmtree(self.root, ignore_errors=True)

    def write_policy(self, text, name="netfence.toml"):
        """Write a policy file; `cgroup_base` is pointed at this test's own subtree."""
        path = os.path.join(self.config_dir, name)
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, 0o644)
        return path

    def cli_argv(self, *args):
        return [sys.executable, "-m", "netfence.cli", "--config-dir", self.config_dir,
                "--state-dir", self.state_dir, "--run-dir", self.run_dir, *args]

    def cli(self, *args, check=True):
        return self.netns.run(self.cli_argv(*args), check=check)

    # ---- cgroups and processes ---------------------------------------------------
    def make_cgroup(self, relative):
        path = os.path.join(self.cg_root, relative)
        os.makedirs(path, exist_ok=True)
        return path, os.stat(path).st_ino

    def spawn(self, argv, uid=None, cgroup=None):
        """Start a long-running process in the namespace, optionally as uid, in cgroup."""
        argv = list(argv)
        if uid is not None:
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
        if cgroup is not None:
            argv = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
        proc = self.netns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True)
        self._procs.append(proc)
        return proc

    def echo_server(self, specs, uid=None, cgroup=None):
        proc = self.spawn([sys.executable, os.path.join(SUPPORT, "echo.py"), *specs],
                          uid=uid, cgroup=cgroup)
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise AssertionError(f"echo server failed: {line} {proc.stderr.read()}")
        return proc

    def probe(self, proto, host, port, uid=None, timeout=1.0, cgroup=None, netns=None):
        argv = [sys.executable, os.path.join(SUPPORT, "probe.py"), proto, host, str(port),
                str(timeout)]
        if uid is not None:
            argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
        if cgroup is not None:
            argv = ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
        out = (netns or self.netns).run(argv)
        return out.stdout.strip()


def remove_cgroup_tree(path):
    """rmdir a cgroup subtree bottom-up, first moving any process left to the root."""
    if not os.path.isdir(path):
        return
    root = cgroup2_mount()
    for dirpath, dirnames, _ in sorted(os.walk(path), key=lambda w: -w[0].count("/")):
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as handle:
                pids = handle.read().split()
        except FileNotFoundError:
            continue
        for pid in pids:
            try:
                with open(os.path.join(root, "cgroup.procs"), "w") as handle:
                    handle.write(pid)
            except OSError:
                pass
        for _ in range(50):
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
