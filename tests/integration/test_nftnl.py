"""nftnl against the kernel, each test in a throwaway network namespace.

`nft list` (nftables 1.0.6, a separate implementation) is the oracle: a table we
write must list exactly like the same table written by nft from text.
"""

import ctypes
import errno
import json
import os
import struct
import threading
import uuid

import pytest

pytest.importorskip("pyroute2")

from netfence import ir  # noqa: E402
from netfence.cgroups import cgroup2_mount  # noqa: E402
from netfence.errors import GenerationChanged, KernelError  # noqa: E402
from netfence.nftnl import Ruleset  # noqa: E402

S, C, R = ir.SetDef, ir.ChainDef, ir.RuleDef
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ruleset_in(ns):
    """A Ruleset whose socket lives in `ns`.

    A netlink socket belongs to the namespace of the thread that creates it, so a
    short-lived thread enters the namespace (setns affects only that thread), opens
    the connection and ends; the test process itself never leaves the host namespace.
    """
    box = {}

    def enter_and_open():
        fd = os.open(ns.path, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            box["ruleset"] = Ruleset()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
        finally:
            os.close(fd)

    thread = threading.Thread(target=enter_and_open)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["ruleset"]


def uid_key(uid):
    return struct.pack("=I", uid).hex()


def cgroup_key(cgroup_id):
    return struct.pack("=Q", cgroup_id).hex()


@pytest.fixture
def cgroup_dir():
    path = os.path.join(cgroup2_mount(), f"nftest-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)


# -- a table with every expression kind ----------------------------------------------

TCP, ANY_STATE = "06", "00000000"
EVERY_KIND = ir.TableDef(
    sets=(S("uid-web", "uid"), S("uid-db", "uid"),
          S("scg-web", "cgroupsv2"), S("ucg-web", "cgroupsv2"),
          S("ruid-web", "uid", timeout=True), S("acct-out", "cgroupsv2", counter=True)),
    chains=(C("out-web"), C("deny-web"), C("emit-web"), C("egress", hook="output"),
            C("ingress", hook="input", priority=-10, policy="accept")),
    rules=(
        R("out-web", (("meta", "nfproto"), ("cmp", "eq", "02"),
                      ("payload", "network", 16, 4), ("bitwise", "ff000000", "00000000"),
                      ("cmp", "eq", "0a000000"),
                      ("meta", "l4proto"), ("cmp", "eq", TCP),
                      ("payload", "transport", 2, 2), ("cmp", "eq", "0050"),
                      ("counter",), ("reject", "tcp-reset")), "web-only egress 1 (a.toml:3)"),
        R("out-web", (("meta", "l4proto"), ("cmp", "eq", TCP),
                      ("payload", "transport", 2, 2), ("range", "eq", "03e8", "07d0"),
                      ("counter",), ("verdict", "return")), "range"),
        R("out-web", (("meta", "l4proto"), ("cmp", "eq", TCP),
                      ("payload", "transport", 2, 2), ("range", "neq", "03e8", "07d0"),
                      ("verdict", "accept"))),
        R("out-web", (("meta", "oif"), ("cmp", "eq", "01000000"), ("verdict", "return"))),
        R("out-web", (("meta", "l4proto"), ("cmp", "eq", TCP),
                      ("payload", "transport", 2, 2), ("cmp", "lt", "0400"),
                      ("verdict", "drop"))),
        R("out-web", (("meta", "l4proto"), ("cmp", "eq", TCP),
                      ("payload", "transport", 2, 2), ("cmp", "gte", "f000"),
                      ("verdict", "goto", "deny-web"))),
        R("out-web", (("meta", "nfproto"), ("cmp", "eq", "0a"),
                      ("payload", "network", 24, 16),
                      ("cmp", "eq", "00000000000000000000000000000001"),
                      ("verdict", "return"))),
        R("out-web", (("counter",), ("reject", "icmpx-port-unreachable")), "default"),
        R("deny-web", (("limit", 5, 1, 10), ("log", "netfence deny profile=web ", 8))),
        R("deny-web", (("verdict", "drop"),)),
        R("emit-web", (("meta", "mark", 2), ("socket", "cgroupv2", 3), ("meta_set", "mark", 1),
                       ("nflog", "netfence web", 5140, 128), ("meta_set", "mark", 2),
                       ("verdict", "return"))),
        R("emit-web", (("nflog", "netfence web nocg", 5140, 128),)),
        R("egress", (("socket", "cgroupv2", 3), ("lookup", "acct-out"))),
        R("egress", (("meta", "skuid"), ("lookup", "uid-web"), ("verdict", "jump", "out-web"))),
        R("egress", (("meta", "skuid"), ("lookup", "uid-db"), ("verdict", "jump", "out-web"))),
        R("egress", (("socket", "cgroupv2", 3), ("lookup", "scg-web"),
                     ("verdict", "jump", "out-web"))),
        R("ingress", (("meta", "iif"), ("cmp", "eq", "01000000"), ("verdict", "accept"))),
        R("ingress", (("ct", "state"), ("bitwise", "08000000", ANY_STATE),
                      ("cmp", "neq", ANY_STATE), ("socket", "cgroupv2", 2),
                      ("lookup", "ucg-web"), ("verdict", "jump", "out-web"))),
    ))

EXPECTED_LINES = [
    'ip daddr 10.0.0.0/8 tcp dport 80 counter packets 0 bytes 0 reject with tcp reset '
    'comment "web-only egress 1 (a.toml:3)"',
    'tcp dport 1000-2000 counter packets 0 bytes 0 return comment "range"',
    'tcp dport != 1000-2000 accept',
    'oif "lo" return',
    'tcp dport < 1024 drop',
    'tcp dport >= 61440 goto deny-web',
    'ip6 daddr ::1 return',
    'counter packets 0 bytes 0 reject comment "default"',
    'limit rate 5/second burst 10 packets log prefix "netfence deny profile=web " flags skuid',
    'meta skuid @uid-web jump out-web',
    'meta mark set socket cgroupv2 level 3 log prefix "netfence web" group 5140 snaplen 128 '
    'meta mark set meta mark return',
    'log prefix "netfence web nocg" group 5140 snaplen 128',
    'socket cgroupv2 level 3 @acct-out',
    'counter',
    'socket cgroupv2 level 3 @scg-web jump out-web',
    'type filter hook input priority filter - 10; policy accept;',
    'iif "lo" accept',
    'ct state new socket cgroupv2 level 2 @ucg-web jump out-web',
]


def listing_lines(ns, *what):
    return [line.strip() for line in ns.nft("list", *what).stdout.splitlines()]


def test_round_trip_every_expression(netns):
    with ruleset_in(netns) as ruleset:
        assert not ruleset.table_exists()
        assert ruleset.read_table() is None
        ruleset.replace_table(EVERY_KIND, {})
        assert ruleset.table_exists()
        assert ruleset.read_table() == EVERY_KIND          # every attribute arrived
        assert ruleset.read_elements() == {s.name: [] for s in EVERY_KIND.sets}
        counters = ruleset.read_counters()
    lines = listing_lines(netns, "table", "inet", "netfence")
    for expected in EXPECTED_LINES:
        assert expected in lines
    listed = json.loads(netns.nft("-j", "list", "table", "inet", "netfence").stdout)
    rules = [item["rule"] for item in listed["nftables"] if "rule" in item]
    assert len(rules) == len(EVERY_KIND.rules)
    assert [(c, r) for c, r, _p, _b in counters] == [
        ("out-web", "web-only egress 1 (a.toml:3)"), ("out-web", "range"),
        ("out-web", "default")]


NFT_TEXT = """table inet {name} {{
    set uid-a {{ type uid; }}
    set cg-a {{ type cgroupsv2; }}
    set acct-a {{ type cgroupsv2; counter; }}
    chain out-a {{
        ip daddr 10.1.2.3 counter accept
        tcp dport 443 return
        oif "lo" return
        limit rate 5/second burst 10 packets log prefix "x " flags skuid
        meta mark set meta mark log prefix "y" group 7 snaplen 64
        reject
        drop
    }}
    chain egress {{ type filter hook output priority filter; policy accept;
        meta skuid @uid-a jump out-a
        socket cgroupv2 level 3 @cg-a goto out-a
    }}
    chain ingress {{ type filter hook input priority filter; policy accept;
        ct state new socket cgroupv2 level 2 @cg-a jump out-a
    }}
}}
"""

SAME_AS_NFT_TEXT = ir.TableDef(
    sets=(S("uid-a", "uid"), S("cg-a", "cgroupsv2"), S("acct-a", "cgroupsv2", counter=True)),
    chains=(C("out-a"), C("egress", hook="output"), C("ingress", hook="input")),
    rules=(
        R("out-a", (("meta", "nfproto"), ("cmp", "eq", "02"), ("payload", "network", 16, 4),
                    ("cmp", "eq", "0a010203"), ("counter",), ("verdict", "accept"))),
        R("out-a", (("meta", "l4proto"), ("cmp", "eq", TCP), ("payload", "transport", 2, 2),
                    ("cmp", "eq", "01bb"), ("verdict", "return"))),
        R("out-a", (("meta", "oif"), ("cmp", "eq", "01000000"), ("verdict", "return"))),
        R("out-a", (("limit", 5, 1, 10), ("log", "x ", 8))),
        R("out-a", (("meta", "mark"), ("meta_set", "mark", 1), ("nflog", "y", 7, 64))),
        R("out-a", (("reject", "icmpx-port-unreachable"),)),
        R("out-a", (("verdict", "drop"),)),
        R("egress", (("meta", "skuid"), ("lookup", "uid-a"), ("verdict", "jump", "out-a"))),
        R("egress", (("socket", "cgroupv2", 3), ("lookup", "cg-a"), ("verdict", "goto", "out-a"))),
        R("ingress", (("ct", "state"), ("bitwise", "08000000", ANY_STATE),
                      ("cmp", "neq", ANY_STATE), ("socket", "cgroupv2", 2), ("lookup", "cg-a"),
                      ("verdict", "jump", "out-a"))),
    ))


def test_same_as_nft(netns, cgroup_dir):
    """nft's own table and ours: same kernel expressions, same listing."""
    netns.run(["nft", "-f", "-"], input=NFT_TEXT.format(name="ref"), stdin=None)
    cg_path = os.path.relpath(cgroup_dir, "/sys/fs/cgroup")
    netns.nft("add", "element", "inet", "ref", "uid-a", "{ 0, 65534 }")
    netns.nft("add", "element", "inet", "ref", "cg-a", f'{{ "{cg_path}" }}')
    elements = {"uid-a": [uid_key(0), uid_key(65534)],
                "cg-a": [cgroup_key(os.stat(cgroup_dir).st_ino)]}
    with ruleset_in(netns) as ruleset:
        ruleset.replace_table(SAME_AS_NFT_TEXT, elements)
        ref = ruleset.read_table("ref")
        assert ref.rules == SAME_AS_NFT_TEXT.rules
        assert ref.sets == SAME_AS_NFT_TEXT.sets
        assert _sorted(ruleset.read_elements("ref")) == _sorted(ruleset.read_elements())
    ours = netns.nft("list", "table", "inet", "netfence").stdout
    theirs = netns.nft("list", "table", "inet", "ref").stdout
    assert ours == theirs.replace("table inet ref", "table inet netfence")


def test_elements(netns, cgroup_dir):
    table = ir.TableDef(sets=(S("uid-a", "uid"), S("scg-a", "cgroupsv2")), chains=(), rules=())
    cg = cgroup_key(os.stat(cgroup_dir).st_ino)
    with ruleset_in(netns) as ruleset:
        ruleset.replace_table(table, {})
        ruleset.add_elements({"uid-a": [uid_key(1000), uid_key(65534)], "scg-a": [cg]})
        ruleset.add_elements({"uid-a": [uid_key(1000)]})            # already there: fine
        assert _sorted(ruleset.read_elements()) == {
            "uid-a": sorted([uid_key(1000), uid_key(65534)]), "scg-a": [cg]}
        uid_lines = listing_lines(netns, "set", "inet", "netfence", "uid-a")
        assert "elements = { 1000, 65534 }" in uid_lines
        cg_lines = listing_lines(netns, "set", "inet", "netfence", "scg-a")
        cg_path = os.path.relpath(cgroup_dir, "/sys/fs/cgroup")
        assert f'elements = {{ "{cg_path}" }}' in cg_lines

        gone = {"uid-a": [uid_key(1000)], "scg-a": [cg]}
        ruleset.destroy_elements(gone)
        ruleset.destroy_elements(gone)                             # absent: not an error
        assert ruleset.read_elements() == {"uid-a": [uid_key(65534)], "scg-a": []}

        live = ruleset.read_elements()
        ruleset.replace_table(table, {**live, "uid-removed-profile": [uid_key(5)]})
        assert ruleset.read_elements() == live

        with pytest.raises(KernelError) as info:
            ruleset.add_elements({"uid-nosuch": [uid_key(1)]})
        assert info.value.errno == errno.ENOENT
        assert "uid-nosuch" in info.value.operation


def _sorted(elements):
    return {name: sorted(keys) for name, keys in elements.items()}


BROKEN_JUMP = ir.TableDef(sets=(), chains=(C("egress", hook="output"),), rules=(
    R("egress", (("counter",),)),
    R("egress", (("verdict", "jump", "nosuch"),)),))
BROKEN_LOOKUP = ir.TableDef(sets=(S("uid-a", "uid"),), chains=(C("a"),), rules=(
    R("a", (("meta", "skuid"), ("lookup", "uid-a"), ("verdict", "drop"))),
    R("a", (("counter",),)),
    R("a", (("meta", "skuid"), ("lookup", "uid-missing"), ("verdict", "drop"))),))


BROKEN_DUPLICATE = ir.TableDef(sets=(S("uid-a", "uid"),), chains=(C("a"), C("b"), C("a")),
                               rules=())
BROKEN_SOCKET_LEVEL = ir.TableDef(sets=(), chains=(C("egress", hook="output"),), rules=(
    R("egress", (("socket", "cgroupv2", 300),)),))


@pytest.mark.parametrize("broken, operation, code", [
    (BROKEN_JUMP, "add rule #2 to chain egress", errno.ENOENT),
    (BROKEN_LOOKUP, "add rule #3 to chain a", errno.ENOENT),
    (BROKEN_DUPLICATE, "add chain a", errno.EEXIST),
    (BROKEN_SOCKET_LEVEL, "add rule #1 to chain egress", errno.ERANGE)],
    ids=["jump", "lookup", "duplicate", "level"])
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "replacing"])
def test_rejected_batch_changes_nothing(netns, broken, operation, code, existing):
    with ruleset_in(netns) as ruleset:
        if existing:
            ruleset.replace_table(EVERY_KIND, {"uid-web": [uid_key(1000)]})
        netns.nft("add", "table", "inet", "other")
        before = netns.nft("list", "ruleset").stdout
        generation = ruleset.generation()
        with pytest.raises(KernelError) as info:
            ruleset.replace_table(broken, {})
        assert info.value.operation == operation
        assert info.value.errno == code
        assert netns.nft("list", "ruleset").stdout == before
        assert ruleset.generation() == generation


