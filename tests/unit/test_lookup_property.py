"""Profiles as lookups decide exactly what the ordered rules decide.

Random profiles (ordered rules over every action, protocols incl. icmp, ports and
ranges, overlapping v4/v6 CIDRs, loopback, no peer) and random packets (v4/v6, every
layer-4 class, ports at the rules' edges, lo or another interface, packets without a
transport header, with a short one, without a layer-4 protocol): the compiled table
run by evaluate.py (lookup rule -> verdict map element -> rule chain) must name the
same rule and verdict as a straightforward first-match reading of model.NetRule written
here, and so must the linear compile netfence shipped before (tests/support/linear_compile.py).
Seeded: a failure prints its seed, profile and packet.
"""

import ipaddress
import random

import pytest

from netfence import compiler, compiler_lookups, evaluate, ir
from support import linear_compile as compiler_linear
from netfence.errors import PolicyError
from netfence.model import LOOPBACK, NetRule, Profile, Settings

V4_NETS = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "192.168.0.0/16",
           "0.0.0.0/0", "255.255.255.255/32", "10.255.255.0/24", "0.0.0.0/32"]
V6_NETS = ["2001:db8::/32", "2001:db8:1::/48", "::/0", "::1/128", "fd00::/8",
           "2001:db8::/127", "ffff::/16"]
PROTO_CHOICES = [(), ("tcp",), ("udp",), ("icmp",), ("tcp", "udp"), ("icmp", "tcp"),
                 ("udp", "icmp"), ("tcp", "udp", "icmp")]
PORT_POINTS = [0, 1, 22, 25, 53, 80, 443, 1000, 2000, 65534, 65535]
L4_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
INTERESTING_L4 = [0, 1, 2, 6, 17, 58, 59, 132, 255]
VERDICTS = {"allow": "allow", "deny": "deny", "reject": "reject"}


# ---- the reference: first match over model.NetRule, read plainly ----------------

def reference(profile, direction, packet):
    rules = profile.egress if direction == "egress" else profile.ingress
    for number, rule in enumerate(rules, 1):
        if rule_matches(rule, packet):
            return f"{profile.name} {direction} rule {number}", VERDICTS[rule.action]
    default = profile.egress_default if direction == "egress" else profile.ingress_default
    return f"{profile.name} {direction} default", VERDICTS[default]


def rules_of(profile, direction):
    return profile.egress if direction == "egress" else profile.ingress


def rule_matches(rule, packet):
    """Some peer x protocol x port of the rule matches (a field the packet lacks
    matches nothing that needs it)."""
    for peer in list(rule.peers) or [None]:
        if not peer_matches(peer, packet):
            continue
        family = None if peer in (None, LOOPBACK) else ipaddress.ip_network(peer).version
        if rule.protos and not proto_matches(rule.protos, family, packet["l4proto"]):
            continue
        if rule.ports and not port_matches(rule.ports, packet):
            continue
        return True
    return False


def peer_matches(peer, packet):
    if peer is None:
        return True
    if peer == LOOPBACK:
        return packet["ifindex"] == 1
    net = ipaddress.ip_network(peer)
    return net.version == packet["version"] and packet["peer"] in net


def proto_matches(protos, family, l4proto):
    if l4proto is None:
        return False
    numbers = set()
    for proto in protos:
        if proto == "icmp":
            numbers |= {4: {1}, 6: {58}}.get(family, {1, 58})
        else:
            numbers.add(L4_NUMBERS[proto])
    return l4proto in numbers


def port_matches(ports, packet):
    if packet["l4proto"] is None or packet["dport"] is None:
        return False
    return any(low <= packet["dport"] <= high for low, high in ports)


# ---- random profiles and packets ------------------------------------------------

def random_rule(rng, cidr=True):
    protos = rng.choice(PROTO_CHOICES)
    ports = ()
    # policy.py allows ports with tcp/udp only; the compilers take any: try both
    if rng.random() < 0.5 and (set(protos) <= {"tcp", "udp"} or rng.random() < 0.2):
        ports = tuple(sorted({_port_range(rng) for _ in range(rng.randint(1, 3))}))
    peers = ()
    if rng.random() < 0.6:
        pool = V4_NETS + V6_NETS + [LOOPBACK, LOOPBACK] if cidr else [LOOPBACK]
        peers = tuple(dict.fromkeys(rng.choice(pool) for _ in range(rng.randint(1, 3))))
    return NetRule(rng.choice(("allow", "deny", "reject")), protos, ports, peers)


