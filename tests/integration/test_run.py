"""`netfence run` end to end (issue 10): a process tree fenced by a cgroup of its own,
in a private network namespace with this test's own netfence dirs and cgroup base.

The tree's prober (DAEMON) double-forks and setsid()s like a classic daemon, then
probes two echo servers until a stop file appears: port A is rejected by the profile,
port B is not.
"""

import json
import os
import signal
import subprocess
import sys

import pytest

from netfence import records
from support.pamsvc import wait_until
from support.users import throwaway_group, throwaway_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, cgroups")

PORT_A, PORT_B = 7011, 7012
POLICY = """
[settings]
cgroup_base = "{base}"

[profile.fence]
egress = [ {{ action = "reject", proto = "tcp", ports = [{port}] }} ]

[profile.quiet]
ingress = [ {{ action = "deny" }} ]

[profile.lone]                  # named by no rule: still there for `run`
egress = [ {{ action = "reject", proto = "tcp", ports = [{port_b}] }} ]

[[rule]]
users = ["nobody"]
services = ["nf-test-none"]
profiles = ["fence", "quiet"]
"""

DAEMON = r"""
import os, socket, sys, time
out, stop, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
daemonize = os.environ.get("DAEMONIZE", "1") == "1"
if daemonize:
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)

def probe(port):
    with socket.socket() as sock:
        sock.settimeout(1)
        try:
            sock.connect(("127.0.0.1", port))
            sock.send(b"ping\n")
            return "ok" if sock.recv(16) == b"ping\n" else "garbled"
        except ConnectionRefusedError:
            return "refused"
        except OSError as err:
            return f"error{err.errno}"

n = 0
while not os.path.exists(stop):
    n += 1
    line = f"n={n} pid={os.getpid()} " + " ".join(f"{p}={probe(p)}" for p in ports)
    with open(out + ".tmp", "w") as handle:
        handle.write(line + "\n")
    os.rename(out + ".tmp", out)
    time.sleep(0.05)
"""


@pytest.fixture
def fenced(nf):
    """The nf installation with the policy applied, echo servers on A and B, the
    prober script and a world-writable directory for its output."""
    nf.write_policy(POLICY.format(base=nf.cgroup_base, port=PORT_A, port_b=PORT_B))
    nf.cli("reload")
    nf.echo_server([f"tcp:127.0.0.1:{PORT_A}", f"tcp:127.0.0.1:{PORT_B}"])
    nf.out = f"{nf.root}/out"
    os.mkdir(nf.out)
    os.chmod(nf.out, 0o1777)
    nf.daemon = f"{nf.root}/daemon.py"
    with open(nf.daemon, "w") as handle:
        handle.write(DAEMON)
    os.chmod(nf.daemon, 0o644)
    yield nf
    open(f"{nf.out}/stop", "w").close()


def daemon_argv(nf, *run_args, python="/usr/bin/python3"):
    return ["run", "--profile", "fence", *run_args, "--", python, nf.daemon,
            f"{nf.out}/probe", f"{nf.out}/stop", str(PORT_A), str(PORT_B)]


def latest(nf, after=0):
    """The prober's latest line as a dict, once its round count passed `after`."""
    def read():
        try:
            with open(f"{nf.out}/probe") as handle:
                fields = dict(f.split("=", 1) for f in handle.read().split())
        except (FileNotFoundError, ValueError):
            return None
        return fields if int(fields["n"]) > after else None
    return wait_until(read, timeout=10, what="a probe round")


def trees(nf):
    return json.loads(nf.cli("status", "--json").stdout)["trees"]


def scg_elements(nf, profile="fence"):
    text = nf.netns.nft("list", "set", "inet", "netfence", f"scg-{profile}").stdout
    return "elements" in text


def stop_daemon(nf):
    pid = int(latest(nf)["pid"])
    open(f"{nf.out}/stop", "w").close()
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), what="the prober's exit")


