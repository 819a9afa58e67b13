"""A real OpenSSH server inside a test network namespace (root only).

    with pam_service(session_lines=[...]) as svc, \\
         sshd_server(netns, svc.name) as server:
        server.add_key(alice)                         # key auth for this user
        r = server.ssh(alice, "id -un")               # CompletedProcess
        with server.ssh_popen(alice, "sleep 30") as p: ...   # a live session
        with server.forward(alice, 127.0.0.1, 7) as lport: ...  # ssh -N -L

The server listens on 127.0.0.1:<port> in `netns` only, with its own sshd_config, host
key and AuthorizedKeysFile under a root-owned 0755 directory in /run (StrictModes
refuses key files under world-writable /tmp). It runs `sshd -D -e` through a symlink
named after `service_name`: sshd uses its program name as PAM service name, so logins
run /etc/pam.d/<service_name>. On exit every process of the server (listener,
per-connection monitors and their children) is killed and the directory removed.

Also here: `free_port(netns)`, `wait_listening(netns, port)`, `echo_server(netns)` and
`tcp_exchange(netns, port, data)` for traffic tests inside a namespace.
"""

import os
import pwd
import shlex
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

from .pamsvc import root_tempdir, wait_until

__all__ = ["SshServer", "sshd_server", "free_port", "wait_listening", "echo_server",
           "tcp_exchange", "descendants", "SSHD"]

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = "/run/sshd"
PRIVSEP_USER = "sshd"

_lock = threading.Lock()
_refs = {"count": 0, "made_dir": False, "made_user": False}


def _name(user):
    return getattr(user, "name", user)


def _acquire_privsep():
    with _lock:
        if _refs["count"] == 0:
            if not os.path.isdir(PRIVSEP_DIR):
                os.mkdir(PRIVSEP_DIR, 0o755)
                _refs["made_dir"] = True
            try:
                pwd.getpwnam(PRIVSEP_USER)
            except KeyError:
                subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir",
                                PRIVSEP_DIR, "--shell", "/usr/sbin/nologin", PRIVSEP_USER],
                               check=True, capture_output=True)
                _refs["made_user"] = True
        _refs["count"] += 1


def _release_privsep():
    with _lock:
        _refs["count"] -= 1
        if _refs["count"] > 0:
            return
        if _refs["made_user"]:
            subprocess.run(["userdel", PRIVSEP_USER], capture_output=True)
            _refs["made_user"] = False
        if _refs["made_dir"]:
            try:
                os.rmdir(PRIVSEP_DIR)
            except OSError:
                pass
            _refs["made_dir"] = False


def descendants(pid):
    """pids of all descendants of `pid` (from /proc, one snapshot)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _py_in_netns(netns, code, *args, timeout=30, input=None):
    return subprocess.run(netns.wrap([sys.executable, "-I", "-S", "-c", code, *map(str, args)]),
                          capture_output=True, text=True, timeout=timeout, input=input)


def free_port(netns):
    """A TCP port free on 127.0.0.1 in `netns` (bound then released)."""
    out = _py_in_netns(netns, "import socket; s = socket.socket(); "
                              "s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    if out.returncode != 0:
        raise RuntimeError(f"free_port: {out.stderr}")
    return int(out.stdout)


def listening(netns, port):
    out = netns.run(["ss", "-Htln", f"sport = :{port}"], check=False)
    return out.returncode == 0 and bool(out.stdout.strip())


def wait_listening(netns, port, timeout=10.0, proc=None):
    """Wait until something listens on TCP `port` in `netns`; with `proc`, fail early if
    that process exits."""
    def ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited {proc.returncode} before listening on {port}")
        return listening(netns, port)
    wait_until(ready, timeout=timeout, interval=0.05, what=f"a listener on port {port}")


_ECHO = r"""
import socket, sys, threading
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(64)
def serve(c):
    with c:
        while True:
            data = c.recv(65536)
            if not data:
                return
            c.sendall(data)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

_EXCHANGE = r"""
import socket, sys
data = sys.stdin.buffer.read()
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
s.sendall(data)
s.shutdown(socket.SHUT_WR)
got = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
sys.stdout.buffer.write(got)
"""


@contextmanager
def echo_server(netns, port=None):
    """A TCP echo server on 127.0.0.1:`port` (free port when None) in `netns`, running as
    root; yields the port."""
    port = port or free_port(netns)
    proc = netns.popen([sys.executable, "-I", "-S", "-c", _ECHO, str(port)],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    try:
        wait_listening(netns, port, proc=proc)
        yield port
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()


def tcp_exchange(netns, port, data=b"ping\n", host="127.0.0.1", timeout=5.0, as_user=None):
    """Connect to host:port from inside `netns` (as root, or as `as_user` via setpriv),
    send `data`, half-close, return everything received (bytes). Raises
    ConnectionError when the connection fails."""
    argv = [sys.executable, "-I", "-S", "-c", _EXCHANGE, host, str(port), str(timeout)]
    if as_user is not None:
        pw = pwd.getpwnam(_name(as_user))
        argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups",
                "--", *argv]
    proc = subprocess.run(netns.wrap(argv), input=data, capture_output=True,
                          timeout=timeout + 10)
    if proc.returncode != 0:
        raise ConnectionError(proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
                              or f"exit {proc.returncode}")
    return proc.stdout


