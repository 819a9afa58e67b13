"""Compiled policies in the kernel (issue 12): random profiles compiled to verdict
maps, and to the linear rules netfence compiled before (tests/support/linear_compile.py), sent to the
kernel in a private namespace; random packets written whole from local raw sockets
(egress, or ingress from a peer namespace through a veth with any source address).
For each packet the policy rule whose counter moved must be the same with maps and
with linear rules, and the rule evaluate.py and a plain first-match reading name
(tests/unit/test_lookup_property.py's reference and random profiles).
"""

import collections
import ipaddress
import sys

import pytest

pytest.importorskip("pyroute2")

from netfence import ir  # noqa: E402
from netfence.nftnl import differences, expected_summary  # noqa: E402

from test_lookup_netns import R, TOP32, with_veth  # noqa: E402
from test_nftnl import ruleset_in  # noqa: E402


@pytest.fixture
def veth_ns(netns):
    return with_veth(netns)


# ---- compiled policies: the kernel against evaluate.py and a plain first match -------

def _property_module():
    """tests/unit/test_lookup_property.py (LOOKUPS'): its random profiles and its
    first-match reference, loaded by path (unit tests are not a package)."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "unit", "test_lookup_property.py")
    spec = importlib.util.spec_from_file_location("lookup_property", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# protocols a raw IPv6 socket sends as its own next header (not extension headers the
# kernel would walk into; 58 is left out: the kernel writes ICMPv6's checksum, which
# is where th dport reads)
V6_RAW_PROTOS = [1, 2, 6, 17, 132, 136, 200]     # 255: IPv6 IPPROTO_RAW is hdrincl


def _realisable(rng, prop, profile, veth_index):
    """A random packet (the property test's fields) that a local socket can send:
    lo packets to 127/8 or ::1, the others to a unicast address the default route
    takes through the veth; v4 written whole (IP_HDRINCL: any protocol, fragments,
    short transport headers), v6 through raw sockets of the packet's protocol."""
    for _ in range(50):
        packet = prop.random_packet(rng, profile)
        if packet["l4proto"] is None:
            continue                        # a packet without layer 4: not sendable here
        if packet["version"] == 6 and (packet["l4proto"] not in V6_RAW_PROTOS
                                       or packet["transport"] is None
                                       or len(packet["transport"]) < 4):
            continue
        if packet["transport"] is None:     # a later fragment: its payload
            packet["payload"] = bytes([0, 9]) + rng.choice(
                [0, 53, 443, 65535, rng.randrange(65536)]).to_bytes(2, "big") + bytes(4)
        if rng.random() < 0.3:
            lo_address = f"127.{rng.randrange(256)}.0.{rng.randrange(1, 255)}"
            packet["peer"] = ipaddress.ip_address(lo_address if packet["version"] == 4
                                                  else "::1")
            packet["ifindex"] = 1
        elif _routable(packet["peer"]):
            packet["ifindex"] = veth_index
        else:
            continue
        return packet
    return None


def _routable(address):
    return not (address.is_loopback or address.is_multicast or address.is_unspecified
                or address.is_link_local or address.is_reserved
                or (address.version == 4 and (int(address) >> 24 == 0
                                              or int(address) == TOP32)))


def _send_in_thread(ns, packets):
    """Send the packets from a thread inside `ns` ([(errno name or "ok")])."""
    import ctypes
    import os
    import threading
    libc = ctypes.CDLL(None, use_errno=True)
    out = []

    def run():
        fd = os.open(ns.path, os.O_RDONLY)
        try:
            if libc.setns(fd, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)
        for packet in packets:
            out.append(_send_whole(packet) if "raw" in packet else _send_one(packet))
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out


def _send_one(packet):
    import errno
    import socket
    import struct
    transport = packet["transport"] or packet["payload"]
    proto = packet["l4proto"]
    try:
        if packet["version"] == 4:
            fragment = 185 if packet["transport"] is None else 0      # a later fragment
            header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(transport), 0x1234,
                                 fragment, 64, proto, 0, bytes(4), packet["peer"].packed)
            with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                s.sendto(header + transport, (str(packet["peer"]), 0))
        else:
            with socket.socket(socket.AF_INET6, socket.SOCK_RAW, proto) as s:
                s.sendto(transport, (str(packet["peer"]), 0))
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def _send_whole(packet):
    import errno
    import socket
    family = socket.AF_INET if packet["version"] == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as s:
            s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36), TEST_MARK)
            s.sendto(packet["raw"], (packet["to"], 0))
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def _rule_counts(rs, prefix):
    """{rule comment: packets}, summed (a linear rule is several nft rules)."""
    out = collections.Counter()
    for _chain, comment, packets, _bytes in rs.read_counters():
        if comment.startswith(prefix):
            out[comment] += packets
    return out


