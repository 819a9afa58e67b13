"""reload in a private network namespace: the nft listing, real traffic, live entries.

The official `nft` tool is the independent oracle: it must list our table without
errors, exactly as the golden file says, and real connections from throwaway uids
must pass or fail as the policy says.
"""

import json
import os
import struct
import subprocess

import pytest

from netfence import ir, render

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "golden")

POLICY = """
[settings]
cgroup_base = "{base}"

[profile.no-plain-http]
egress = [ {{ action = "reject", proto = "tcp", ports = [80] }} ]

[profile.lab]
egress = [
  {{ action = "allow", proto = "tcp", ports = [443, "8443-8444"] }},
  {{ action = "allow", proto = "udp", ports = [53], to = ["127.0.0.0/8", "::1"] }},
  {{ action = "deny", proto = "icmp" }},
]
egress_default = "reject"
log = true
account = true

[profile.watched]
egress = [ {{ action = "deny", proto = "tcp", ports = [25] }} ]
mode = "monitor"
account = true

[profile.no-servers]
ingress = [ {{ action = "allow", from = ["loopback"] }} ]
ingress_default = "deny"

[profile.quiet-dns]
egress = [ {{ action = "deny", proto = "udp", ports = [53] }} ]

[[rule]]
users = ["*"]
profiles = ["no-plain-http", "no-servers"]
scope = "user"

[[rule]]
groups = ["students"]
services = ["sshd"]
rhosts = ["!10.0.0.0/8"]
time = "Mo-Fr 08:00-20:00"
profiles = ["lab"]
"""

SERVERS = ["tcp:127.0.0.1:80", "tcp:[::1]:80", "tcp:127.0.0.1:443", "tcp:[::1]:443",
           "tcp:127.0.0.1:8080", "udp:127.0.0.1:53", "udp:[::1]:53", "udp:127.0.0.1:5000"]


def uid_key(uid):
    return struct.pack("=I", uid).hex()


def guard_of(set_name):
    """The guard set the hook fills alongside a profile set (uid-P → any-uid …)."""
    return "any-" + set_name.split("-", 1)[0]


def add_uid(nf, set_name, uid):
    """What a login's hook adds for a user-scope egress profile: the uid in the
    profile's set and in the guard set."""
    for name in (set_name, guard_of(set_name)):
        nf.netns.nft("add", "element", "inet", "netfence", name, f"{{ {uid} }}")


def add_cgroup(nf, set_name, cgroup_id):
    # The nft CLI only takes cgroup paths; go through our netlink layer for raw ids.
    script = ("from netfence.nftnl import Ruleset; import struct,sys; "
              "key = struct.pack('=Q', int(sys.argv[3])).hex(); "
              "Ruleset().add_elements({sys.argv[1]: [key], sys.argv[2]: [key]})")
    nf.netns.run([os.sys.executable, "-c", script, set_name, guard_of(set_name),
                  str(cgroup_id)])


@pytest.fixture
def loaded(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    nf.cli("reload")
    return nf


def test_nft_lists_exactly_the_golden_table(loaded):
    listing = loaded.netns.nft("list", "table", "inet", "netfence").stdout
    with open(os.path.join(GOLDEN, "reload-policy.nft")) as handle:
        assert listing == handle.read()
    parsed = json.loads(loaded.netns.nft("-j", "list", "table", "inet", "netfence").stdout)
    assert any("rule" in item for item in parsed["nftables"])
    # Our own renderer (used by `explain`) prints what nft prints.
    with open(os.path.join(loaded.state_dir, "compiled.json")) as handle:
        table = ir.TableDef.from_json(json.load(handle)["table"])
    assert render.render_table(table) == listing


def test_traffic_follows_the_profiles_per_uid_and_per_session(loaded):
    nf = loaded
    nf.echo_server(SERVERS)
    add_uid(nf, "uid-no-plain-http", 60001)
    add_uid(nf, "uid-lab", 60002)
    session_path, session_cg = nf.make_cgroup("user-60005/session-1")
    add_cgroup(nf, "scg-quiet-dns", session_cg)

    expected = {
        # uid: {(proto, host, port): outcome}
        60001: {("tcp", "127.0.0.1", 80): "refused", ("tcp", "::1", 80): "refused",
                ("tcp", "127.0.0.1", 443): "ok", ("udp", "127.0.0.1", 53): "ok"},
        60002: {("tcp", "127.0.0.1", 80): "refused", ("tcp", "::1", 443): "ok",
                ("tcp", "127.0.0.1", 8080): "refused", ("udp", "::1", 53): "ok",
                ("udp", "127.0.0.1", 53): "ok",
                # A rejected local datagram fails its send() with EPERM, like a drop.
                ("udp", "127.0.0.1", 5000): "dropped"},
        60003: {("tcp", "127.0.0.1", 80): "ok", ("tcp", "::1", 80): "ok",
                ("udp", "127.0.0.1", 5000): "ok"},
        0: {("tcp", "127.0.0.1", 80): "ok", ("udp", "::1", 53): "ok"},
    }
    for uid, cases in expected.items():
        for (proto, host, port), outcome in cases.items():
            got = nf.probe(proto, host, port, uid=uid if uid else None)
            assert got == outcome, f"uid {uid} {proto} {host} {port}: {got} != {outcome}"
    # Session scope: the same uid is restricted inside the session cgroup only.
    assert nf.probe("udp", "127.0.0.1", 53, uid=60003, cgroup=session_path,
                    timeout=0.5) == "dropped"
    assert nf.probe("udp", "127.0.0.1", 53, uid=60003) == "ok"
    assert nf.probe("tcp", "127.0.0.1", 8080, uid=60003, cgroup=session_path) == "ok"


def test_ingress_blocks_other_hosts_but_not_loopback(loaded, netns):
    nf = loaded
    from support.netns import NetNS
    with NetNS() as peer:
        veth = f"nfv{nf.tag[:6]}"
        netns.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                   "netns", str(peer.pid)])
        netns.run(["ip", "addr", "add", "192.0.2.1/24", "dev", veth])
        netns.run(["ip", "link", "set", veth, "up"])
        peer.run(["ip", "addr", "add", "192.0.2.2/24", "dev", "eth0"])
        peer.run(["ip", "link", "set", "eth0", "up"])
        user_cg, user_cg_id = nf.make_cgroup("user-60004")
        session_cg, _ = nf.make_cgroup("user-60004/session-7")
        add_cgroup(nf, "ucg-no-servers", user_cg_id)
        nf.echo_server(["tcp:0.0.0.0:9000", "udp:0.0.0.0:9001"], uid=60004, cgroup=session_cg)
        nf.echo_server(["tcp:0.0.0.0:9100"], uid=60003)        # an unrestricted user
        assert nf.probe("tcp", "127.0.0.1", 9000) == "ok"
        assert nf.probe("tcp", "192.0.2.1", 9000, netns=peer, timeout=0.5) == "dropped"
        assert nf.probe("udp", "192.0.2.1", 9001, netns=peer, timeout=0.5) == "dropped"
        assert nf.probe("tcp", "192.0.2.1", 9100, netns=peer) == "ok"


