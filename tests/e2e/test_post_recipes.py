"""The blog post's recipes, proven by traffic (docs/policy.md, "The post's recipes, the
netfence way").

For each recipe of the post "Some iptables exploration" (quoted in that section) the
post's own iptables line runs in one test's private network namespace (iptables-nft;
the host's ruleset is never touched) as the baseline, and netfence's policy for it in
another's; both face the same traffic, so the pair shows where netfence behaves as the
recipe intended and where it deliberately differs. The policies are read from the
docs' TOML blocks, so the documented policies are the tested ones.

The "daemon" accounts are system users made with `useradd --system` that never log in:
their processes are started by root with `setpriv --reuid U --regid G ...` inside the
namespace (`nsenter --net=...`), as an init script or systemd's `User=` would.
"""

import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from conftest import read_kv, settle_uid
from support.netns import NetNS
from support.pamsvc import wait_until
from support.users import kill_user_processes, throwaway_group, throwaway_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users, netns")

SUPPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "support")
USER_PYTHON = "/usr/bin/python3"        # other uids cannot reach root's interpreter
HTTP, OTHER = 80, 8080                  # recipe 1 and 2: the blocked port and another
USER_TCP, USER_UDP, ROOT_TCP = 9000, 9001, 9100      # recipe 3's servers
HERE, PEER = "192.0.2.1", "192.0.2.2"   # this namespace and the other host, over a veth

# The post's lines, as the post means them (its SYN,ACK line lacks the 0 after
# --uid-owner, which iptables refuses: see test_recipe_3_as_printed_is_a_syntax_error).
POST_1 = "-A OUTPUT -p tcp --dport 80 -m owner ! --uid-owner 0 -j DROP"
POST_2 = "-A OUTPUT -p tcp --dport 80 -m owner --gid-owner {group} -j DROP"
POST_3 = "-A OUTPUT -p tcp --tcp-flags ALL SYN,ACK -m owner ! --uid-owner 0 -j REJECT"
POST_3_AS_PRINTED = "-A OUTPUT -p tcp --tcp-flags ALL SYN,ACK -m owner ! --uid-owner -j REJECT"
POST_4 = "-A OUTPUT -m owner --pid-owner {pid} -j DROP"

# netfence's policies for them: the TOML blocks of docs/policy.md's section, so that
# the documented policies are the ones tested.
DOCS = os.path.join(os.path.dirname(SUPPORT), "..", "docs", "policy.md")
SECTION = ("## The post's recipes, the netfence way", "## See also")


def documented_policies():
    with open(DOCS) as f:
        text = f.read()
    section = text[text.index(SECTION[0]):text.index(SECTION[1])]
    return re.findall(r"```toml\n(.*?)```", section, re.S)


def profiles_of(block):
    return block[:block.index("[[rule]]")]


DOC_1, DOC_2, DOC_3 = documented_policies()
NO_PLAIN_HTTP, NO_SERVERS = profiles_of(DOC_1), profiles_of(DOC_3)
RECIPE_1 = DOC_1
RECIPE_1_HUMANS = DOC_1.replace('users = ["*"]', 'uids = ["1000-59999"]')
RECIPE_2 = DOC_2.replace('"web-blocked"', '"{group}"')
RECIPE_3 = DOC_3
RECIPE_4 = NO_PLAIN_HTTP + NO_SERVERS


def test_the_documented_policies_are_the_tested_ones():
    assert RECIPE_1_HUMANS != DOC_1 and "{group}" in RECIPE_2
    assert 'scope = "always"' in DOC_1 and 'scope = "always"' in DOC_2
    assert 'users = ["*"]' in DOC_3 and 'scope = "user"' in DOC_3
    assert "[profile.no-plain-http]" in NO_PLAIN_HTTP and "[profile.no-servers]" in NO_SERVERS
    assert profiles_of(DOC_2) == NO_PLAIN_HTTP


@pytest.mark.parametrize("block", [1, 2, 3])
def test_each_documented_policy_passes_check(nf, block):
    nf.write_policy((DOC_1, DOC_2, DOC_3)[block - 1])
    out = nf.cli("check", check=False)
    assert out.returncode == 0, out.stdout + out.stderr


# ---- accounts and processes ----------------------------------------------------------

