"""`netfence grant|restrict|grants|revoke` in a private network namespace: real
connections prove each grant and restriction, and the kernel ends them on time with
no netfence process running (no watch, no gc: the elements' own timeout).

uids 61011 and 61012 have no account (a numeric uid is taken as it is); an always
rule fences 61011 with no-web from reload on, nothing fences 61012.
"""

import json
import os
import time

import pytest

from netfence import grants, records
from netfence.cgroups import cgroup2_mount
from support.livesession import login

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, nftables")

PORT, IN_PORT, OTHER = 7021, 7022, 7023
FENCED, FREE = 61011, 61012
POLICY = """
[settings]
cgroup_base = "{base}"

[profile.no-web]
egress = [ {{ action = "reject", proto = "tcp", ports = [{port}] }} ]

[profile.quiet]
ingress = [ {{ action = "deny", proto = "tcp", ports = [{in_port}] }} ]

[[rule]]
scope = "always"
uids = [{fenced}]
profiles = ["no-web"]
"""


def setup(nf):
    nf.echo_server([f"tcp:127.0.0.1:{PORT}", f"tcp:127.0.0.1:{OTHER}"])
    write(nf)
    nf.cli("reload")


def write(nf, body=POLICY):
    nf.write_policy(body.format(base=nf.cgroup_base, port=PORT, in_port=IN_PORT,
                                fenced=FENCED))


def probe(nf, uid, cgroup=None, port=PORT):
    return nf.probe("tcp", "127.0.0.1", port, uid=uid, cgroup=cgroup)