def test_daemonized_tree_is_fenced_until_its_last_process_exits(fenced):
    nf = fenced
    assert nf.cli(*daemon_argv(nf, "--name", "dmn")).returncode == 0   # the first exits
    line = latest(nf)
    assert (line[str(PORT_A)], line[str(PORT_B)]) == ("refused", "ok")
    (tree,) = trees(nf)
    assert tree["name"] == "dmn" and tree["profiles"] == ["fence"] and not tree["ended"]
    assert tree["cgroup"].startswith(f"/{nf.cgroup_base}/run/dmn-")
    text = nf.cli("status").stdout
    assert "fenced trees (netfence run): 1" in text and "name=dmn" in text
    with open(f"/proc/{line['pid']}/cgroup") as handle:
        assert f"0::{tree['cgroup']}\n" in handle.read()
    assert "0 ended run trees" not in nf.cli("gc").stdout    # alive: gc keeps it
    assert trees(nf) and scg_elements(nf)
    cgroup_dir = f"{nf.cg_root}/run/{tree['cgroup'].rsplit('/', 1)[1]}"
    stop_daemon(nf)
    assert "1 ended run trees closed" in nf.cli("gc").stdout
    assert trees(nf) == [] and not scg_elements(nf)
    assert not os.path.exists(cgroup_dir)
    assert records.list_runs(nf.run_dir) == []


def test_reload_keeps_a_tree_fenced(fenced):
    nf = fenced
    nf.cli(*daemon_argv(nf))
    assert latest(nf)[str(PORT_A)] == "refused"
    nf.cli("reload")
    n = int(latest(nf)["n"])
    assert latest(nf, after=n + 1)[str(PORT_A)] == "refused"
    assert trees(nf) and scg_elements(nf)
    stop_daemon(nf)
    nf.cli("gc")
    assert trees(nf) == []


def test_run_sigkilled_after_exec_leaves_the_tree_fenced(fenced):
    nf = fenced
    # no daemonizing: CMD (run after exec) is the prober's parent, a shell
    argv = daemon_argv(nf)
    cmd = argv[argv.index("--") + 1:]
    argv = argv[:argv.index("--")] + ["--name", "parent", "--", "/bin/sh", "-c",
                                        '"$@" & wait', "sh", *cmd]
    proc = nf.netns.popen(nf.cli_argv(*argv), env=dict(os.environ, DAEMONIZE="0"))
    try:
        assert latest(nf)[str(PORT_A)] == "refused"
        (tree,) = trees(nf)
        os.kill(tree["pid"], signal.SIGKILL)
        wait_until(lambda: not os.path.exists(f"/proc/{tree['pid']}/cgroup")
                   or "zombie" in open(f"/proc/{tree['pid']}/status").read(), what="kill")
        n = int(latest(nf)["n"])
        assert latest(nf, after=n + 1)[str(PORT_A)] == "refused"
        nf.cli("gc")
        assert trees(nf)                            # the prober still lives
        stop_daemon(nf)
        assert "1 ended run trees closed" in nf.cli("gc").stdout
        assert trees(nf) == [] and not scg_elements(nf)
    finally:
        proc.kill()
        proc.wait()