def linear_twin(table, profile, direction):
    """`table` with the profile's chain as netfence compiled it before issue 12
    (tests/support/linear_compile.py: a rule per peer x protocol x port, walked in order), without the
    maps and the rule chains."""
    from support import linear_compile as compiler_linear
    from netfence.model import Settings
    chain = ("out-" if direction == "egress" else "in-") + profile.name
    linear = compiler_linear.linear_profile_rules(profile, direction, chain, Settings())
    rule_chains = {c.name for c in table.chains if c.name.startswith(chain + ".")}
    rules = [r for r in table.rules if r.chain not in rule_chains and r.chain != chain]
    return ir.TableDef(sets=tuple(s for s in table.sets if not s.data),
                       chains=tuple(c for c in table.chains if c.name not in rule_chains),
                       rules=tuple(linear) + tuple(rules))


def decisions(rs, table, elements, packets, send_one, prefix):
    """[the comments of the rules whose counters moved] for each packet sent with
    `table` in the kernel (a packet that reaches the chain moves exactly one)."""
    import time
    rs.replace_table(table, elements)
    assert differences(expected_summary(table), rs.summary()) == []
    out = []
    for packet in packets:
        before = _rule_counts(rs, prefix)
        send_one(packet)
        deadline, moved = time.monotonic() + 2, []
        while not moved and time.monotonic() < deadline:
            after = _rule_counts(rs, prefix)
            moved = sorted(c for c in after if after[c] != before.get(c, 0))
        out.append(moved)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_compiled_profiles_decide_in_the_kernel_as_evaluate_says(veth_ns, seed):
    """Random egress profiles compiled to maps, and to the linear rules netfence
    compiled before, each sent to the kernel; random packets sent by a root socket
    (uid 0 in the profile's uid set): for each packet the rule whose counter moved is
    the same with maps and with linear rules, and it is the rule evaluate.py and a
    plain first match name. A later IPv4 fragment: this kernel (6.18) reads its
    payload as the transport header (nft_payload_eval has no fragoff check yet; a
    patch adds one), the model says it has none: either reading is accepted, maps
    and linear rules must agree."""
    import random
    from netfence import compiler
    from netfence.model import Settings
    prop = _property_module()
    veth_index = int(veth_ns.run(["ip", "-o", "link", "show", "d0"]).stdout.split(":")[0])
    rng = random.Random(seed)
    seen = collections.Counter()
    root = {"any-uid": ["00000000"], "uid-p": ["00000000"]}

    def send_one(packet):
        _send_in_thread(veth_ns, [packet])
    with ruleset_in(veth_ns) as rs:
        for _ in range(12):
            profile = prop.random_profile(rng, "egress")
            table = compiler.build_table([profile], Settings())
            packets = [p for p in (_realisable(rng, prop, profile, veth_index)
                                   for _ in range(15)) if p is not None]
            with_maps = decisions(rs, table, root, packets, send_one, "p egress ")
            linear = decisions(rs, linear_twin(table, profile, "egress"), root, packets,
                               send_one, "p egress ")
            for packet, moved, moved_linear in zip(packets, with_maps, linear):
                expected = prop.reference(profile, "egress", packet)
                context = (seed, profile, packet, moved, moved_linear)
                assert moved == moved_linear, context
                assert prop.run(table.to_json(), "out-p", packet, "egress") == expected, context
                if "payload" in packet:         # a later fragment, read either way
                    as_read = dict(packet, transport=packet["payload"],
                                   dport=int.from_bytes(packet["payload"][2:4], "big"))
                    read = prop.reference(profile, "egress", as_read)
                    assert moved in ([expected[0]], [read[0]]), context
                    seen["fragment read" if moved == [read[0]] != [expected[0]]
                         else "fragment"] += 1
                else:
                    assert moved == [expected[0]], context
                seen.update(_kinds(packet, expected))
    # the cases that matter were all met (a rule, the default, lo, v6, a later
    # fragment, a short transport header)
    assert {"rule", "default", "lo", "veth", "v6", "fragment", "short"} <= set(seen), seen
    assert sum(seen[k] for k in ("lo", "veth")) > 100


def _kinds(packet, expected):
    transport = packet["transport"]
    yield "default" if expected[0].endswith("default") else "rule"
    yield "lo" if packet["ifindex"] == 1 else "veth"
    yield f"v{packet['version']}"
    if transport is None:
        yield "fragment"
    elif len(transport) < 4:
        yield "short"