def elements(nf, set_name):
    """{key: seconds until the kernel expires it} of one of our sets."""
    out = json.loads(nf.netns.nft("-j", "list", "set", "inet", "netfence", set_name).stdout)
    found = {}
    for item in out["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            if isinstance(elem, dict):
                found[elem["elem"]["val"]] = elem["elem"].get("expires")
            else:
                found[elem] = None
    return found


def listed(nf):
    return json.loads(nf.cli("grants", "--json").stdout)["grants"]


def sleep_until(moment):
    time.sleep(max(0.0, moment - time.time()))


# ---- the tests --------------------------------------------------------------

def test_a_grant_for_3s_lets_a_denied_connection_through_then_ends_with_nothing_running(nf):
    setup(nf)
    assert probe(nf, FENCED) == "refused"
    started = time.time()
    out = nf.cli("grant", str(FENCED), "--profile", "no-web", "--for", "3s",
                 "--reason", "test: 3 s exemption")
    assert out.stdout.startswith("g-") and "user 61011 (uid 61011) from profile no-web" \
        in out.stdout
    assert probe(nf, FENCED) == "ok"
    assert probe(nf, FREE) == "ok"
    assert 0 < elements(nf, "guid-no-web")[FENCED] <= 3
    [entry] = listed(nf)
    assert (entry["kind"], entry["target"], entry["reason"]) == (
        "grant", "user 61011", "test: 3 s exemption")
    assert 0 < entry["remaining_s"] <= 3
    assert entry["created"] >= started and entry["expires"] - entry["created"] == \
        pytest.approx(3)
    sleep_until(entry["expires"] + 0.3)       # nothing of netfence runs meanwhile
    assert probe(nf, FENCED) == "refused"
    assert elements(nf, "guid-no-web") == {}
    assert listed(nf) == []


def test_a_restriction_for_3s_cuts_an_allowed_connection_then_ends(nf):
    setup(nf)
    assert probe(nf, FREE) == "ok"
    nf.cli("restrict", str(FREE), "--profile", "no-web", "--for", "3s",
           "--reason", "INC-1")
    [entry] = listed(nf)
    assert probe(nf, FREE) == "refused"
    assert probe(nf, FREE, port=OTHER) == "ok"            # only the profile's port
    assert FREE in elements(nf, "ruid-no-web") and FREE in elements(nf, "any-ruid")
    sleep_until(entry["expires"] + 0.3)
    assert probe(nf, FREE) == "ok"
    assert elements(nf, "ruid-no-web") == {} and elements(nf, "any-ruid") == {}


def test_both_survive_a_reload_and_a_reconcile_without_being_extended(nf):
    setup(nf)
    nf.cli("grant", str(FENCED), "--profile", "no-web", "--for", "4s", "--reason", "a")
    nf.cli("restrict", str(FREE), "--profile", "no-web", "--for", "4s", "--reason", "b")
    ends = {g["kind"]: g["expires"] for g in listed(nf)}
    nf.cli("reload")
    assert (probe(nf, FENCED), probe(nf, FREE)) == ("ok", "refused")
    nf.cli("gc", check=False)                 # watch's and gc's reconcile: same expiry
    assert elements(nf, "guid-no-web")[FENCED] <= 4
    assert elements(nf, "ruid-no-web")[FREE] <= 4
    assert (probe(nf, FENCED), probe(nf, FREE)) == ("ok", "refused")
    sleep_until(ends["grant"] + 0.3)
    assert probe(nf, FENCED) == "refused"
    sleep_until(ends["restrict"] + 0.3)
    assert probe(nf, FREE) == "ok"


def test_revoke_ends_one_early_and_leaves_the_others(nf):
    setup(nf)
    nf.cli("grant", str(FENCED), "--profile", "no-web", "--for", "1h", "--reason", "a")
    nf.cli("restrict", str(FREE), "--profile", "no-web", "--for", "1h", "--reason", "b")
    by_kind = {g["kind"]: g["id"] for g in listed(nf)}
    out = nf.cli("revoke", by_kind["restrict"])
    assert out.stdout.startswith(f"revoked {by_kind['restrict']}: user 61012")
    assert (probe(nf, FENCED), probe(nf, FREE)) == ("ok", "ok")
    nf.cli("revoke", by_kind["grant"])
    assert (probe(nf, FENCED), probe(nf, FREE)) == ("refused", "ok")
    assert listed(nf) == [] and elements(nf, "guid-no-web") == {}
    again = nf.cli("revoke", by_kind["grant"], check=False)
    assert again.returncode == 2 and "in force" in again.stderr


# ---- sessions and ingress ----------------------------------------------------------

def session_cgroup(nf, key):
    return cgroup2_mount() + records.read_session(nf.run_dir, key)["cgroup"]


def test_a_session_grant_exempts_that_session_only(nf):
    setup(nf)
    key, _app = login(nf, 65534, session_profiles=["no-web"])
    other, _app2 = login(nf, 65534, session_profiles=["no-web"])
    mine, theirs = session_cgroup(nf, key), session_cgroup(nf, other)
    assert probe(nf, 65534, cgroup=mine) == "refused"
    nf.cli("grant", "--session", key, "--profile", "no-web", "--for", "1h",
           "--reason", "debugging")
    assert probe(nf, 65534, cgroup=mine) == "ok"
    assert probe(nf, 65534, cgroup=theirs) == "refused"
    [entry] = listed(nf)
    assert entry["target"] == f"session {key}" and entry["uid"] == 65534
    nf.cli("revoke", entry["id"])
    assert probe(nf, 65534, cgroup=mine) == "refused"


def test_a_user_grant_exempts_the_ingress_of_the_users_fenced_logins(nf):
    setup(nf)
    key, _app = login(nf, 65534, user_profiles=["quiet"])
    nf.echo_server([f"tcp:127.0.0.1:{IN_PORT}"], uid=65534, cgroup=session_cgroup(nf, key))
    assert probe(nf, 0, port=IN_PORT) == "dropped"
    nf.cli("grant", "nobody", "--profile", "quiet", "--for", "1h", "--reason", "r")
    assert probe(nf, 0, port=IN_PORT) == "ok"


# ---- what must not happen ------------------------------------------------------------

def test_a_refused_kernel_change_leaves_no_grant(nf):
    setup(nf)
    nf.netns.nft("delete", "table", "inet", "netfence")
    out = nf.cli("restrict", str(FREE), "--profile", "no-web", "--for", "1h",
                 "--reason", "r", check=False)
    assert out.returncode == 1 and "put back" in out.stderr, out.stderr
    assert not os.path.exists(grants.path_of(nf.state_dir))


def test_a_revoke_without_the_table_stands_when_gc_restores_it(nf):
    setup(nf)
    nf.cli("restrict", str(FREE), "--profile", "no-web", "--for", "1h", "--reason", "r")
    [entry] = listed(nf)
    nf.netns.nft("delete", "table", "inet", "netfence")
    nf.cli("revoke", entry["id"])
    nf.cli("gc", check=False)
    assert elements(nf, "ruid-no-web") == {} and probe(nf, FREE) == "ok"
    assert probe(nf, FENCED) == "refused"             # the table is back


def test_bad_inputs_change_nothing(nf):
    setup(nf)
    key, app = login(nf, 65534, session_profiles=["no-web"])
    app.kill()
    app.wait()
    cases = [
        (["grant", str(FENCED), "--profile", "nope", "--for", "1h", "--reason", "r"],
         "unknown profile 'nope'"),
        (["restrict", str(FREE), "--profile", "quiet", "--for", "1h", "--reason", "r"],
         "no egress rules"),
        (["grant", "--session", key, "--profile", "no-web", "--for", "1h", "--reason", "r"],
         "closing or has ended"),
        (["grant", str(FENCED), "--profile", "no-web", "--for", "45d", "--reason", "r"],
         "at most 30d"),
        (["grant", str(FENCED), "--profile", "no-web", "--for", "1h", "--reason", "x\ry"],
         "unprintable"),
        (["restrict", "root", "--profile", "no-web", "--for", "1h", "--reason", "r"],
         "refusing to restrict root"),
    ]
    for argv, message in cases:
        out = nf.cli(*argv, check=False)
        assert out.returncode == 2 and message in out.stderr, (argv, out.stderr)
    assert not os.path.exists(grants.path_of(nf.state_dir))
    assert elements(nf, "guid-no-web") == {} and elements(nf, "ruid-no-web") == {}


def test_a_grant_cannot_silently_undo_a_restriction(nf):
    setup(nf)
    nf.cli("restrict", str(FREE), "--profile", "no-web", "--for", "1h", "--reason", "r")
    out = nf.cli("grant", str(FREE), "--profile", "no-web", "--for", "1h",
                 "--reason", "r", check=False)
    assert probe(nf, FREE) == "refused"
    assert out.returncode == 2 and "revoke g-" in out.stderr


def test_a_damaged_grants_file_keeps_the_restriction_in_force(nf):
    """Read as "no grants", a cut file would make the next reconcile (gc, watch, a
    reload) destroy the restriction of an incident in progress."""
    setup(nf)
    nf.cli("restrict", str(FREE), "--profile", "no-web", "--for", "1h", "--reason", "r")
    path = grants.path_of(nf.state_dir)
    with open(path, "r+b") as handle:
        handle.truncate(40)
    outs = [nf.cli(*argv, check=False) for argv in (
        ["gc"], ["reload"], ["grants"],
        ["grant", str(FENCED), "--profile", "no-web", "--for", "1h", "--reason", "r"])]
    assert probe(nf, FREE) == "refused"
    assert FREE in elements(nf, "ruid-no-web")
    for out in outs:
        assert out.returncode == 1 and path in out.stdout + out.stderr, out


def test_a_profile_removed_by_reload_leaves_its_grants_idle_not_the_others_stuck(nf):
    setup(nf)
    nf.cli("grant", str(FENCED), "--profile", "quiet", "--for", "1h", "--reason", "r")
    write(nf, body=POLICY.replace("[profile.quiet]\ningress = [ {{ action = \"deny\", "
                                  "proto = \"tcp\", ports = [{in_port}] }} ]\n", ""))
    nf.cli("reload")
    [entry] = listed(nf)
    assert entry["profile_applied"] is False
    assert nf.cli("gc", check=False).returncode == 0
    nf.cli("restrict", str(FREE), "--profile", "no-web", "--for", "1h", "--reason", "r")
    assert probe(nf, FREE) == "refused"


# ---- a grant holds on every denial path (grants tested where a profile denies) ------

EVERY_DENIAL = """
[settings]
cgroup_base = "{base}"

[profile.every]
egress = [
  {{ action = "deny", proto = "tcp", ports = [7031] }},
  {{ action = "reject", proto = "tcp", ports = [7032] }},
  {{ action = "reject", proto = ["tcp", "udp"], ports = [7033] }},
  {{ action = "allow", proto = "tcp", ports = [7034] }},
]
egress_default = "{default}"
log = {log}

[[rule]]
scope = "always"
uids = [{fenced}, {other}]
profiles = ["every"]
"""
DENIED = {7031: "dropped", 7032: "refused", 7033: "refused", 7035: None}


@pytest.mark.parametrize("default,log", [("reject", "false"), ("deny", "true")])
def test_a_grant_lets_through_what_each_kind_of_denial_stops_and_only_for_its_uid(
        nf, default, log):
    """Deny (drop), reject of a TCP-only rule (reset), reject of a mixed rule (ICMP),
    the default (reject or deny), in a profile that logs and in one that does not:
    every path a packet can be denied on asks the grant first; the same profile still
    denies another uid, and allows what it allows to both."""
    ports = [7031, 7032, 7033, 7034, 7035]
    nf.echo_server([f"tcp:127.0.0.1:{port}" for port in ports])
    nf.write_policy(EVERY_DENIAL.format(base=nf.cgroup_base, default=default, log=log,
                                        fenced=FENCED, other=FREE))
    nf.cli("reload")
    denied = {**DENIED, 7035: "refused" if default == "reject" else "dropped"}
    for port, outcome in denied.items():
        assert probe(nf, FENCED, port=port) == outcome, port
    assert probe(nf, FENCED, port=7034) == "ok"
    nf.cli("grant", str(FENCED), "--profile", "every", "--for", "1h", "--reason", "test")
    for port in ports:
        assert probe(nf, FENCED, port=port) == "ok", port
        expected = denied.get(port, "ok")
        assert probe(nf, FREE, port=port) == expected, port
