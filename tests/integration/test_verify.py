"""`netfence verify` on sessions opened through netfence.sessions in a private netns:
several sessions of one uid, a session left unfenced, a session that cannot be probed."""

import json
import os

import pytest

from netfence import records
from support.livesession import login

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, cgroups")

POLICY = """[settings]
cgroup_base = "{base}"

[profile.fence]
egress = [ {{ action = "reject", proto = "tcp", ports = [7002] }} ]

[profile.quiet]
egress = [ {{ action = "deny", proto = "tcp", ports = ["9000-9009"] }} ]
"""
UID = 60177


@pytest.fixture
def loaded(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    nf.cli("reload")
    return nf


def verify(nf, *args):
    out = nf.cli("verify", *args, "--json", check=False)
    return out.returncode, json.loads(out.stdout) if out.stdout else None


def test_every_live_session_of_a_uid_is_probed(loaded):
    first, _ = login(loaded, UID, session_profiles=["fence"])
    second, _ = login(loaded, UID, session_profiles=["quiet"])
    code, report = verify(loaded, str(UID))
    assert code == 0, report
    by_key = {s["key"]: s for s in report["sessions"]}
    assert by_key[first]["results"]["7002"] == "refused"
    assert by_key[second]["results"]["9000"] == "dropped"          # deny: a drop
    assert all("ok" in s["results"].values() for s in by_key.values())


def test_a_session_whose_entry_is_gone_and_one_that_cannot_be_probed(loaded):
    key, _ = login(loaded, UID, session_profiles=["fence"])
    loaded.netns.nft("flush", "set", "inet", "netfence", "scg-fence")
    code, report = verify(loaded, "--session", key)
    assert code == 1 and "port 7002" in report["sessions"][0]["detail"], report
    path = records.session_path(loaded.run_dir, key)
    record = records.read(path)
    record["cgroup"] = "/nftest-no-such-cgroup"
    records.write(path, record)
    code, report = verify(loaded, "--session", key)
    assert code == 1 and "cannot probe it" in report["sessions"][0]["detail"], report


def test_a_session_with_nothing_to_deny_is_ok_with_nothing_to_prove(loaded):
    login(loaded, UID)
    code, report = verify(loaded, str(UID))
    assert code == 0 and "nothing to prove" in report["sessions"][0]["detail"]