@pytest.fixture
def peer_ns(netns):
    """`netns` (d0: 172.16.0.1, fd00::1, default routes) wired by a veth pair to a
    second namespace (d1: 172.16.0.2, fd00::2) that sends packets in, with any source."""
    from support.netns import NetNS
    with NetNS() as peer:
        netns.run(["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1",
                   "netns", str(peer.pid)])
        for ns, dev, v4, v6 in ((netns, "d0", "172.16.0.1", "fd00::1"),
                                (peer, "d1", "172.16.0.2", "fd00::2")):
            for argv in (["ip", "link", "set", dev, "up"],
                         ["ip", "addr", "add", f"{v4}/24", "dev", dev],
                         ["ip", "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad"],
                         ["ip", "route", "add", "default", "dev", dev],
                         ["ip", "-6", "route", "add", "default", "dev", dev]):
                ns.run(argv)
        link = netns.run(["ip", "-o", "link", "show", "d0"]).stdout
        mac = link.split("link/ether ")[1].split()[0]
        for address in ("172.16.0.1", "fd00::1"):       # no neighbour resolution to wait for
            peer.run(["ip", "neigh", "replace", address, "lladdr", mac, "dev", "d1",
                      "nud", "permanent"])
        yield netns, peer


def _send_raw_whole(ns, packet, destination):
    """One packet written whole (IP_HDRINCL / IPv6 IPPROTO_RAW) from a thread in `ns`,
    its source the packet's peer (an ingress rule's address)."""
    import struct
    transport, proto = packet["transport"], packet["l4proto"]
    if packet["version"] == 4:
        data = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(transport), 0x1234, 0, 64,
                           proto, 0, packet["peer"].packed, destination.packed) + transport
    else:
        data = struct.pack("!IHBB16s16s", 6 << 28, len(transport), proto, 64,
                           packet["peer"].packed, destination.packed) + transport
    return _send_in_thread(ns, [{"raw": data, "version": packet["version"],
                                 "to": str(destination)}])


TEST_MARK = 0x5EED


def _ingress_packet(rng, prop, profile, veth_index):
    """A packet that reaches the input hook: through lo (from 127/8 or ::1, sent
    locally) or through d0 from the peer (a unicast source that is not ours; a later
    fragment never gets there: the kernel reassembles first)."""
    for _ in range(50):
        packet = prop.random_packet(rng, profile)
        if (packet["l4proto"] is None or packet["transport"] is None
                or (packet["version"] == 6 and packet["l4proto"] not in V6_RAW_PROTOS)):
            continue
        if rng.random() < 0.3:
            packet["peer"] = ipaddress.ip_address("127.0.0.1" if packet["version"] == 4
                                                  else "::1")
            packet["ifindex"] = 1
            return packet
        ours = {ipaddress.ip_address(a) for a in ("172.16.0.1", "172.16.0.2", "fd00::1",
                                                  "fd00::2")}
        if _routable(packet["peer"]) and packet["peer"] not in ours:
            packet["ifindex"] = veth_index
            return packet
    return None


def _ingress_only(table):
    """Every packet to in-p; locally made packets other than the test's own dropped
    on the way out (the ICMP errors and resets that packets to lo provoke would come
    back in through lo and count too)."""
    own = TEST_MARK.to_bytes(4, sys.byteorder).hex()
    return ir.TableDef(sets=table.sets, chains=table.chains, rules=(
        R("egress", (("meta", "mark"), ("cmp", "neq", own), ("verdict", "drop"))),)
        + tuple(r for r in table.rules if r.chain != "ingress")
        + (R("ingress", (("verdict", "jump", "in-p"),)),))


@pytest.mark.parametrize("seed", range(3))
def test_compiled_ingress_profiles_decide_in_the_kernel_as_evaluate_says(peer_ns, seed):
    """The same for ingress (iif, saddr), maps against linear rules and the model;
    the base chain sends every packet to in-p here (the login's socket match is not
    what is tested)."""
    import random
    from netfence import compiler
    from netfence.model import Settings
    netns, peer = peer_ns
    prop = _property_module()
    veth_index = int(netns.run(["ip", "-o", "link", "show", "d0"]).stdout.split(":")[0])
    rng = random.Random(100 + seed)
    seen = collections.Counter()

    def send_one(packet):
        if packet["ifindex"] == 1:
            _send_raw_whole(netns, packet, packet["peer"])
        else:
            _send_raw_whole(peer, packet, ipaddress.ip_address(
                "172.16.0.1" if packet["version"] == 4 else "fd00::1"))
    with ruleset_in(netns) as rs:
        for _ in range(10):
            profile = prop.random_profile(rng, "ingress")
            table = _ingress_only(compiler.build_table([profile], Settings()))
            packets = [p for p in (_ingress_packet(rng, prop, profile, veth_index)
                                   for _ in range(15)) if p is not None]
            with_maps = decisions(rs, table, {}, packets, send_one, "p ingress ")
            linear = decisions(rs, linear_twin(table, profile, "ingress"), {}, packets,
                               send_one, "p ingress ")
            for packet, moved, moved_linear in zip(packets, with_maps, linear):
                expected = prop.reference(profile, "ingress", packet)
                context = (seed, profile, packet, moved, moved_linear)
                assert moved == moved_linear == [expected[0]], context
                assert prop.run(table.to_json(), "in-p", packet, "ingress") == expected, context
                seen.update(_kinds(packet, expected))
    assert {"rule", "default", "lo", "veth", "v6", "short"} <= set(seen), seen