@dataclass(frozen=True)
class Daemon:
    name: str
    uid: int
    gid: int


@contextmanager
def daemon_account():
    """A system account like www-data or _apt: no home, no shell, never logs in."""
    name = f"nfd{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    try:
        yield Daemon(name, entry.pw_uid, entry.pw_gid)
    finally:
        kill_user_processes(entry.pw_uid)
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


@pytest.fixture
def daemon():
    with daemon_account() as d:
        settle_uid(d.uid)
        yield d


def as_ids(uid, gid, groups=None):
    """setpriv argv prefix: real and effective uid and gid, and the supplementary
    groups: none (the default), the account's own from NSS ("init"), or a list."""
    if groups is None:
        extra = ["--clear-groups"]
    elif groups == "init":
        extra = ["--init-groups"]
    else:
        extra = [f"--groups={','.join(str(g) for g in groups)}"]
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", *extra]


def probe(ns, port, ids=(), host="127.0.0.1", proto="tcp", timeout=1.0):
    """One connection attempt from inside `ns` as `ids` (as_ids); "ok", "refused",
    "dropped" (no answer or a local drop) or "error:..."."""
    argv = [*ids, USER_PYTHON, "-I", "-S", os.path.join(SUPPORT, "probe.py"), proto, host,
            str(port), str(timeout)]
    return ns.run(argv).stdout.strip()


def iptables(ns, line, check=True):
    return ns.run(["iptables", *line.split()], check=check)


@contextmanager
def peer_host(ns):
    """Another machine: a second namespace joined to `ns` by a veth pair (HERE in ns,
    PEER there), so that connections come from elsewhere and not through lo."""
    with NetNS() as peer:
        veth = f"nfr{secrets.token_hex(3)}"
        ns.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                "netns", str(peer.pid)])
        ns.run(["ip", "addr", "add", f"{HERE}/24", "dev", veth])
        ns.run(["ip", "link", "set", veth, "up"])
        peer.run(["ip", "addr", "add", f"{PEER}/24", "dev", "eth0"])
        peer.run(["ip", "link", "set", "eth0", "up"])
        wait_until(lambda: probe(peer, 9, host=HERE, timeout=0.3) == "refused",
                   timeout=10, what="the veth link")
        yield peer


def syncookies(ns, mode):
    """net.ipv4.tcp_syncookies of this namespace only (it is per network namespace):
    2 answers every SYN with a cookie, as the kernel does under a SYN flood."""
    ns.run(["sh", "-c", f"echo {mode} > /proc/sys/net/ipv4/tcp_syncookies"])


def watch_synacks(ns, ports):
    """A counting-only table of our own in the namespace (priority raw, before every
    filter): the SYN,ACK segments each local port sends. A listener sends one only if
    the SYN reached it."""
    rules = "\n".join(f"    tcp sport {p} tcp flags & (syn | ack) == syn | ack counter"
                      for p in ports)
    text = ("table inet watch {\n  chain out {\n"
            "    type filter hook output priority raw; policy accept;\n"
            f"{rules}\n  }}\n}}\n")
    ns.run(["nft", "-f", "-"], input=text, stdin=None)


def synacks_sent(ns):
    listing = ns.nft("list", "chain", "inet", "watch", "out").stdout
    return {int(port): int(n) for port, n in
            re.findall(r"tcp sport (\d+) .*counter packets (\d+)", listing)}


def listening(ns, port, proto="tcp"):
    flag = "-Hltn" if proto == "tcp" else "-Hlun"
    return f":{port} " in ns.run(["ss", flag]).stdout


def copy_readable(nf, name):
    """A copy of tests/support/NAME that any uid can read (pytest's checkout may not be)."""
    path = f"{nf.root}/{name}"
    shutil.copyfile(os.path.join(SUPPORT, name), path)
    os.chmod(path, 0o644)
    return path


def load(nf, body):
    nf.write_policy(f'[settings]\ncgroup_base = "{nf.cgroup_base}"\n\n{body}')
    return nf.cli("reload")


def web_servers(nf):
    """root's servers, outside any session: port 80 (IPv4 and IPv6) and another port."""
    return nf.echo_server([f"tcp:127.0.0.1:{HTTP}", f"tcp:[::1]:{HTTP}",
                                 f"tcp:127.0.0.1:{OTHER}"])