def test_live_entries_survive_reload_and_removed_profiles_are_reported(loaded):
    """Live entries are those of the session records (real logins here)."""
    from support.livesession import login
    nf = loaded
    login(nf, 60002, ["lab"])
    login(nf, 60003, ["quiet-dns"])
    nf.write_policy(POLICY.format(base=nf.cgroup_base).replace(
        '[profile.quiet-dns]\negress = [ { action = "deny", proto = "udp", ports = [53] } ]\n',
        ""))
    out = nf.cli("reload")
    assert "dropped 1 live entries of set uid-quiet-dns" in out.stderr
    listing = nf.netns.nft("list", "set", "inet", "netfence", "uid-lab").stdout
    assert "elements = { 60002 }" in listing
    assert "quiet-dns" not in nf.netns.nft("list", "table", "inet", "netfence").stdout


def test_broken_policy_changes_nothing_and_keeps_last_known_good(loaded):
    nf = loaded
    before = nf.netns.nft("list", "ruleset").stdout
    with open(os.path.join(nf.state_dir, "compiled.json")) as handle:
        good = handle.read()
    nf.write_policy("[profile.x]\negress = [ { action = \"maybe\" } ]\n", name="netfence.toml")
    out = nf.cli("reload", check=False)
    assert out.returncode == 1
    assert "netfence.toml:2:" in out.stderr
    assert nf.netns.nft("list", "ruleset").stdout == before
    with open(os.path.join(nf.state_dir, "compiled.json")) as handle:
        assert handle.read() == good


def test_flush_removes_the_table_and_unrestricts(loaded):
    nf = loaded
    add_uid(nf, "uid-no-plain-http", 60001)
    out = nf.cli("flush")
    assert "removed table inet netfence" in out.stdout
    assert nf.netns.nft("list", "ruleset").stdout.strip() == ""
    status = json.loads(nf.cli("status", "--json").stdout)
    assert status["table"] is False and status["flushed"] is True


CLIENT = """
import socket, sys
sock = socket.create_connection(("127.0.0.1", 80), timeout=1)
sock.sendall(b"one\\n"); assert sock.recv(16) == b"one\\n"
print("connected", flush=True)
sys.stdin.readline()
try:
    sock.sendall(b"two\\n")
    print("ok" if sock.recv(16) == b"two\\n" else "closed", flush=True)
except OSError as err:
    print(type(err).__name__, flush=True)
"""


def test_a_connection_opened_before_the_rules_is_caught_by_its_next_packet(loaded):
    """Threat model #6: no `ct state established accept` ahead of the profiles."""
    nf = loaded
    nf.echo_server(["tcp:127.0.0.1:80"])
    client = nf.netns.popen(["setpriv", "--reuid=60001", "--regid=60001", "--clear-groups",
                             os.sys.executable, "-c", CLIENT],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "connected"
        add_uid(nf, "uid-no-plain-http", 60001)
        client.stdin.write("\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() in ("ConnectionResetError", "closed")
    finally:
        client.kill()
        client.wait()
