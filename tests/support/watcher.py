"""`netfence watch` run in a test's network namespace, its stderr in a file."""

import os
import signal
import subprocess

from support.pamsvc import wait_until


# the fenced uid (nobody) and its policy: tcp to port 80 rejected
UID = 65534
POLICY = """
[settings]
cgroup_base = "{base}"

[profile.web]
egress = [ {{ action = "reject", proto = "tcp", ports = [80] }} ]

[[rule]]
users = ["*"]
profiles = ["web"]
scope = "user"
"""

# probes tcp 127.0.0.1:80 as the fenced uid every 10 ms (or argv[1] s), one
# "epoch result" line each
PROBER = r"""
import socket, sys, time
while True:
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", 80)); res = "ok"
    except ConnectionRefusedError:
        res = "refused"
    except OSError as err:
        res = "error"
    s.close()
    print(f"{time.time():.4f} {res}", flush=True)
    time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0.01)
"""


class Watcher:
    """`netfence watch` running in the test's namespace; its stderr in a file."""

    def __init__(self, nf, gc_interval=600, wrap=None):
        self.nf, self.gc_interval = nf, gc_interval
        # wrap: argv before watch's own (default NF_WATCH_WRAP, e.g. "setpriv
        # --bounding-set=-all,+net_admin --inh-caps=-all --": the unit's capabilities)
        self.wrap = os.environ.get("NF_WATCH_WRAP", "").split() if wrap is None else wrap
        self.log_path = f"{nf.root}/watch.log"
        self.proc = None

    def start(self):
        env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
        gcs = self.log().count("event=gc")
        with open(self.log_path, "ab") as log:
            self.proc = self.nf.netns.popen(
                self.wrap + self.nf.cli_argv("watch", "--gc-interval", str(self.gc_interval)),
                stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, env=env)
        wait_until(lambda: self.log().count("event=gc") > gcs, timeout=15,
                   interval=0.02, what="watch's first gc")
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            code = self.proc.wait(timeout=10)
            self.proc = None
            return code
        return None

    def log(self):
        try:
            with open(self.log_path, errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def wait_line(self, event, count=1, timeout=2):
        try:
            wait_until(lambda: len(self.lines(event)) >= count, timeout=timeout,
                       interval=0.02, what=f"event={event}")
        except TimeoutError as err:
            raise AssertionError(f"{err}\n{self.log()}") from None

    def lines(self, event):
        return [l for l in self.log().splitlines() if f" event={event}" in l]

    def counts(self):
        """The counters of the stop line (checks, repairs, reconciles): stop first."""
        stop = self.lines("stop")[-1]
        return {k: int(v) for k, v in (f.split("=", 1) for f in stop.split()[2:])
                if k in ("checks", "repairs", "reconciles")}

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")