# ---- recipe 1: non-root users must not connect to port 80 ------------------------------

def recipe_1_outcomes(nf, daemon, nobody_uid):
    daemon_ids = as_ids(daemon.uid, daemon.gid)
    return {
        "daemon 80": probe(nf.netns, HTTP, daemon_ids),
        "daemon other port": probe(nf.netns, OTHER, daemon_ids),
        "daemon 80 over IPv6": probe(nf.netns, HTTP, daemon_ids, host="::1"),
        "uid without an account 80": probe(nf.netns, HTTP, as_ids(nobody_uid, nobody_uid)),
        "root 80": probe(nf.netns, HTTP),
    }


def unused_uid():
    """A uid no account has (the post's rule covers every uid but 0, named or not)."""
    for uid in range(61000, 62000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no free uid in 61000-61999")


def test_recipe_1_the_post_s_rule(nf, daemon):
    web_servers(nf)
    iptables(nf.netns, POST_1)
    assert recipe_1_outcomes(nf, daemon, unused_uid()) == {
        "daemon 80": "dropped", "daemon other port": "ok",
        "daemon 80 over IPv6": "ok",            # iptables is IPv4 only: ip6tables too
        "uid without an account 80": "dropped", "root 80": "ok"}


def test_recipe_1_netfence_always_rule_fences_a_daemon_that_never_logs_in(nf, daemon):
    web_servers(nf)
    load(nf, RECIPE_1)
    # right after reload, with no login anywhere: a daemon uid is fenced, root is not
    assert recipe_1_outcomes(nf, daemon, unused_uid()) == {
        "daemon 80": "dropped", "daemon other port": "ok",
        "daemon 80 over IPv6": "dropped",       # one inet table: both families
        "uid without an account 80": "dropped", "root 80": "ok"}
    assert json.loads(nf.cli("status", "--json").stdout)["sessions"] == []   # no login
    # the rule goes, reload: unfenced
    load(nf, NO_PLAIN_HTTP)
    assert probe(nf.netns, HTTP, as_ids(daemon.uid, daemon.gid)) == "ok"


def test_recipe_1_netfence_uid_range_for_human_users_only(nf, daemon):
    """The more sensible form of the recipe (and of `--uid-owner 1000-59999`): human
    users' uids by range; system daemons outside it keep port 80."""
    web_servers(nf)
    load(nf, RECIPE_1_HUMANS)
    with throwaway_user() as human:
        assert 1000 <= human.uid <= 59999
        assert probe(nf.netns, HTTP, as_ids(human.uid, human.gid)) == "dropped"
        assert probe(nf.netns, OTHER, as_ids(human.uid, human.gid)) == "ok"
    assert daemon.uid < 1000
    assert probe(nf.netns, HTTP, as_ids(daemon.uid, daemon.gid)) == "ok"
    assert probe(nf.netns, HTTP, as_ids(60500, 60500)) == "ok"       # above the range


# ---- recipe 2: the --gid-owner variant -------------------------------------------------

@pytest.fixture
def group_and_member():
    """A restricted group and a user who is a supplementary member of it (in
    /etc/group; the user's primary group is its own)."""
    with throwaway_group("nfweb") as group:
        with throwaway_user(groups=(group,)) as member:
            settle_uid(member.uid)
            yield group, member


def recipe_2_outcomes(nf, daemon, group, member):
    return {
        # a socket whose effective gid is the group's (sg, setgid programs, Group=)
        "non-member, egid = group": probe(nf.netns, HTTP, as_ids(daemon.uid, group.gid)),
        "non-member, own egid": probe(nf.netns, HTTP, as_ids(daemon.uid, daemon.gid)),
        # a member whose process has dropped its supplementary groups
        "member, own egid, no groups": probe(nf.netns, HTTP, as_ids(member.uid, member.gid)),
        # a member with its supplementary groups from NSS, as a login gets them
        "member, own egid, its groups": probe(nf.netns, HTTP,
                                              as_ids(member.uid, member.gid, "init")),
        # a non-member given the group as a supplementary group by root
        "non-member, group supplementary": probe(nf.netns, HTTP,
                                                 as_ids(daemon.uid, daemon.gid, [group.gid])),
        "member, other port": probe(nf.netns, OTHER, as_ids(member.uid, member.gid)),
        # root with the group as effective group: the socket's gid is the group's
        "root, egid = group": probe(nf.netns, HTTP, as_ids(0, group.gid)),
    }


def test_recipe_2_the_post_s_gid_owner(nf, daemon, group_and_member):
    group, member = group_and_member
    web_servers(nf)
    iptables(nf.netns, POST_2.format(group=group.name))
    # --gid-owner compares the effective (fs) gid of the socket's opener, nothing else
    assert recipe_2_outcomes(nf, daemon, group, member) == {
        "non-member, egid = group": "dropped", "non-member, own egid": "ok",
        "member, own egid, no groups": "ok", "member, own egid, its groups": "ok",
        "non-member, group supplementary": "ok", "member, other port": "ok",
        "root, egid = group": "dropped"}
    # --suppl-groups (not in the post) also looks at the process's supplementary groups,
    # as they are when the socket is made, not at the group's members
    iptables(nf.netns, "-F OUTPUT")
    iptables(nf.netns, POST_2.format(group=group.name).replace("-j", "--suppl-groups -j"))
    assert recipe_2_outcomes(nf, daemon, group, member) == {
        "non-member, egid = group": "dropped", "non-member, own egid": "ok",
        "member, own egid, no groups": "ok", "member, own egid, its groups": "dropped",
        "non-member, group supplementary": "dropped", "member, other port": "ok",
        "root, egid = group": "dropped"}


def test_recipe_2_netfence_groups_match_egid_and_members(nf, daemon, group_and_member):
    """`groups` at scope always: the socket's effective gid (meta skgid, the post's
    --gid-owner) and every member's uid from NSS, whatever groups its process holds."""
    group, member = group_and_member
    web_servers(nf)
    load(nf, RECIPE_2.replace("{group}", group.name))
    assert recipe_2_outcomes(nf, daemon, group, member) == {
        "non-member, egid = group": "dropped",          # skgid
        "non-member, own egid": "ok",
        "member, own egid, no groups": "dropped",       # NSS member: by uid
        "member, own egid, its groups": "dropped",      # NSS member: by uid
        "non-member, group supplementary": "ok",        # neither: see docs/policy.md
        "member, other port": "ok",
        "root, egid = group": "dropped"}                # skgid, whoever owns the socket
    # explain says which mechanism catches whom
    explained = nf.cli("explain", member.name).stdout
    assert f"member of group {group.name} (supplementary)" in explained, explained
    assert "meta skgid" in explained, explained
    # a user added to the group later is fenced by the next gc, without a reload
    with throwaway_user() as late:
        late_ids = as_ids(late.uid, late.gid)
        assert probe(nf.netns, HTTP, late_ids) == "ok"
        subprocess.run(["gpasswd", "-a", late.name, group.name], check=True,
                       capture_output=True)
        nf.cli("gc")
        assert probe(nf.netns, HTTP, late_ids) == "dropped"


# ---- recipe 3: no servers for non-root users --------------------------------------------

def servers_of(nf, ids=(), cgroup=None):
    """echo servers started by root as `ids` (a daemon's own listeners)."""
    argv = [*ids, USER_PYTHON, "-I", "-S", copy_readable(nf, "echo.py"),
            f"tcp:0.0.0.0:{USER_TCP}", f"udp:0.0.0.0:{USER_UDP}"]
    proc = nf.netns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True)
    nf._procs.append(proc)
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def test_recipe_3_as_printed_is_a_syntax_error(netns):
    """The post prints `! --uid-owner -j REJECT`: iptables takes `-j` for the uid."""
    out = iptables(netns, POST_3_AS_PRINTED, check=False)
    assert out.returncode == 2 and 'Bad value for "--uid-owner" option: "-j"' in out.stderr


