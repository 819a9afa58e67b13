"""scope = "always" in a private network namespace: rules that hold without a login.

Processes are started with setpriv (no PAM, no login, no record): uids that never log
in, some without any account. Real connections to a server in the namespace must
pass or fail as the always rules say, right after `reload`, and again after gc saw an
NSS change.
"""

import json
import os
import sys
import tempfile

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
        out = nf.cli("gc").stdout                    # the user is gone again: gc never
        assert "stay fenced until `netfence reload`" in out, out      # narrows (NSS outage?)
        status = json.loads(nf.cli("status", "--json").stdout)
        assert status["always"]["profiles"]["no-web"]["uids"] == 1
        nf.cli("reload")                                       # the admin's reload does
        status = json.loads(nf.cli("status", "--json").stdout)
        assert status["always"]["profiles"]["no-web"]["uids"] == 0


def test_gc_restores_ranges_removed_by_hand(nf):
    nf.write_policy(policy(nf, '[[rule]]\nscope = "always"\nuids = ["62000-62099"]\n'
                               'profiles = ["no-web"]\n'))
    nf.cli("reload")
    nf.netns.nft("delete", "element", "inet", "netfence", "auid-no-web", "{ 62000-62099 }")
    shown = nf.cli("status", "--json", check=False)
    status = json.loads(shown.stdout)
    assert not status["drift"]["ok"] and shown.returncode == 1     # drift: exit 1
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


# ---- NSS changes, with a private passwd and group (a mount namespace per command) --

class FakeNss:
    """/etc/passwd and /etc/group of the host plus test entries, seen by each command
    run through it, in a mount namespace of its own, as the upper layer of an overlay
    on /etc. (A bind mount on /etc/passwd itself is detached as soon as another test's
    useradd renames the host's file over it: the command would see the host's.)"""

    def __init__(self, nf):
        self.nf = nf
        self.users, self.groups = {}, {}

    def files(self):
        """A fresh overlay upper dir holding passwd and group, and its work dir."""
        top = tempfile.mkdtemp(dir=self.nf.root)
        upper, work = f"{top}/upper", f"{top}/work"
        os.makedirs(upper)
        os.makedirs(work)
        for name, entries in (("passwd", self.users), ("group", self.groups)):
            with open(f"/etc/{name}") as handle:
                text = handle.read()
            with open(f"{upper}/{name}", "w") as handle:
                handle.write(text + "".join(line + "\n" for line in entries.values()))
            os.chmod(f"{upper}/{name}", 0o644)
        return upper, work

    def add_user(self, name, uid, gid=None):
        self.users[name] = f"{name}:x:{uid}:{uid if gid is None else gid}::/:/bin/false"

    def add_group(self, name, gid, members=()):
        self.groups[name] = f"{name}:x:{gid}:{','.join(members)}"

    def remove(self, *names):
        for name in names:
            self.users.pop(name, None)
            self.groups.pop(name, None)

    def run(self, argv, check=True):
        upper, work = self.files()
        wrapped = ["unshare", "--mount", "--", "sh", "-c",
                   'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc'
                   ' && shift 2 && exec "$@"', "sh", upper, work, *argv]
        return self.nf.netns.run(wrapped, check=check)

    def cli(self, *args, check=True):
        return self.run(self.nf.cli_argv(*args), check=check)


def elements(nf, set_name):
    listing = nf.netns.nft("list", "set", "inet", "netfence", set_name).stdout
    line = [x for x in listing.splitlines() if "elements" in x]
    return line[0].split("=", 1)[1].strip() if line else "{}"


def drift_ok(fake):
    shown = fake.cli("status", "--json", check=False)
    status = json.loads(shown.stdout)
    # status exits 1 exactly when it reports a problem
    assert shown.returncode == (0 if status["drift"]["ok"] else 1), shown.stderr
    return status["drift"]["ok"], status["drift"]