def _port_range(rng):
    low = rng.choice(PORT_POINTS + [rng.randint(0, 65535)])
    if rng.random() < 0.5:
        return (low, low)
    return (low, min(65535, low + rng.choice((1, 10, 1000, 65535))))


def random_profile(rng, direction):
    cidr = rng.random() < 0.7        # else one map without addresses (.any, .anynp)
    rules = tuple(random_rule(rng, cidr) for _ in range(rng.randint(0, 9)))
    # without rules, an allow default makes no chain (nothing restricted): not that
    default = rng.choice(("allow", "deny", "reject") if rules else ("deny", "reject"))
    log = rng.random() < 0.3                 # denials through deny-P / reject-P
    if direction == "egress":
        return Profile("p", egress=rules, egress_default=default, log=log)
    return Profile("p", ingress=rules, ingress_default=default, log=log)


def random_packet(rng, profile):
    nets = [p for r in profile.egress + profile.ingress for p in r.peers if p != LOOPBACK]
    version = rng.choice((4, 6))
    peer = _random_address(rng, version, [n for n in nets
                                          if ipaddress.ip_network(n).version == version])
    kind = rng.random()
    l4proto = rng.choice(INTERESTING_L4 + [rng.randint(0, 255)])
    dport = rng.choice(PORT_POINTS + [rng.randint(0, 65535), 999, 2001, 23, 444])
    transport = bytes([0, 7]) + dport.to_bytes(2, "big") + bytes(16)
    if kind < 0.08:
        transport, dport = None, None       # a later fragment: no transport header
    elif kind < 0.12:
        transport, dport = transport[:3], None   # a header cut short: th dport breaks
    elif kind < 0.16:
        l4proto, transport, dport = None, None, None   # no meta l4proto at all
    ifindex = rng.choice((1, 1, 2, 3, 0, 2 ** 31 - 1, rng.randint(2, 70000)))
    return {"version": version, "peer": peer, "l4proto": l4proto, "dport": dport,
            "transport": transport, "ifindex": ifindex}


def _random_address(rng, version, nets):
    bits = 32 if version == 4 else 128
    if nets and rng.random() < 0.8:
        net = ipaddress.ip_network(rng.choice(nets))
        edge = rng.choice((int(net.network_address), int(net.broadcast_address)))
        value = edge + rng.choice((-1, 0, 0, 1))
        if rng.random() < 0.3:
            value = rng.randint(int(net.network_address), int(net.broadcast_address))
        value %= 2 ** bits
    else:
        value = rng.getrandbits(bits)
    return ipaddress.ip_address(value) if version == 4 else ipaddress.IPv6Address(value)


def headers_of(packet, direction):
    """What evaluate reads: the network header with the peer where the kernel's
    payload expression finds it (daddr egress, saddr ingress)."""
    other = bytes(4 if packet["version"] == 4 else 16)
    peer = packet["peer"].packed
    src, dst = (other, peer) if direction == "egress" else (peer, other)
    prefix = bytes(12) if packet["version"] == 4 else bytes(8)
    return {"version": packet["version"], "l4proto": packet["l4proto"],
            "network": prefix + src + dst, "transport": packet["transport"]}


def run(table, chain, packet, direction):
    headers = headers_of(packet, direction)
    index = packet["ifindex"]
    outdev, indev = (index, None) if direction == "egress" else (None, index)
    return evaluate.first_match(table["rules"], chain, headers, outdev, indev, table["sets"])


def linear_table(profile, direction, settings):
    chain = ("out-" if direction == "egress" else "in-") + profile.name
    rules = compiler_linear.linear_profile_rules(profile, direction, chain, settings)
    return ir.TableDef(sets=(), chains=(), rules=tuple(rules)).to_json()