def test_recipe_3_the_post_s_rule_kills_the_handshake_on_output(nf, daemon):
    nf.echo_server([f"tcp:0.0.0.0:{ROOT_TCP}"])               # root's service
    servers_of(nf, as_ids(daemon.uid, daemon.gid))            # a daemon's own server
    iptables(nf.netns, POST_3)
    watch_synacks(nf.netns, (USER_TCP, ROOT_TCP))
    with peer_host(nf.netns) as peer:
        assert probe(peer, USER_TCP, host=HERE) == "dropped"
        # the SYN reached the listener, which answered; the answer died on output (its
        # REJECT's ICMP error goes to the SYN,ACK's sender, the server, so the client
        # only times out)
        assert synacks_sent(nf.netns)[USER_TCP] >= 1
        assert probe(peer, ROOT_TCP, host=HERE) == "ok"
        assert probe(peer, USER_UDP, host=HERE, proto="udp") == "ok"   # no handshake
        assert probe(nf.netns, USER_TCP) == "dropped"         # local clients too
        # Under SYN cookies (a SYN flood, or tcp_syncookies=2) the kernel sends the
        # SYN,ACK without a socket; the owner match takes "no socket" as "not uid 0",
        # so root's services are cut off too: the rule fails closed for everybody.
        syncookies(nf.netns, 2)
        before = synacks_sent(nf.netns)[ROOT_TCP]
        assert probe(peer, ROOT_TCP, host=HERE) == "dropped"
        assert synacks_sent(nf.netns)[ROOT_TCP] > before
        assert probe(peer, USER_TCP, host=HERE) == "dropped"


