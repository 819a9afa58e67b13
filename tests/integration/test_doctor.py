"""`netfence doctor` in a private network namespace: every problem it claims to detect
is created here and seen reported (hook missing from a service, table flushed, policy
broken, watch stopped, a dead session's record), and the real login check passes with
a working hook and fails with one that fences nothing."""

import json
import os
import shutil
import time

import pytest

from support.livesession import login

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, cgroups, PAM")

POLICY = """[settings]
cgroup_base = "{base}"

[profile.fence]
egress = [ {{ action = "reject", proto = "tcp", ports = [7002] }} ]

[[rule]]
users = ["*"]
profiles = ["fence"]
scope = "session"
"""


class Doctored:
    """A netfence installation in the test's netns with its own PAM directory: su and
    cron wired to a hook installed by `netfence install-hook`."""

    def __init__(self, nf):
        self.nf = nf
        self.hook = f"{nf.root}/bin/netfence-hook"
        nf.cli("install-hook", self.hook)
        self.pam_dir = f"{nf.root}/pam"
        os.makedirs(self.pam_dir)
        for name in os.listdir("/etc/pam.d"):
            if name.startswith("common-"):
                shutil.copyfile(f"/etc/pam.d/{name}", f"{self.pam_dir}/{name}")
        for service in ("su", "cron"):
            self.wire(service, self.hook)
        nf.write_policy(POLICY.format(base=nf.cg_root.rsplit("/", 1)[1]))
        nf.cli("reload")

    def wire(self, service, hook):
        with open(f"{self.pam_dir}/{service}", "w") as handle:
            handle.write("@include common-session\n")
            if hook:
                handle.write(f"session required pam_exec.so seteuid quiet {hook}\n")

    def doctor(self, *extra):
        out = self.nf.cli("doctor", "--json", "--pam-dir", self.pam_dir, *extra, check=False)
        report = json.loads(out.stdout)
        assert out.returncode == (0 if report["ok"] else 1), out
        return {c["check"]: c for c in report["checks"]}

    def problems(self, *extra):
        return {name: c["detail"] for name, c in self.doctor("--no-login", *extra).items()
                if not c["ok"]}


# what this machine lacks whatever the test does (no syslog, no cron): not asserted
ENVIRONMENT = {"log sink", "gc"}


@pytest.fixture
def doc(nf):
    return Doctored(nf)


def test_a_healthy_installation_has_no_problem_but_the_machine_own(doc):
    watch = doc.nf.spawn(doc.nf.cli_argv("watch"))
    try:
        assert set(doc.problems()) <= ENVIRONMENT, doc.problems()
        checks = doc.doctor("--no-login")
        assert checks["pam su"]["ok"] and checks["pam cron"]["ok"]
        assert checks["kernel socket cgroupv2 input"]["ok"]
        assert checks["watch"]["ok"] and str(watch.pid) in checks["watch"]["detail"]
    finally:
        watch.kill()
        watch.wait()


def test_hook_missing_from_a_service_is_reported(doc):
    doc.wire("cron", None)
    problems = doc.problems()
    assert "no netfence hook" in problems["pam cron"]
    assert "pam su" not in problems


def test_table_flushed_is_reported(doc):
    assert "table" not in doc.problems()
    doc.nf.netns.nft("delete", "table", "inet", "netfence")
    assert "table inet netfence is missing" in doc.problems()["table"]


def test_table_altered_is_reported(doc):
    doc.nf.netns.nft("add", "rule", "inet", "netfence", "out-fence", "accept")
    assert "altered" in doc.problems()["table"]


def test_policy_broken_is_reported(doc):
    doc.nf.write_policy("[profile.x]\negress = 42\n")
    problems = doc.problems()
    assert "policy" in problems and "table" not in problems   # the applied one still holds


def test_watch_stopped_is_reported(doc):
    watch = doc.nf.spawn(doc.nf.cli_argv("watch"))
    deadline = time.monotonic() + 10
    while "watch" in doc.problems() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "watch" not in doc.problems()
    watch.kill()
    watch.wait()
    assert "no `netfence watch` runs" in doc.problems()["watch"]


def test_a_dead_session_record_is_reported(doc):
    key, app = login(doc.nf, 60123, session_profiles=["fence"])
    assert "records" not in doc.problems()
    app.kill()
    app.wait()
    assert key in doc.problems()["records"]


def test_the_real_login_passes_with_a_working_hook(doc):
    check = doc.doctor()["login"]
    assert check["ok"], check
    assert "refused" in check["detail"]
    assert_nothing_left(doc)


def assert_nothing_left(doc):
    assert not [n for n in os.listdir("/etc/pam.d") if n.startswith("netfence-doctor-")]
    assert not [n for n in os.listdir(os.path.dirname(doc.nf.cg_root))
                if n.startswith("netfence-doctor-")]
    assert not [n for n in os.listdir("/run") if n.startswith("netfence-doctor-")]
    with open("/etc/passwd") as handle:
        assert "nfdoctor" not in handle.read()


def test_the_real_login_fails_with_a_hook_that_fences_nothing(doc):
    fake = f"{doc.nf.root}/fake/netfence-hook"
    os.makedirs(os.path.dirname(fake))
    with open(fake, "w") as handle:
        handle.write("#!/bin/sh\nexit 0\n")
    os.chmod(fake, 0o755)
    doc.wire("su", fake)
    doc.wire("cron", fake)
    check = doc.doctor()["login"]
    assert not check["ok"] and "not fenced" in check["detail"], check
    assert_nothing_left(doc)



def test_kernel_entries_without_a_record_and_missing_ones_are_reported(doc):
    key, app = login(doc.nf, 60124, session_profiles=["fence"])
    assert "records" not in doc.problems()
    doc.nf.netns.nft("flush", "set", "inet", "netfence", "scg-fence")
    problems = doc.problems()
    assert "live entries missing" in problems["records"] and "table" not in problems
    doc.nf.cli("gc")
    assert "records" not in doc.problems()
    doc.nf.netns.nft("add", "element", "inet", "netfence", "uid-fence", "{ 60999 }")
    assert "entries without a session record" in doc.problems()["records"]