def test_an_nss_outage_during_gc_unfences_nobody(nf):
    """The reviewer's scen1: named users, a group and its members resolve at reload;
    then NSS answers without them (LDAP down): gc keeps every id, says so, exits 1."""
    nf.echo_server(SERVERS)
    fake = FakeNss(nf)
    fake.add_user("rvalice", 64000)
    fake.add_user("rvbob", 64001)
    fake.add_user("rvcarol", 64002, gid=64500)                       # primary member
    fake.add_group("rvweb", 64500, members=["rvdan"])
    fake.add_user("rvdan", 64003)                                    # supplementary
    nf.write_policy(policy(nf, '[[rule]]\nscope = "always"\nusers = ["rvalice", "rvbob"]\n'
                               'uids = ["62000-62099"]\ngroups = ["rvweb"]\n'
                               'profiles = ["no-web"]\n'))
    fake.cli("reload")
    fenced = {64000: "refused", 64001: "refused", 64002: "refused", 64003: "refused",
              62050: "refused", 61001: "ok"}
    assert {uid: probe(nf, uid) for uid in fenced} == fenced
    assert probe(nf, 61001, gid=64500) == "refused"                   # the group's gid
    before = {name: elements(nf, name) for name in ("auid-no-web", "suid-no-web",
                                                    "agid-no-web")}
    fake.remove("rvalice", "rvbob", "rvcarol", "rvdan", "rvweb")     # NSS "down"
    gc = fake.cli("gc", check=False)
    assert gc.returncode == 1, gc.stdout + gc.stderr
    for name in ("rvalice", "rvbob", "rvweb"):
        assert f"event=nss-unresolved name={name}" in gc.stdout, gc.stdout
    assert {uid: probe(nf, uid) for uid in fenced} == fenced
    assert probe(nf, 61001, gid=64500) == "refused"
    assert {name: elements(nf, name) for name in before} == before
    assert drift_ok(fake)[0], drift_ok(fake)
    lost = json.loads(fake.cli("status", "--json").stdout)["always"]["lost"]
    assert {"rvalice", "rvbob", "rvweb"} <= set(lost), lost          # status shows it
    assert fake.cli("gc", check=False).returncode == 1                # until reload
    reloaded = fake.cli("reload")                                    # the admin decides
    assert "not found in NSS, skipped: rvalice, rvbob, rvweb" in reloaded.stderr
    assert probe(nf, 64000) == "ok" and probe(nf, 62050) == "refused"
    assert fake.cli("gc").returncode == 0


SPLIT_RULE = ('[[rule]]\nscope = "always"\nuids = ["62000-62100"]\nusers = ["!rvx"]\n'
              'groups = ["rvg"]\nprofiles = ["no-web"]\n')


def test_an_excluded_account_created_in_a_range_waits_for_reload_and_gc_still_widens(nf):
    """The reviewer's scen4: an "!" account created inside a range. gc fences what
    NSS newly lists and never unfences (rvx stays fenced until reload, fail closed);
    reload splits the range; gc keeps widening after the split."""
    nf.echo_server(SERVERS)
    fake = FakeNss(nf)
    fake.add_group("rvg", 64500)
    nf.write_policy(policy(nf, SPLIT_RULE))
    fake.cli("reload")
    assert elements(nf, "auid-no-web") == "{ 62000-62100 }"
    fake.add_user("rvx", 62050)                                      # day 1
    assert fake.cli("gc").returncode == 0
    assert probe(nf, 62050) == "refused"                             # until reload
    assert drift_ok(fake)[0], drift_ok(fake)
    fake.add_user("rvz", 64000, gid=64500)                           # day 2: joins rvg
    out = fake.cli("gc").stdout
    assert "NSS changed their ranges, widened" in out, out
    assert probe(nf, 64000) == "refused" and probe(nf, 62051) == "refused"
    fake.cli("reload")                                               # the split
    assert elements(nf, "auid-no-web") == "{ 62000-62049, 62051-62100 }"
    assert probe(nf, 62050) == "ok" and probe(nf, 62049) == "refused"
    fake.add_user("rvy", 64001, gid=64500)                           # day 3
    assert fake.cli("gc").returncode == 0
    assert elements(nf, "auid-no-web") == "{ 62000-62049, 62051-62100, 64000-64001 }"
    assert probe(nf, 64001) == "refused" and probe(nf, 62050) == "ok"
    assert drift_ok(fake)[0], drift_ok(fake)


