"""Throwaway network namespaces for tests that touch netfilter.

A namespace is held open by an `unshare -n` child; commands enter it with
`nsenter --net=/proc/PID/ns/net`, which (unlike `ip netns exec`) keeps the host's
/sys, and so the real cgroup2 mount, visible. Leaving the context kills the holder,
and the namespace (with every nftables table in it) disappears with it.
"""

import os
import subprocess
import time


class NetNS:
    def __init__(self):
        self._holder = None

    def __enter__(self):
        self._holder = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", "ip link set lo up && exec sleep infinity"],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        host_ns = os.readlink("/proc/self/ns/net")
        while time.monotonic() < deadline:
            try:
                if os.readlink(self.path) != host_ns and self._lo_up():
                    return self
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        self.__exit__(None, None, None)
        raise RuntimeError("network namespace holder did not start")

    def _lo_up(self):
        out = subprocess.run(self.wrap(["ip", "-o", "link", "show", "lo"]),
                             capture_output=True, text=True)
        return "UP" in out.stdout or "UNKNOWN" in out.stdout and "LOWER_UP" in out.stdout

    def __exit__(self, *exc):
        if self._holder is not None:
            self._holder.kill()
            self._holder.wait()
            self._holder = None

    @property
    def pid(self):
        return self._holder.pid

    @property
    def path(self):
        return f"/proc/{self._holder.pid}/ns/net"

    def wrap(self, argv):
        """argv run inside this namespace."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, argv, check=True, **kw):
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.run(self.wrap(argv), **kw)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{argv} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def popen(self, argv, **kw):
        return subprocess.Popen(self.wrap(argv), **kw)

    def nft(self, *args, check=True):
        return self.run(["nft", *args], check=check)
