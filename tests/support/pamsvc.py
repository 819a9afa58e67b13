"""PAM service files and PAM-side probes for end-to-end tests (root only).

- `pam_service(name, session_lines)`: a throwaway /etc/pam.d/<name> (auth and account
  pam_permit, then the given session lines); removed on exit; never overwrites.
- `pam_stack_text(session_lines, base=None)`: the text of such a stack, or of an existing
  file (e.g. /etc/pam.d/su-l) with session lines appended: for `login.su_login(...,
  pam_stack=...)`, which mounts it over su's fixed service file in a private mount
  namespace instead of editing the host's file.
- `backed_up(path)`: lets a test edit an existing file, restoring its exact bytes, mode
  and owner (or its absence) on exit.
- `env_recorder()`: a script for `pam_exec` that appends its environment (the PAM_*
  variables), its uid/euid, parent pid and network namespace to a log; `.records()`
  parses it back.
- `root_tempdir(prefix)`: a root-owned 0755 directory under /run (not world-writable
  /tmp, so sshd's StrictModes accepts files under it); removed on exit.
"""

import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from contextlib import contextmanager

__all__ = ["pam_service", "pam_stack_text", "backed_up", "env_recorder", "EnvRecorder",
           "root_tempdir", "unique_service_name", "wait_until", "PAM_DIR"]

PAM_DIR = "/etc/pam.d"
_SERVICE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def wait_until(predicate, timeout=10.0, interval=0.02, what="condition"):
    """Poll `predicate()` until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def root_tempdir(prefix="nftest-"):
    os.makedirs("/run", exist_ok=True)
    path = tempfile.mkdtemp(prefix=prefix, dir="/run")
    try:
        os.chown(path, 0, 0)
        os.chmod(path, 0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def unique_service_name(prefix="nftsvc"):
    return f"{prefix}-{secrets.token_hex(4)}"


def _lines(session_lines):
    if isinstance(session_lines, str):
        session_lines = [session_lines]
    out = []
    for line in session_lines:
        line = line.strip()
        if not line:
            continue
        if "\n" in line:
            raise ValueError(f"one PAM line per item: {line!r}")
        if not line.startswith("session"):
            line = f"session {line}"
        out.append(line)
    return out


def pam_stack_text(session_lines=(), base=None):
    """A complete PAM stack. Without `base`: auth/account pam_permit, password pam_deny,
    then `session_lines` (the word "session" is added when missing). With `base` (path
    of an existing PAM file): that file's text with `session_lines` appended."""
    if base is not None:
        with open(base) as f:
            text = f.read()
        if text and not text.endswith("\n"):
            text += "\n"
        return text + "".join(f"{line}\n" for line in _lines(session_lines))
    head = ["# written by netfence tests; removed when the test ends",
            "auth     required pam_permit.so",
            "account  required pam_permit.so",
            "password required pam_deny.so"]
    return "\n".join(head + _lines(session_lines)) + "\n"


class PamService:
    def __init__(self, name, path, text):
        self.name = name
        self.path = path
        self.text = text

    def __str__(self):
        return self.name

    def __repr__(self):
        return f"PamService({self.name!r})"


@contextmanager
def pam_service(name=None, session_lines=(), base=None):
    """Write /etc/pam.d/<name> (a fresh unique name when None); yields a PamService
    (.name, .path, .text). Refuses to touch an existing file; removes it on exit."""
    if name is None:
        name = unique_service_name()
    if not _SERVICE_RE.match(name):
        raise ValueError(f"bad PAM service name: {name!r}")
    path = os.path.join(PAM_DIR, name)
    text = pam_stack_text(session_lines, base=base)
    # O_EXCL: fail rather than overwrite, also against a concurrent writer
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        try:
            os.write(fd, text.encode())
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
        yield PamService(name, path, text)
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@contextmanager
def backed_up(path):
    """Restore `path` on exit to the exact bytes, mode and owner it has now (or remove
    it if it does not exist now). Restoring writes a temp file and renames it over."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file")
    data = None
    if st is not None:
        with open(path, "rb") as f:
            data = f.read()
    try:
        yield path
    finally:
        if st is None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        else:
            directory = os.path.dirname(os.path.abspath(path))
            fd, tmp = tempfile.mkstemp(prefix=".nftest-restore-", dir=directory)
            try:
                os.write(fd, data)
                os.fchown(fd, st.st_uid, st.st_gid)
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
                os.close(fd)
                fd = None
                os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.replace(tmp, path)
            finally:
                if fd is not None:
                    os.close(fd)
                if os.path.exists(tmp):
                    os.unlink(tmp)


class EnvRecorder:
    """A pam_exec program that logs what it sees; one record per run.

    Each record is a dict of the program's environment (PAM_TYPE, PAM_USER,
    PAM_SERVICE, PAM_RHOST, PAM_TTY, PAM_RUSER, and any PAM env), plus
    ``_UID``/``_EUID`` (real/effective uid), ``_PPID`` (the PAM application), ``_NETNS``
    (readlink of /proc/self/ns/net) and ``_CGROUP`` (its cgroup v2 path)."""

    def __init__(self, directory, exit_code=0, stdout_text=None):
        self.directory = directory
        self.path = os.path.join(directory, "record-env")
        self.log = os.path.join(directory, "env.log")
        # pam_exec gives no PATH: absolute paths only
        body = [
            "#!/bin/sh",
            "{",
            "  echo '--- record'",
            "  /usr/bin/env",
            "  echo \"_UID=$(/usr/bin/id -ru)\"",
            "  echo \"_EUID=$(/usr/bin/id -u)\"",
            "  echo \"_PPID=$PPID\"",
            "  echo \"_NETNS=$(/usr/bin/readlink /proc/self/ns/net)\"",
            "  echo \"_CGROUP=$(/usr/bin/sed -n 's/^0:://p' /proc/self/cgroup)\"",
            "  echo '--- end'",
            f"}} >> {self.log}",
        ]
        if stdout_text is not None:
            body.append(f"echo '{stdout_text}'")
        body.append(f"exit {int(exit_code)}")
        with open(self.path, "w") as f:
            f.write("\n".join(body) + "\n")
        os.chmod(self.path, 0o755)

    def line(self, control="required", options="seteuid quiet"):
        """The PAM session line that runs this recorder."""
        return f"session {control} pam_exec.so {options} {self.path}".replace("  ", " ")

    def records(self):
        try:
            with open(self.log) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        out = []
        for chunk in text.split("--- record\n")[1:]:
            if "--- end" not in chunk:
                continue          # still being written
            rec = {}
            for line in chunk.split("--- end")[0].splitlines():
                key, sep, value = line.partition("=")
                if sep:
                    rec[key] = value
            out.append(rec)
        return out

    def of_type(self, pam_type):
        return [r for r in self.records() if r.get("PAM_TYPE") == pam_type]

    def wait_for(self, pam_type, count=1, timeout=15.0):
        """Wait until `count` records of PAM_TYPE `pam_type` exist; returns them."""
        return wait_until(lambda: (lambda r: r if len(r) >= count else None)(
            self.of_type(pam_type)), timeout=timeout, what=f"{count} {pam_type} record(s)")


@contextmanager
def env_recorder(exit_code=0, stdout_text=None):
    """Yields an EnvRecorder in its own root-owned directory under /run.
    `exit_code`: what the program exits with (non-zero makes a `required` line fail).
    `stdout_text`: a line printed on stdout (shown by pam_exec's `stdout` option)."""
    with root_tempdir("nftest-pamrec-") as d:
        yield EnvRecorder(d, exit_code=exit_code, stdout_text=stdout_text)
