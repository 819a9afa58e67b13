"""netfence and cron: every job's PAM session (service cron) gets its own session.

A real Debian cron daemon runs in the test's network namespace and in a private mount
namespace where
  - a fresh tmpfs is mounted over /run (cron's pid file and its once-per-boot
    /run/crond.reboot marker are then private, so the @reboot job runs now, not at the
    next minute boundary, and nothing of cron's is left in the host's /run), with the
    test's own /run/nftest-<hex> bound back in;
  - /etc/crontab is the test's one-line crontab (`@reboot USER job`), /etc/cron.d and
    /var/spool/cron/crontabs are empty, /etc/pam.d/cron is the test stack.
The host's cron configuration and any running cron are untouched; the daemon and its
children are killed at the end.
"""

import os
import signal
import subprocess

import pytest

from conftest import PORT_A, PORT_B, read_kv
from support.pamsvc import wait_until
from support.sshd import descendants

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users, netns, cron")

CRON = "/usr/sbin/cron"

JOB = """#!/bin/sh
# runs as the user, from cron
cg=$(sed -n 's/^0:://p' /proc/self/cgroup)
a=$({probe_a})
b=$({probe_b})
echo "cg=$cg uid=$(id -u) {port_a}=$a {port_b}=$b" > {out}.tmp
mv {out}.tmp {out}
i=0
while [ ! -e {go} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
"""

# $1: the test's /run dir (the cwd as well), then pairs of bind source and target
NAMESPACE_SETUP = r"""
set -e
root=$1; shift
cd "$root"
mount -t tmpfs -o mode=0755 nftest-run /run
mkdir -p "$root"
mount --no-canonicalize --bind /proc/self/cwd "$root"
cd "$root"
while [ "$1" != -- ]; do mount --bind "$1" "$2"; shift 2; done
shift
exec "$@"
"""


@pytest.mark.skipif(not os.path.exists(CRON),
                    reason="cron is not installed (Debian package cron; tests/run.sh does "
                           "not install it)")
def test_cron_job_gets_its_own_session(fence, user):
    fence.echo()
    fence.load(f"""
[profile.jobs]
egress = [ {{ action = "reject", proto = "tcp", ports = [{PORT_B}] }} ]

[[rule]]
users = ["{user.name}"]
services = ["cron"]
profiles = ["jobs"]
""")
    root = fence.nf.root
    out, go = f"{user.home}/cron-out", f"{user.home}/cron-go"
    job = f"{root}/cron-job.sh"
    with open(job, "w") as f:
        f.write(JOB.format(probe_a=fence.probe_cmd(PORT_A), probe_b=fence.probe_cmd(PORT_B),
                           port_a=PORT_A, port_b=PORT_B, out=out, go=go))
    os.chmod(job, 0o755)
    crontab = f"{root}/crontab"
    with open(crontab, "w") as f:
        f.write(f'SHELL=/bin/sh\nMAILTO=""\n@reboot {user.name} /bin/sh {job}\n')
    os.chmod(crontab, 0o644)
    empty = f"{root}/empty"
    os.mkdir(empty, 0o755)
    stack = f"{root}/pam-cron"
    with open(stack, "w") as f:
        f.write(fence.stack())
    os.chmod(stack, 0o644)

    binds = [crontab, "/etc/crontab", empty, "/etc/cron.d", empty,
             "/var/spool/cron/crontabs", stack, "/etc/pam.d/cron"]
    argv = fence.netns.wrap(["unshare", "--mount", "--propagation", "private", "--",
                             "sh", "-c", NAMESPACE_SETUP, "sh", root, *binds, "--",
                             CRON, "-f", "-L", "15"])
    with open(f"{root}/cron.log", "wb") as log:
        daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, cwd="/")
    try:
        def job_ran():
            if daemon.poll() is not None:
                raise AssertionError(f"cron exited {daemon.returncode}: "
                                     f"{open(f'{root}/cron.log').read()}")
            return read_kv(out)
        seen = wait_until(job_ran, timeout=20, what="the @reboot job")
        assert seen["uid"] == str(user.uid)
        cg = seen["cg"]
        assert cg.startswith(f"/{fence.nf.cgroup_base}/user-{user.uid}/session-"), cg
        assert (seen[str(PORT_A)], seen[str(PORT_B)]) == ("ok", "refused")
        (record,) = fence.status()["sessions"]
        assert (record["user"], record["service"], record["rhost"]) == (
            user.name, "cron", "")
        assert record["cgroup"] == cg
        # cron's per-job process is the PAM application, moved into the session
        assert record["ppid"] in descendants(daemon.pid)
        assert fence.filled() == {"scg-jobs": [fence.nft_cgroup(cg)]}
        # a root login stays unrestricted while the job runs (the daemon itself neither)
        assert fence.netns.run(fence.probe_cmd(PORT_B).split()).stdout.strip() == "ok"

        with open(go, "w"):
            pass                                        # let the job finish
        fence.wait_clean(timeout=15, what="the cron job's close_session")
        assert not fence.cgroup_exists(cg)
        (closed,) = fence.events("close")
        assert "service=cron" in closed and "result=ok" in closed
        assert daemon.poll() is None                    # the daemon itself carries on
    finally:
        for pid in descendants(daemon.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        daemon.kill()
        daemon.wait()
