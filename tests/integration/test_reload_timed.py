"""Timed sets in a private network namespace, proved by traffic: a restriction
(ruid-P) applies P to a uid's egress, a grant (guid-P) exempts a uid from P, and the
kernel itself expires an element when its timeout runs out."""

import os
import time

import pytest

from test_reload import POLICY, add_uid

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")


def add_timed(nf, set_name, number, timeout):
    nf.netns.nft("add", "element", "inet", "netfence", set_name,
                 f"{{ {number} timeout {timeout} }}")


def listed(nf, set_name):
    return nf.netns.nft("list", "set", "inet", "netfence", set_name).stdout


@pytest.fixture
def loaded(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    nf.cli("reload")
    nf.echo_server(["tcp:127.0.0.1:80", "tcp:127.0.0.1:443"])
    return nf


def test_a_restricted_uid_gets_the_profile_and_others_do_not(loaded):
    nf = loaded
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60011) == "ok"
    add_timed(nf, "ruid-no-plain-http", 60011, "60s")
    add_timed(nf, "any-ruid", 60011, "60s")
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60011) == "refused"
    assert nf.probe("tcp", "127.0.0.1", 443, uid=60011) == "ok"
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60012) == "ok"
    # the profile set alone does nothing: the base chain tests the guard first
    add_timed(nf, "ruid-no-plain-http", 60012, "60s")
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60012) == "ok"


def test_a_granted_uid_is_exempt_from_that_profile_only(loaded):
    nf = loaded
    add_uid(nf, "uid-no-plain-http", 60013)
    add_uid(nf, "uid-lab", 60014)
    add_uid(nf, "uid-no-plain-http", 60014)
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60013) == "refused"
    add_timed(nf, "guid-no-plain-http", 60013, "60s")
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60013) == "ok"
    # a grant of one profile leaves the others: lab still rejects port 80
    add_timed(nf, "guid-no-plain-http", 60014, "60s")
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60014) == "refused"
    # a grant also wins over a restriction of the same profile
    for name in ("ruid-no-plain-http", "any-ruid", "guid-no-plain-http"):
        add_timed(nf, name, 60015, "60s")
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60015) == "ok"


def test_the_kernel_expires_a_timed_element(loaded):
    nf = loaded
    add_timed(nf, "ruid-no-plain-http", 60016, "2s")
    add_timed(nf, "any-ruid", 60016, "2s")
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60016) == "refused"
    assert "60016" in listed(nf, "any-ruid")
    time.sleep(2.5)
    assert nf.probe("tcp", "127.0.0.1", 80, uid=60016) == "ok"
    assert "60016" not in listed(nf, "any-ruid")


def test_a_login_set_refuses_a_timeout(loaded):
    """Login sets have no `flags timeout`: a timed element cannot go into one (and a
    permanent one cannot become timed)."""
    out = nf_add_timed_unchecked(loaded, "uid-no-plain-http", 60017, "60s")
    assert out.returncode != 0
    assert "60017" not in listed(loaded, "uid-no-plain-http")


def nf_add_timed_unchecked(nf, set_name, number, timeout):
    return nf.netns.run(["nft", "add", "element", "inet", "netfence", set_name,
                         f"{{ {number} timeout {timeout} }}"], check=False)