def test_recipe_3_in_native_nft_fails_open_under_syncookies(nf, daemon):
    """The same rule written for nft (`meta skuid != 0`, as `iptables-translate` gives
    it) behaves the other way round under SYN cookies: a packet without a socket
    matches no meta skuid test, so every cookie SYN,ACK passes, the daemon's too."""
    servers_of(nf, as_ids(daemon.uid, daemon.gid))
    nf.netns.run(["nft", "-f", "-"], stdin=None, input=(
        "table inet post {\n  chain out {\n"
        "    type filter hook output priority filter; policy accept;\n"
        "    tcp flags & (fin | syn | rst | psh | ack | urg) == syn | ack "
        "meta skuid != 0 reject\n  }\n}\n"))
    with peer_host(nf.netns) as peer:
        assert probe(peer, USER_TCP, host=HERE) == "dropped"
        syncookies(nf.netns, 2)
        assert probe(peer, USER_TCP, host=HERE) == "ok"


def test_recipe_3_netfence_drops_the_syn_on_input_for_a_logged_in_user(fence, user):
    nf = fence.nf
    echo = copy_readable(nf, "echo.py")
    nf.echo_server([f"tcp:0.0.0.0:{ROOT_TCP}"])
    fence.load(RECIPE_3)                    # users = ["*"]: the one user logging in
    watch_synacks(nf.netns, (USER_TCP, ROOT_TCP))
    with peer_host(nf.netns) as peer:
        with fence.su_shell(user) as shell:
            shell.out(f"nohup {USER_PYTHON} -I -S {echo} tcp:0.0.0.0:{USER_TCP} "
                      f"udp:0.0.0.0:{USER_UDP} </dev/null >/dev/null 2>&1 &")
            wait_until(lambda: listening(nf.netns, USER_TCP) and listening(
                nf.netns, USER_UDP, "udp"), what="the user's server")
            for cookies in (1, 2):          # the same with and without SYN cookies
                syncookies(nf.netns, cookies)
                before = synacks_sent(nf.netns)[USER_TCP]
                assert probe(peer, USER_TCP, host=HERE) == "dropped"
                # the SYN from the other host never reached the user's listener
                assert synacks_sent(nf.netns)[USER_TCP] == before
                assert probe(peer, USER_UDP, host=HERE, proto="udp") == "dropped"
                assert probe(peer, ROOT_TCP, host=HERE) == "ok"
                assert probe(nf.netns, USER_TCP) == "ok"        # loopback: allowed
        # user scope: the server outlives the login, and stays fenced
        assert shell.proc.returncode == 0, shell.stderr()
        assert probe(peer, USER_TCP, host=HERE) == "dropped"
        # A listener of the same uid that never went through a fenced login (started
        # by root with setpriv) is in no fenced cgroup: not covered (netfence run is)
        nf.spawn([*as_ids(user.uid, user.gid), USER_PYTHON, "-I", "-S", echo,
                  f"tcp:0.0.0.0:{USER_TCP + 10}"]).stdout.readline()
        assert probe(peer, USER_TCP + 10, host=HERE) == "ok"


