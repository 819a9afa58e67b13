"""Snapshot format versioning, hook side (formats.py, docs/architecture.md "File
formats"): a hook reads exactly its own LOGIN number (login.marshal); any other is a StateError
naming both numbers and the fix, and on_error decides (deny: exit 1, allow: exit 0).

Both directions, with the hook run as pam_exec runs it (`python3 -I -S`, an
environment that ends with pam_exec's items and PAM_TYPE):
  - this hook meeting a snapshot of another format (the next one, and 0);
  - the hook of the previous release (commit 6937bdf, extracted with git archive)
    meeting a snapshot the current compiler wrote (LOGIN 2 since issue 9's time
    windows: it refuses per on_error) and one of the next format (the same).
The log line goes to a file standing in for /dev/kmsg (no syslog socket), not to the
host's log. PAM_USER is root, whom no wildcard rule matches: the hook reads the
snapshot, matches, and ends with result=none without touching the kernel.
"""

import marshal
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

import netfence
from netfence import compiler, formats, snapshot
from netfence.policy import parse_policy_text

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="the hook refuses a login.marshal that is not root's: only root can make one")

PREVIOUS_RELEASE = "6937bdf"
REPO = Path(__file__).resolve().parents[2]
POLICY = """\
[profile.web]
egress = [ { action = "reject", proto = "tcp", ports = [80] } ]

[[rule]]
users = ["*"]
profiles = ["web"]
time = "Mo-Fr 08:00-18:00"
"""

RUN_HOOK = """\
import sys
sys.path.insert(0, {src!r})
from netfence import {log_module} as log
log.SYSLOG_SOCKET, log.KMSG = {nowhere!r}, {kmsg!r}
from netfence.hook import run
run(sys.argv[1:])
"""


def current_snapshot(state_dir):
    """Write state_dir's snapshot as reload does, from the current compiler."""
    snap = compiler.compile_policy(parse_policy_text([("t.toml", POLICY)]))
    snapshot.stage(str(state_dir), snap).promote()
    return snap


def snapshot_of_format(state_dir, number, **settings):
    login = current_snapshot(state_dir)["login"]
    login = dict(login, format=number, settings=dict(login["settings"], **settings))
    path = state_dir / "login.marshal"
    path.write_bytes(marshal.dumps(login))
    path.chmod(0o644)


def run_hook(src, log_module, state_dir, tmp_path, *args):
    """(exit status, the hook's log lines) of one open_session."""
    kmsg = tmp_path / "kmsg"
    kmsg.write_bytes(b"")
    script = RUN_HOOK.format(src=str(src), log_module=log_module, kmsg=str(kmsg),
                             nowhere=str(tmp_path / "no-syslog"))
    env = {"PAM_SERVICE": "su-l", "PAM_USER": pwd.getpwuid(0).pw_name,
           "PAM_TTY": "/dev/pts/0", "PAM_TYPE": "open_session"}     # pam_exec's order
    out = subprocess.run([sys.executable, "-I", "-S", "-c", script,
                          f"state_dir={state_dir}", f"run_dir={tmp_path / 'run'}", *args],
                         env=env, capture_output=True, text=True, timeout=60)
    return out.returncode, kmsg.read_text().splitlines()


def this_hook(state_dir, tmp_path, *args):
    package_parent = os.path.dirname(os.path.dirname(netfence.__file__))
    return run_hook(package_parent, "hooklog", state_dir, tmp_path, *args)


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory):
    """The src/ directory of the previous release's hook."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e",
                       f"{PREVIOUS_RELEASE}^{{commit}}"], capture_output=True).returncode:
        pytest.skip(f"no git history with commit {PREVIOUS_RELEASE} at {REPO}")
    where = tmp_path_factory.mktemp("previous")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE,
                              "src/netfence"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where / "src"


def previous_hook(src, state_dir, tmp_path, *args):
    return run_hook(src, "hook", state_dir, tmp_path, *args)


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    path.mkdir()
    return path


def test_this_hook_reads_the_current_compilers_snapshot(state_dir, tmp_path):
    current_snapshot(state_dir)
    code, lines = this_hook(state_dir, tmp_path, "on_error=deny")
    assert code == 0, lines
    (line,) = lines
    assert "event=open" in line and "result=none" in line, line


@pytest.mark.parametrize("number", [formats.LOGIN + 1, 0])
@pytest.mark.parametrize("on_error,code,result", [("deny", 1, "refused"),
                                                  ("allow", 0, "allowed-after-error")])
def test_this_hook_meeting_another_format_follows_on_error(state_dir, tmp_path, number,
                                                           on_error, code, result):
    snapshot_of_format(state_dir, number)
    status, lines = this_hook(state_dir, tmp_path, f"on_error={on_error}")
    assert status == code, lines
    (line,) = lines
    assert f"result={result} on_error={on_error}" in line, line
    assert (f"login.marshal is format {number}, this hook reads format {formats.LOGIN}:"
            f" run `netfence reload` with the installed netfence") in line, line


def test_another_formats_own_on_error_is_not_read(state_dir, tmp_path):
    """Without on_error on the PAM line the policy's decides, but the settings of a
    snapshot this hook cannot read are not taken: deny."""
    snapshot_of_format(state_dir, formats.LOGIN + 1, on_error="allow")
    code, lines = this_hook(state_dir, tmp_path)
    assert code == 1 and "result=refused on_error=deny" in lines[0], lines


@pytest.mark.parametrize("on_error,code,result", [("deny", 1, "refused"),
                                                  ("allow", 0, "allowed-after-error")])
def test_previous_hook_meeting_the_current_compilers_snapshot_follows_on_error(
        previous_release, state_dir, tmp_path, on_error, code, result):
    """login.marshal is LOGIN format 2 since issue 9: a rule with `time` adds to the
    time-window sets only while its window is open, which the previous release's hook
    (format 1) would read as a permanent (or absent) profile. It refuses the snapshot
    and on_error decides until `netfence reload` runs with the installed version."""
    assert formats.LOGIN == 2
    current_snapshot(state_dir)
    status, lines = previous_hook(previous_release, state_dir, tmp_path,
                                  f"on_error={on_error}")
    assert status == code, lines
    (line,) = lines
    assert f"result={result} on_error={on_error}" in line, line
    assert "StateError" in line and "login.marshal: not a format 1 login part" in line, line


@pytest.mark.parametrize("on_error,code,result", [("deny", 1, "refused"),
                                                  ("allow", 0, "allowed-after-error")])
def test_previous_hook_meeting_the_next_format_follows_on_error(
        previous_release, state_dir, tmp_path, on_error, code, result):
    snapshot_of_format(state_dir, formats.LOGIN + 1)
    status, lines = previous_hook(previous_release, state_dir, tmp_path,
                                  f"on_error={on_error}")
    assert status == code, lines
    (line,) = lines
    assert f"result={result} on_error={on_error}" in line, line
    assert "StateError" in line and "login.marshal: not a format 1 login part" in line, line
