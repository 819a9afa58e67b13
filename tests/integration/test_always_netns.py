"""scope = "always" in a private network namespace: rules that hold without a login.

Processes are started with setpriv (no PAM, no login, no record): uids that never log
in, some without any account. Real connections to a server in the namespace must
pass or fail as the always rules say, right after `reload`, and again after gc saw an
NSS change.
"""

import json
import os
import sys

from support.nfenv import SUPPORT
from support.users import throwaway_group, throwaway_user

from netfence import ir, render

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "golden")
PROFILE = """
[settings]
cgroup_base = "{base}"

[profile.no-web]
egress = [ {{ action = "reject", proto = "tcp", ports = [80] }} ]
"""

SERVERS = ["tcp:127.0.0.1:80", "tcp:127.0.0.1:8080"]
NOBODY_UIDS = (61001, 62050, 62100, 61999, 63001)      # no account has these


def policy(nf, rule):
    return PROFILE.format(base=nf.cgroup_base) + rule


def probe(nf, uid, gid=None, port=80):
    """One TCP connection to the namespace's server, from a process that never
    logged in: real and effective uid `uid`, gid `gid` (default: the uid's number),
    no supplementary groups."""
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid if gid is None else gid}",
            "--clear-groups", sys.executable, os.path.join(SUPPORT, "probe.py"), "tcp",
            "127.0.0.1", str(port), "1.0"]
    return nf.netns.run(argv).stdout.strip()


def test_always_rule_fences_a_uid_that_never_logs_in_until_it_is_removed(nf):
    nf.echo_server(SERVERS)
    nf.write_policy(policy(nf, '[[rule]]\nscope = "always"\nusers = ["*"]\n'
                               'profiles = ["no-web"]\n'))
    nf.cli("reload")
    assert probe(nf, 61001) == "refused"             # no account, no login, fenced
    assert probe(nf, 61001, port=8080) == "ok"
    assert probe(nf, 0) == "ok"                      # "*" is every uid but 0
    listing = nf.netns.nft("list", "set", "inet", "netfence", "auid-no-web").stdout
    assert "flags interval" in listing and "elements = { 1-4294967294 }" in listing
    status = json.loads(nf.cli("status", "--json").stdout)
    assert status["drift"]["ok"], status["drift"]          # ranges are not leaks
    assert status["always"]["profiles"]["no-web"]["uids"] == 4294967294

    nf.write_policy(policy(nf, ""))
    nf.cli("reload")
    assert probe(nf, 61001) == "ok"


def test_uid_range_fences_inside_and_not_outside(nf):
    nf.echo_server(SERVERS)
    nf.write_policy(policy(nf, '[[rule]]\nscope = "always"\nuids = ["62000-62099", 61001]\n'
                               'users = ["nfnosuchuser"]\nprofiles = ["no-web"]\n'))
    reloaded = nf.cli("reload")
    assert "not found in NSS, skipped: nfnosuchuser" in reloaded.stderr
    assert probe(nf, 62050) == "refused"
    assert probe(nf, 61001) == "refused"
    assert probe(nf, 62100) == "ok"
    assert probe(nf, 61999) == "ok"
    listing = nf.netns.nft("list", "set", "inet", "netfence", "auid-no-web").stdout
    assert "flags interval" in listing and "elements = { 62000-62099 }" in listing
    listing = nf.netns.nft("list", "set", "inet", "netfence", "suid-no-web").stdout
    assert "flags" not in listing and "elements = { 61001 }" in listing   # a hash set


def reload_with_group_rule(nf, group):
    nf.write_policy(policy(nf, f'[[rule]]\nscope = "always"\ngroups = ["{group.name}"]\n'
                               f'profiles = ["no-web"]\n'))
    nf.cli("reload")


def test_effective_gid_of_a_restricted_group_is_fenced(nf):
    nf.echo_server(SERVERS)
    with throwaway_group("nfalw") as group:
        reload_with_group_rule(nf, group)
        assert probe(nf, 63001, gid=group.gid) == "refused"   # the socket's egid
        assert probe(nf, 63001) == "ok"                        # same uid, another gid
        listing = nf.netns.nft("list", "set", "inet", "netfence", "agid-no-web").stdout
        assert "type gid" in listing and f"elements = {{ {group.gid} }}" in listing


def test_gc_picks_up_a_user_added_to_a_restricted_group(nf):
    nf.echo_server(SERVERS)
    with throwaway_group("nfalw") as group:
        reload_with_group_rule(nf, group)
        with throwaway_user("nfa", groups=(group,)) as user:   # after the reload
            assert probe(nf, user.uid, gid=user.gid) == "ok"   # not resolved yet
            out = nf.cli("gc").stdout
            assert "NSS changed" in out, out
            assert probe(nf, user.uid, gid=user.gid) == "refused"
            status = json.loads(nf.cli("status", "--json").stdout)
            assert status["drift"]["ok"], status["drift"]
            assert status["always"]["profiles"]["no-web"]["uids"] == 1
            explained = nf.cli("explain", user.name).stdout
            assert f"member of group {group.name} (supplementary)" in explained, explained
        out = nf.cli("gc").stdout                              # the user is gone again
        assert "NSS changed" in out, out
        status = json.loads(nf.cli("status", "--json").stdout)
        assert status["always"]["profiles"]["no-web"]["uids"] == 0


def test_gc_restores_ranges_removed_by_hand(nf):
    nf.write_policy(policy(nf, '[[rule]]\nscope = "always"\nuids = ["62000-62099"]\n'
                               'profiles = ["no-web"]\n'))
    nf.cli("reload")
    nf.netns.nft("delete", "element", "inet", "netfence", "auid-no-web", "{ 62000-62099 }")
    status = json.loads(nf.cli("status", "--json").stdout)
    assert not status["drift"]["ok"]
    assert status["drift"]["static_missing"] == {"auid-no-web": 2}, status["drift"]
    nf.cli("gc")
    status = json.loads(nf.cli("status", "--json").stdout)
    assert status["drift"]["ok"], status["drift"]


GOLDEN_POLICY = """
[[rule]]
scope = "always"
uids = ["1000-1999", "5-5"]
groups = ["{group}"]
profiles = ["no-web"]
"""


def test_nft_lists_the_golden_table_and_our_renderer_agrees(nf):
    """The golden file holds the table with every always part: interval sets of uid
    ranges and gids, the hash set of single uids, the byteorder-converted lookups (which
    nft prints without the byteorder)."""
    with throwaway_group("nfalw") as group:
        nf.write_policy(policy(nf, GOLDEN_POLICY.format(group=group.name)))
        nf.cli("reload")
        listing = nf.netns.nft("list", "table", "inet", "netfence").stdout
        with open(os.path.join(GOLDEN, "always-policy.nft")) as handle:
            golden = handle.read().replace("GID", str(group.gid))
        assert listing == golden
        with open(os.path.join(nf.state_dir, "compiled.json")) as handle:
            applied = json.load(handle)
        table = ir.TableDef.from_json(applied["table"])
        assert render.render_table(table, applied["resolved"]["sets"]) == listing
