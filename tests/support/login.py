"""Real logins for end-to-end tests (root only): `su` and python-pam sessions.

    su_login(user, "id -un", service="su-l", netns=ns, pam_stack=text)
        -> CompletedProcess (text, stdout/stderr captured)

    with PamSession("nftsvc-1234", user, rhost="203.0.113.9", tty="ssh", netns=ns) as s:
        s.pid            # the process that ran pam_open_session (the "PAM application")
        ...              # the session is open here
    # closed (pam_close_session + pam_end) on exit

`su` and `runuser` use fixed PAM service names (su, su-l, runuser, runuser-l). To run
them with a test stack without touching the host's /etc/pam.d, pass `pam_stack` (the
text of a PAM file, see pamsvc.pam_stack_text): the command then runs in a private
mount namespace where that text is bind-mounted over /etc/pam.d/<service>. Nothing is
changed for the rest of the machine, and nothing is left behind.
"""

import os
import select
import subprocess
import sys
import tempfile
import time

from .pamsvc import root_tempdir, wait_until

__all__ = ["su_login", "su_command", "PamSession", "PamSessionError", "wait_until",
           "PAM_SUCCESS", "PAM_SYSTEM_ERR", "PAM_SESSION_ERR"]

PAM_SUCCESS = 0
PAM_SYSTEM_ERR = 4
PAM_SESSION_ERR = 14

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "login_driver.py")

_SU_ARGV = {
    "su-l": ["su", "-"],
    "su": ["su"],
    "runuser-l": ["runuser", "-l"],
    "runuser": ["runuser"],
}


def _name(user):
    return getattr(user, "name", user)


def su_command(user, cmd, service="su-l"):
    """argv of the login program whose PAM service is `service`."""
    try:
        head = _SU_ARGV[service]
    except KeyError:
        raise ValueError(f"su/runuser have the fixed services {sorted(_SU_ARGV)}; "
                         f"got {service!r} (use PamSession or sshd for other names)") from None
    return [*head, _name(user), "-c", cmd]


def _with_private_pam_file(service, stack_path, argv):
    """argv that runs `argv` in a private mount namespace with `stack_path` mounted over
    /etc/pam.d/<service> (which must exist: a bind mount needs a target)."""
    target = f"/etc/pam.d/{service}"
    if not os.path.isfile(target):
        raise FileNotFoundError(f"{target} must exist to be replaced in a mount namespace")
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", script, "sh", stack_path, target, *argv]


def su_login(user, cmd, service="su-l", netns=None, pam_stack=None, timeout=60,
             input=None, env=None):
    """Run `cmd` through a real login: ``su - USER -c CMD`` (service su-l), ``su USER -c``
    (su), ``runuser -l`` (runuser-l) or ``runuser`` (runuser). Inside `netns` (a NetNS)
    when given, via nsenter. `pam_stack`: PAM file text to use for the service instead of
    the host's (private mount namespace, host untouched). Returns CompletedProcess."""
    argv = su_command(user, cmd, service)
    with root_tempdir("nftest-su-") as d:
        if pam_stack is not None:
            stack_path = os.path.join(d, service)
            with open(stack_path, "w") as f:
                f.write(pam_stack)
            os.chmod(stack_path, 0o644)
            argv = _with_private_pam_file(service, stack_path, argv)
        if netns is not None:
            argv = netns.wrap(argv)
        run_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        if env:
            run_env.update(env)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              input=input, stdin=None if input is not None else subprocess.DEVNULL,
                              env=run_env, cwd="/")


class PamSessionError(RuntimeError):
    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code