def test_generation_changed(netns):
    with ruleset_in(netns) as ruleset:
        ruleset.replace_table(EVERY_KIND, {})
        generation = ruleset.generation()
        netns.nft("add", "table", "inet", "other")             # another process
        before = netns.nft("list", "ruleset").stdout
        assert ruleset.generation() != generation
        with pytest.raises(GenerationChanged) as info:
            ruleset.replace_table(SAME_AS_NFT_TEXT, {}, genid=generation)
        assert info.value.errno == errno.ERESTART
        assert netns.nft("list", "ruleset").stdout == before
        ruleset.replace_table(SAME_AS_NFT_TEXT, {}, genid=ruleset.generation())
        assert ruleset.read_table() == SAME_AS_NFT_TEXT


def test_delete_table(netns):
    with ruleset_in(netns) as ruleset:
        assert ruleset.delete_table() is False
        ruleset.replace_table(EVERY_KIND, {})
        assert ruleset.delete_table() is True
        assert not ruleset.table_exists()
        assert ruleset.read_elements() == {}
        assert ruleset.read_counters() == []
    assert netns.nft("list", "ruleset").stdout == ""


def test_large_table(netns):
    """One sendmsg() with a few hundred rules and thousands of elements."""
    rules = tuple(R("out-a", (("meta", "l4proto"), ("cmp", "eq", TCP),
                             ("payload", "transport", 2, 2),
                             ("cmp", "eq", (1000 + i).to_bytes(2, "big").hex()),
                             ("counter",), ("verdict", "return")), f"rule {i}")
                  for i in range(400))
    table = ir.TableDef(sets=(S("uid-a", "uid"),), chains=(C("out-a"),), rules=rules)
    keys = [uid_key(i) for i in range(3000)]
    with ruleset_in(netns) as ruleset:
        ruleset.replace_table(table, {"uid-a": keys})
        assert ruleset.read_table() == table
        assert sorted(ruleset.read_elements()["uid-a"]) == sorted(keys)
        assert len(ruleset.read_counters()) == 400