# ---- recipe 4: the --pid-owner launch-script idea ---------------------------------------

# A daemon as init scripts start them: the launched process forks, the child calls
# setsid and forks again, both exit; the grandchild serves on USER_TCP and, every 0.1 s,
# tries port 80 and another port, writing "pid=P 80=... 8080=..." to OUT, until STOP
# exists.
DAEMON = """\
import os, sys, threading, time
probe_mod = {"__name__": "probe"}
exec(open(sys.argv[1]).read(), probe_mod)
echo_mod = {"__name__": "echo"}
exec(open(sys.argv[2]).read(), echo_mod)
out, stop, ports, serve = sys.argv[3], sys.argv[4], sys.argv[5].split(","), sys.argv[6]
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
threading.Thread(target=echo_mod["main"], args=([serve],), daemon=True).start()
while not os.path.exists(stop):
    res = " ".join(f"{p}={probe_mod['probe']('tcp', '127.0.0.1', int(p), 0.5)}"
                   for p in ports)
    with open(out + ".tmp", "w") as f:
        f.write(f"pid={os.getpid()} sid={os.getsid(0)} {res}\\n")
    os.replace(out + ".tmp", out)
    time.sleep(0.1)
"""


def test_recipe_4_pid_owner_is_gone_from_linux(netns):
    """--pid-owner and --sid-owner were removed in Linux 2.6.14; iptables refuses them."""
    for line in (POST_4.format(pid=1), POST_4.format(pid=1).replace("pid", "sid")):
        out = iptables(netns, line, check=False)
        assert out.returncode == 2 and "unknown option" in out.stderr, out.stderr


def test_recipe_4_netfence_run_fences_a_daemon_tree_and_nothing_else(nf, daemon):
    web_servers(nf)
    load(nf, RECIPE_4)
    script = f"{nf.root}/daemon.py"
    with open(script, "w") as f:
        f.write(DAEMON)
    os.chmod(script, 0o644)
    state = f"{nf.root}/daemon-state"
    os.makedirs(state)
    os.chown(state, daemon.uid, daemon.gid)
    out, stop = f"{state}/out", f"{state}/stop"
    argv = nf.cli_argv("run", "--profile", "no-plain-http", "--profile", "no-servers",
                       "--user", daemon.name, "--name", "recipe4", "--",
                       USER_PYTHON, "-I", "-S", script, copy_readable(nf, "probe.py"),
                       copy_readable(nf, "echo.py"), out, stop, f"{HTTP},{OTHER}",
                       f"tcp:0.0.0.0:{USER_TCP}")
    run = nf.netns.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, text=True)
    nf._procs.append(run)

    def first_round():
        if run.poll() not in (None, 0):
            raise AssertionError(f"netfence run exited {run.returncode}: {run.stderr.read()}")
        return read_kv(out)
    seen = wait_until(first_round, timeout=15, what="the daemon's first round")
    with peer_host(nf.netns) as peer:
        # the daemon, two forks and a setsid away from what `run` started
        assert (seen["80"], seen["8080"]) == ("dropped", "ok"), seen
        # (its session is the middle child's, which exited: a session of its own)
        assert seen["pid"] != str(run.pid) and seen["sid"] not in (seen["pid"], str(run.pid))
        assert probe(peer, USER_TCP, host=HERE) == "dropped"
        assert probe(nf.netns, USER_TCP) == "ok"                # loopback: allowed
        # nothing else: the same uid outside the tree, and root
        assert probe(nf.netns, HTTP, as_ids(daemon.uid, daemon.gid)) == "ok"
        assert probe(nf.netns, HTTP) == "ok"
        assert "recipe4" in nf.cli("status").stdout
        # the tree ends: its entries go
        with open(stop, "w"):
            pass
        assert run.wait(timeout=15) == 0, run.stderr.read()

        def gone():
            nf.cli("gc")
            return "recipe4" not in nf.cli("status").stdout
        wait_until(gone, timeout=15, what="the tree's entries to go")
        assert probe(nf.netns, HTTP, as_ids(daemon.uid, daemon.gid)) == "ok"