class PamSession:
    """One PAM session driven by python-pam in a child process (support/login_driver.py),
    inside `netns` when given. open() returns the pam_open_session code (raising
    PamSessionError on failure when check=True); close() returns pam_close_session's.

    Attributes after open(): pid (the driver process, i.e. the PAM application that
    pam_exec programs see as their parent), code, reason, messages (conversation
    messages as (style, text)), opened."""

    def __init__(self, service, user, rhost="", tty="", ruser="", netns=None,
                 python=None, timeout=30):
        self.service = str(service)
        self.user = _name(user)
        self.rhost, self.tty, self.ruser = rhost, tty, ruser
        self.netns = netns
        self.python = python or sys.executable
        self.timeout = timeout
        self.proc = None
        self.pid = None
        self.code = None
        self.reason = None
        self.opened = False
        self.messages = []
        self.stderr_text = ""

    def _argv(self):
        argv = [self.python, DRIVER, self.service, self.user]
        for opt, value in (("--rhost", self.rhost), ("--tty", self.tty),
                           ("--ruser", self.ruser)):
            if value:
                argv += [opt, value]
        return self.netns.wrap(argv) if self.netns is not None else argv

    def _readline(self, deadline):
        """Next protocol line; conversation messages are collected on the way."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line, self._buf = self._buf[:nl].decode(errors="replace"), self._buf[nl + 1:]
                if line.startswith("msg "):
                    _, style, text = (line.split(" ", 2) + [""])[:3]
                    self.messages.append((int(style), text.replace("\\n", "\n")))
                    continue
                return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PamSessionError(f"PAM driver did not answer in {self.timeout}s")
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if chunk:
                self._buf += chunk
                continue
            self.proc.wait(timeout=5)
            self.stderr_text = self._stderr()
            rc = self.proc.returncode
            raise PamSessionError(
                f"PAM driver exited {rc} without answering"
                f"{f' (killed by signal {-rc})' if rc < 0 else ''}\nstderr: {self.stderr_text}")

    def _send(self, command):
        os.write(self.proc.stdin.fileno(), f"{command}\n".encode())

    def _stderr(self):
        self._errfile.seek(0)
        return self._errfile.read().decode(errors="replace")

    def open(self, check=True):
        if self.proc is not None:
            raise PamSessionError("already opened")
        self._errfile = tempfile.TemporaryFile()
        self._buf = b""
        self.proc = subprocess.Popen(
            self._argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._errfile, bufsize=0, cwd="/",
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                 **({"PYTHONPATH": os.environ["PYTHONPATH"]}
                    if "PYTHONPATH" in os.environ else {})})
        try:
            line = self._readline(time.monotonic() + self.timeout)
        except BaseException:
            self._kill()
            raise
        word, code, pid, *reason = line.split(" ", 3) + [""]
        if word != "open":
            self._kill()
            raise PamSessionError(f"unexpected answer from PAM driver: {line!r}")
        self.code, self.pid, self.reason = int(code), int(pid), (reason[0] if reason else "")
        self.opened = self.code == PAM_SUCCESS
        if not self.opened:
            self.proc.wait(timeout=10)
            self.stderr_text = self._stderr()
            if check:
                raise PamSessionError(
                    f"pam_open_session({self.service}, {self.user}) = {self.code} "
                    f"({self.reason})", code=self.code)
        return self.code

    def env(self):
        """The PAM environment of the open session (pam_getenvlist)."""
        self._send("env")
        out = {}
        deadline = time.monotonic() + self.timeout
        while True:
            line = self._readline(deadline)
            if line == "env-end":
                return out
            key, _, value = line[len("env "):].partition("=")
            out[key] = value

    def close(self, check=True):
        """pam_close_session, then pam_end; returns the close code (None if the session
        was not open)."""
        if not self.opened:
            self._kill()
            return None
        self.opened = False
        self._send("close")
        try:
            line = self._readline(time.monotonic() + self.timeout)
        finally:
            try:
                self.proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        word, code, *reason = line.split(" ", 2) + [""]
        if word != "closed":
            raise PamSessionError(f"unexpected answer from PAM driver: {line!r}")
        self.code, self.reason = int(code), reason[0] if reason else ""
        self.stderr_text = self._stderr()
        if check and self.code != PAM_SUCCESS:
            raise PamSessionError(f"pam_close_session = {self.code} ({self.reason})",
                                  code=self.code)
        return self.code

    def kill(self):
        """SIGKILL the PAM application with the session still open (no close_session):
        what happens when sshd's monitor is killed."""
        self.opened = False
        self._kill()

    def _kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            for f in (self.proc.stdin, self.proc.stdout):
                try:
                    f.close()
                except (OSError, ValueError):
                    pass

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, exc_type, *rest):
        try:
            if self.opened:
                # do not hide the test's own exception behind a close failure
                self.close(check=exc_type is None)
        finally:
            self._kill()
            if getattr(self, "_errfile", None) is not None:
                self._errfile.close()
                self._errfile = None