# -- real traffic ---------------------------------------------------------------------

LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8080)); s.listen(16); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.close()
"""
CLIENT = """
import errno, socket
try:
    socket.create_connection(("127.0.0.1", 8080), timeout=5).close(); print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, e))
"""
SMOKE = ir.TableDef(
    sets=(S("uid-x", "uid"),),
    chains=(C("out-x"), C("egress", hook="output")),
    rules=(
        R("out-x", (("meta", "l4proto"), ("cmp", "eq", TCP), ("payload", "transport", 2, 2),
                    ("cmp", "eq", "1f90"), ("counter",), ("reject", "tcp-reset")), "no 8080"),
        R("out-x", (("counter",), ("verdict", "return")), "default"),
        R("egress", (("meta", "skuid"), ("lookup", "uid-x"), ("verdict", "jump", "out-x"))),
    ))


def test_traffic_smoke(netns):
    listener = netns.popen(["/usr/bin/python3", "-I", "-c", LISTENER], stdout=-1, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        with ruleset_in(netns) as ruleset:
            ruleset.replace_table(SMOKE, {"uid-x": [uid_key(65534)]})
            nobody = netns.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                "/usr/bin/python3", "-I", "-c", CLIENT], cwd="/")
            root = netns.run(["/usr/bin/python3", "-I", "-c", CLIENT], cwd="/")
            counters = {rule: packets for _c, rule, packets, _b in ruleset.read_counters()}
    finally:
        listener.kill()
        listener.wait()
    assert nobody.stdout.strip() == "ECONNREFUSED"
    assert root.stdout.strip() == "connected"
    assert counters["no 8080"] >= 1