class SshServer:
    def __init__(self, netns, service_name, directory, port):
        self.netns = netns
        self.service_name = service_name
        self.dir = directory
        self.port = port
        self.keys_dir = os.path.join(directory, "keys")          # AuthorizedKeysFile %u
        self.client_dir = os.path.join(directory, "client")      # private keys, root 0700
        self.config = os.path.join(directory, "sshd_config")
        self.program = os.path.join(directory, service_name)     # symlink -> sshd
        self.log_path = os.path.join(directory, "sshd.log")
        self.proc = None
        self._log = None

    # -- setup -----------------------------------------------------------------------
    def _write_config(self, extra_config):
        os.mkdir(self.keys_dir, 0o755)
        os.mkdir(self.client_dir, 0o700)
        host_key = os.path.join(self.dir, "ssh_host_ed25519_key")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nftest-host",
                        "-f", host_key], check=True, capture_output=True)
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {os.path.join(self.dir, 'sshd.pid')}",
            "UsePAM yes",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            f"AuthorizedKeysFile {self.keys_dir}/%u",
            "StrictModes yes",
            "PermitRootLogin no",
            "AllowTcpForwarding yes",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "MaxStartups 100:30:200",
            "MaxSessions 50",
            "LogLevel VERBOSE",
            "Subsystem sftp internal-sftp",
            *extra_config,
        ]
        with open(self.config, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.config, 0o644)
        os.symlink(SSHD, self.program)
        check = subprocess.run([self.program, "-t", "-f", self.config],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd -t rejected the config: {check.stderr}")

    def _start(self):
        self._log = open(self.log_path, "wb")
        # nsenter execs (no --fork): the Popen pid is sshd itself, argv[0] the symlink
        self.proc = self.netns.popen([self.program, "-D", "-e", "-f", self.config],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        try:
            wait_listening(self.netns, self.port, timeout=15, proc=self.proc)
        except Exception as err:
            raise RuntimeError(f"sshd did not start: {err}\n{self.log()}") from err

    def stop(self):
        if self.proc is not None:
            # per-connection monitors and user processes first, then the listener
            for _ in range(50):
                kids = descendants(self.proc.pid)
                if not kids:
                    break
                for pid in kids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                time.sleep(0.02)
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self):
        """sshd's log so far (-e: everything goes to its stderr)."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    # -- clients ---------------------------------------------------------------------
    def add_key(self, user):
        """Generate an ed25519 client key for `user` and authorize it; returns the
        private key path. Idempotent per user."""
        name = _name(user)
        key = os.path.join(self.client_dir, name)
        if not os.path.exists(key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                            f"nftest-{name}", "-f", key], check=True, capture_output=True)
        with open(f"{key}.pub") as f:
            pub = f.read()
        auth = os.path.join(self.keys_dir, name)
        with open(auth, "a") as f:
            f.write(pub)
        os.chown(auth, 0, 0)
        os.chmod(auth, 0o644)
        return key

    def ssh_argv(self, user, cmd=None, extra_args=()):
        name = _name(user)
        key = os.path.join(self.client_dir, name)
        if not os.path.exists(key):
            raise RuntimeError(f"no key for {name}: call add_key({name!r}) first")
        argv = ["ssh", "-F", "/dev/null", "-i", key,
                "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", "ServerAliveInterval=5",
                "-p", str(self.port), *extra_args, f"{name}@127.0.0.1"]
        if cmd is not None:
            argv.append(cmd if isinstance(cmd, str) else shlex.join(cmd))
        return self.netns.wrap(argv)

    def ssh(self, user, cmd, extra_args=(), timeout=60, input=None):
        """Run `cmd` (a shell command string, or an argv list) as `user` over ssh from
        inside the namespace; returns CompletedProcess (text). Exit 255 is ssh's own
        failure (connection, auth, or the session refused by PAM)."""
        return subprocess.run(self.ssh_argv(user, cmd, extra_args), capture_output=True,
                              text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)

    @contextmanager
    def ssh_popen(self, user, cmd=None, extra_args=(), **popen_kw):
        """A running ssh client (Popen) for a session kept open while the block runs;
        killed on exit (the server then closes the session by itself)."""
        popen_kw.setdefault("stdin", subprocess.PIPE)
        popen_kw.setdefault("stdout", subprocess.PIPE)
        popen_kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(self.ssh_argv(user, cmd, extra_args), **popen_kw)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    f.close()

    @contextmanager
    def forward(self, user, remote_port, remote_host="127.0.0.1", local_port=None,
                timeout=15):
        """`ssh -N -L local:remote_host:remote_port` as `user`; yields the local port
        (in the namespace) once it listens."""
        local_port = local_port or free_port(self.netns)
        args = ["-N", "-o", "ExitOnForwardFailure=yes",
                "-L", f"127.0.0.1:{local_port}:{remote_host}:{remote_port}"]
        with self.ssh_popen(user, None, args, stdin=subprocess.DEVNULL) as proc:
            try:
                wait_listening(self.netns, local_port, timeout=timeout, proc=proc)
            except Exception as err:
                raise RuntimeError(f"ssh -L did not come up: {err}\n{self.log()}") from err
            yield local_port

    def session_pids(self):
        """Processes of the server other than the listener (monitors, sessions)."""
        return descendants(self.proc.pid) if self.proc else []


@contextmanager
def sshd_server(netns, service_name, port=0, extra_config=()):
    """Run sshd in `netns` on 127.0.0.1:`port` (a free one when 0) with PAM service
    `service_name` (/etc/pam.d/<service_name> should exist before anyone logs in).
    `extra_config`: more sshd_config lines. Yields an SshServer."""
    if "/" in service_name or not service_name:
        raise ValueError(f"bad service name {service_name!r}")
    _acquire_privsep()
    try:
        with root_tempdir("nftest-sshd-") as d:
            server = SshServer(netns, service_name, d, port or free_port(netns))
            try:
                server._write_config(list(extra_config))
                server._start()
                yield server
            finally:
                server.stop()
    finally:
        _release_privsep()