KILLED_AT_EXEC = """
import os, signal, sys
os.execve = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
from netfence.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_run_sigkilled_before_exec_is_cleaned_by_gc(fenced):
    nf = fenced
    argv = nf.cli_argv(*daemon_argv(nf))
    out = nf.netns.run([sys.executable, "-c", KILLED_AT_EXEC, *argv[3:]], check=False)
    assert out.returncode == -signal.SIGKILL
    (tree,) = trees(nf)
    assert tree["ended"] and "(ended: `netfence gc` removes it)" in nf.cli("status").stdout
    assert scg_elements(nf)
    assert "1 ended run trees closed" in nf.cli("gc").stdout
    assert trees(nf) == [] and not scg_elements(nf)
    assert not os.path.exists(f"{nf.cg_root}/run/{tree['cgroup'].rsplit('/', 1)[1]}")


def test_exit_status_and_signals_pass_through(fenced):
    nf = fenced
    assert nf.cli("run", "--profile", "fence", "--", "sh", "-c", "exit 7",
                  check=False).returncode == 7
    assert "1 ended run trees closed" in nf.cli("gc").stdout     # sh exited: tree gone
    proc = nf.netns.popen(nf.cli_argv("run", "--profile", "fence", "--name", "sl", "--",
                                      "sleep", "60"))
    try:
        (tree,) = wait_until(lambda: trees(nf), what="the tree")
        wait_until(lambda: open(f"/proc/{tree['pid']}/cmdline").read().startswith("sleep"),
                   what="the exec")
        os.kill(tree["pid"], signal.SIGTERM)
        assert proc.wait(timeout=10) in (-signal.SIGTERM, 128 + signal.SIGTERM)
    finally:
        proc.kill()
        proc.wait()
    nf.cli("gc")
    assert trees(nf) == []


def test_exec_failure_is_127_or_126_and_leaves_nothing(fenced):
    nf = fenced
    out = nf.cli("run", "--profile", "fence", "--", "no-such-command-nf", check=False)
    assert out.returncode == 127 and "no-such-command-nf" in out.stderr
    out = nf.cli("run", "--profile", "fence", "--", nf.daemon, check=False)   # not +x
    assert out.returncode == 126
    assert trees(nf) == [] and not scg_elements(nf)
    assert os.listdir(f"{nf.cg_root}/run") == [] if os.path.exists(f"{nf.cg_root}/run") \
        else True


def test_unknown_profile_or_account_exits_2(fenced):
    nf = fenced
    out = nf.cli("run", "--profile", "nope", "--", "true", check=False)
    assert out.returncode == 2
    assert "'nope'" in out.stderr and "fence, lone, quiet" in out.stderr
    out = nf.cli("run", "--profile", "fence", "--user", "no-such-user-nf", "--", "true",
                 check=False)
    assert out.returncode == 2 and "no-such-user-nf" in out.stderr
    out = nf.cli("run", "--profile", "fence", "--name", "a/b", "--", "true", check=False)
    assert out.returncode == 2
    assert trees(nf) == []


def test_cmd_inherits_only_the_callers_descriptors(fenced):
    nf = fenced
    show = ["sh", "-c", 'for f in /proc/$$/fd/*; do echo "${f##*/}"; done']
    out = nf.cli("run", "--profile", "fence", "--", *show)
    assert out.stdout == nf.netns.run(show).stdout      # no netlink socket, no lock
    nf.cli("gc")


SHOW_IDS = 'id -u; id -g; id -G; echo "$HOME $USER $LOGNAME $SHELL"'


def test_user_gets_uid_gid_groups_and_environment(fenced):
    nf = fenced
    with throwaway_group() as extra, throwaway_user(groups=(extra,)) as user:
        out = nf.cli("run", "--profile", "fence", "--user", user.name, "--", "sh", "-c",
                     SHOW_IDS).stdout.split("\n")
        assert out[0] == str(user.uid) and out[1] == str(user.gid)
        assert set(out[2].split()) == {str(user.gid), str(extra.gid)}
        assert out[3] == f"{user.home} {user.name} {user.name} {user.shell}"


ESCAPE = """
for target in {mount}/cgroup.procs {parent}/cgroup.procs {sibling}/cgroup.procs; do
  echo $$ > "$target" && echo "moved to $target"
done
cat /proc/self/cgroup
"""


def test_a_user_process_cannot_move_itself_out(fenced):
    nf = fenced
    mount = os.path.dirname(nf.cg_root)
    sibling, _ = nf.make_cgroup("elsewhere")
    with throwaway_user() as user:
        os.chown(f"{sibling}/cgroup.procs", user.uid, user.gid)   # delegated to the user
        script = ESCAPE.format(mount=mount, parent=f"{nf.cg_root}/run", sibling=sibling)
        out = nf.cli("run", "--profile", "fence", "--user", user.name, "--name", "esc",
                     "--", "sh", "-c", script, check=False)
        assert "moved" not in out.stdout
        assert f"0::/{nf.cgroup_base}/run/esc-" in out.stdout
    nf.cli("gc")
    assert trees(nf) == []


def test_ingress_profile_fences_the_trees_servers(fenced):
    nf = fenced
    echo = os.path.join(os.path.dirname(os.path.dirname(__file__)), "support", "echo.py")
    proc = nf.netns.popen(nf.cli_argv("run", "--profile", "quiet", "--", sys.executable,
                                      echo, "tcp:127.0.0.1:7013"),
                          stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert nf.probe("tcp", "127.0.0.1", 7013) == "dropped"
        assert nf.probe("tcp", "127.0.0.1", PORT_B) == "ok"       # a server outside
    finally:
        proc.kill()
        proc.wait()
    nf.cli("gc")
    assert trees(nf) == []


def test_a_profile_no_rule_names_fences_a_tree(fenced):
    nf = fenced
    probe = os.path.join(os.path.dirname(os.path.dirname(__file__)), "support", "probe.py")
    for profiles, expected in ((["lone"], "refused"), (["fence"], "ok")):
        out = nf.cli("run", *(f"--profile={p}" for p in profiles), "--", sys.executable,
                     probe, "tcp", "127.0.0.1", str(PORT_B))
        assert out.stdout.strip() == expected
    nf.cli("gc")
    assert trees(nf) == []