# ---- the properties -------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
def test_lookups_decide_what_first_match_decides(seed):
    rng = random.Random(seed)
    settings = Settings()
    for _ in range(150):
        direction = rng.choice(("egress", "ingress"))
        profile = random_profile(rng, direction)
        chain = ("out-" if direction == "egress" else "in-") + profile.name
        table = compiler.build_table([profile], settings).to_json()
        linear = linear_table(profile, direction, settings)
        for _ in range(12):
            packet = random_packet(rng, profile)
            expected = reference(profile, direction, packet)
            context = (seed, profile, packet)
            assert run(table, chain, packet, direction) == expected, context
            assert run(linear, chain, packet, direction) == expected, context


@pytest.mark.parametrize("seed", range(4))
def test_every_map_holds_disjoint_boxes_inside_its_fields(seed):
    """pipapo refuses overlapping elements; each key must name one rule."""
    rng = random.Random(1000 + seed)
    for _ in range(60):
        direction = rng.choice(("egress", "ingress"))
        table = compiler.build_table([random_profile(rng, direction)])
        for set_def in (s for s in table.sets if s.data == "verdict"):
            boxes = [_box(set_def.fields, e) for e in set_def.elements]
            assert boxes, set_def
            for i, first in enumerate(boxes):
                assert all(low <= high for low, high in first)
                for second in boxes[i + 1:]:
                    assert not all(a[0] <= b[1] and b[0] <= a[1]
                                   for a, b in zip(first, second)), set_def.name


def test_maps_past_the_chunk_size_are_split_and_decide_the_same(monkeypatch):
    monkeypatch.setattr(compiler_lookups, "MAP_CHUNK", 3)
    rng = random.Random(77)
    chunked = 0
    for _ in range(150):
        direction = rng.choice(("egress", "ingress"))
        profile = random_profile(rng, direction)
        chain = ("out-" if direction == "egress" else "in-") + profile.name
        table = compiler.build_table([profile])
        maps = [s for s in table.sets if s.data == "verdict"]
        assert all(len(m.elements) <= 3 for m in maps)
        by_base = {}
        for m in maps:                   # disjoint over all the chunks of one map too
            by_base.setdefault(_base_suffix(chain, m.name), []).extend(
                _box(m.fields, e) for e in m.elements)
        for boxes in by_base.values():
            for i, first in enumerate(boxes):
                for second in boxes[i + 1:]:
                    assert not all(a[0] <= b[1] and b[0] <= a[1]
                                   for a, b in zip(first, second))
        chunked += sum(1 for m in maps if m.name.split(".")[-1].isdigit())
        lookups = [r for r in table.rules if r.chain == chain and r.exprs[-1][0] == "vmap"]
        assert sorted(r.exprs[-1][1] for r in lookups) == sorted(m.name for m in maps)
        for _ in range(12):
            packet = random_packet(rng, profile)
            assert run(table.to_json(), chain, packet, direction) == reference(
                profile, direction, packet), (profile, packet)
    assert chunked > 50


def _base_suffix(chain, name):
    """"out-p.v4.2" -> "v4" (the chunk number off)."""
    return name[len(chain) + 1:].split(".")[0]


def _box(fields, element):
    start, end = bytes.fromhex(element[0]), bytes.fromhex(element[1])
    box, offset = [], 0
    for _, length in fields:
        box.append((int.from_bytes(start[offset:offset + length], "big"),
                    int.from_bytes(end[offset:offset + length], "big")))
        offset += ir.padded_length(length)
    return box


def test_a_partition_past_the_limit_is_a_policy_error_naming_the_profile(monkeypatch):
    monkeypatch.setattr(compiler_lookups, "MAX_MAP_ELEMENTS", 3)
    rules = tuple(NetRule("allow", ("tcp",), ((port, port),)) for port in (1, 3, 5, 7))
    with pytest.raises(PolicyError) as caught:
        compiler.build_table([Profile("big", egress=rules)])
    assert "'big'" in str(caught.value) and "more than 3" in str(caught.value)


def test_a_policy_that_would_fragment_without_end_stops_early(monkeypatch):
    """Overlapping ranges in every field: refused before millions of boxes exist."""
    monkeypatch.setattr(compiler_lookups, "MAX_MAP_ELEMENTS", 50)
    rules = tuple(NetRule("allow", ("tcp",), ((i, 60000 - i),), (f"10.0.0.{i}/32",))
                  for i in range(1, 200, 3))
    with pytest.raises(PolicyError, match="more than 50"):
        compiler.build_table([Profile("frag", egress=rules)])