def test_gc_repairs_a_range_whose_split_the_kernel_lost(nf):
    """The kernel holds one range where the resolution holds two (a change that did
    not reach it): gc replaces the set whole; adding the split's keys inside the
    existing interval, element by element, is refused (EEXIST)."""
    fake = FakeNss(nf)
    fake.add_group("rvg", 64500)
    fake.add_user("rvx", 62050)
    nf.write_policy(policy(nf, SPLIT_RULE))
    fake.cli("reload")
    nf.netns.nft("flush", "set", "inet", "netfence", "auid-no-web")
    nf.netns.nft("add", "element", "inet", "netfence", "auid-no-web", "{ 62000-62100 }")
    assert not drift_ok(fake)[0]
    assert fake.cli("gc").returncode == 0
    assert elements(nf, "auid-no-web") == "{ 62000-62049, 62051-62100 }"
    assert drift_ok(fake)[0], drift_ok(fake)


FAIL_ONCE = """
import errno, sys
from netfence import cli, nftnl
from netfence.errors import KernelError
real = nftnl.Ruleset.replace_static
def fail_once(self, contents, table="netfence"):
    nftnl.Ruleset.replace_static = real
    raise KernelError("replace ranges in table inet " + table, errno.ENOBUFS, "injected")
nftnl.Ruleset.replace_static = fail_once
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_failed_range_change_is_repaired_by_the_next_gc(nf):
    nf.echo_server(SERVERS)
    fake = FakeNss(nf)
    fake.add_group("rvg", 64500)
    nf.write_policy(policy(nf, SPLIT_RULE))
    fake.cli("reload")
    fake.add_user("rvz", 64000, gid=64500)
    argv = [sys.executable, "-c", FAIL_ONCE] + nf.cli_argv("gc")[3:]
    failed = fake.run(argv, check=False)
    assert failed.returncode == 1 and "injected" in failed.stdout, failed.stdout
    assert probe(nf, 64000) == "ok"                        # the kernel did not change
    ok, drift = drift_ok(fake)
    assert not ok and drift["static_missing"] == {"any-suid": 1, "suid-no-web": 1}, drift
    assert fake.cli("gc").returncode == 0
    assert probe(nf, 64000) == "refused"
    assert drift_ok(fake)[0], drift_ok(fake)


def test_a_group_with_gid_0_is_refused_at_always_scope(nf):
    nf.write_policy(policy(nf, '[[rule]]\nscope = "always"\ngroups = ["root"]\n'
                               'profiles = ["no-web"]\n'))
    for command in ("check", "reload"):
        out = nf.cli(command, check=False)
        assert out.returncode == 1 and "group 'root' has gid 0" in out.stderr, out.stderr
        assert 'users = ["root"]' in out.stderr
    assert nf.netns.nft("list", "tables").stdout.strip() == ""


def test_a_flushed_table_comes_back_even_when_widening_cannot_be_written(nf):
    """gc restores first, from the applied resolution: an NSS change to record and a
    state dir it cannot write (full, read-only) do not keep a flushed table, and with
    it every fence, away; the widening waits for the next gc."""
    nf.echo_server(SERVERS)
    fake = FakeNss(nf)
    fake.add_group("rvg", 64600)
    nf.write_policy(policy(nf, '[[rule]]\nscope = "always"\nuids = ["62000-62099"]\n'
                               'groups = ["rvg"]\nprofiles = ["no-web"]\n'))
    fake.cli("reload")
    assert probe(nf, 62050) == "refused"
    fake.add_user("rvnew", 64601, gid=64600)            # a new member: gc would widen
    nf.netns.nft("flush", "ruleset")
    assert probe(nf, 62050) == "ok"
    read_only = ['sh', '-c', 'mount --bind -o ro "$0" "$0" && exec "$@"', nf.state_dir]
    gc = fake.run(read_only + nf.cli_argv("gc"), check=False)
    assert gc.returncode == 1, gc.stdout + gc.stderr
    assert "restored from the applied snapshot" in gc.stdout, gc.stdout
    assert "could not resolve them again" in gc.stdout, gc.stdout
    assert probe(nf, 62050) == "refused"
    assert probe(nf, 64601) == "ok"                     # not widened: nothing written
    gc = fake.cli("gc")
    assert "NSS changed" in gc.stdout, gc.stdout
    assert probe(nf, 64601) == "refused"
