"""evaluate.py: the profile's chain run first-match on hand-written packets, as the
kernel runs it (the property test against the kernel is tests/integration's)."""

import ipaddress
import struct

import pytest

from netfence import compiler, evaluate
from netfence.model import LOOPBACK, NetRule, Profile, Settings


def table_rules(*profiles, settings=Settings()):
    """The table (JSON) in the two parts evaluate reads: its rules and its maps."""
    table = compiler.build_table(profiles, settings).to_json()
    return table["rules"], table["sets"]


def ipv4(src, dst, proto, transport, frag=0, ihl=5):
    options = bytes(4 * (ihl - 5))
    header = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(transport), 1, frag,
                         64, proto, 0, ipaddress.ip_address(src).packed,
                         ipaddress.ip_address(dst).packed)
    return header + options + transport


def ipv6(src, dst, nexthdr, body):
    return (struct.pack(">IHBB", 6 << 28, len(body), nexthdr, 64)
            + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + body)


def ports(sport, dport):
    return struct.pack(">HH", sport, dport) + bytes(16)


def match(table, chain, payload, outdev=2, indev=None):
    rules, sets = table
    return evaluate.first_match(rules, chain, evaluate.parse_ip(payload), outdev, indev, sets)


WEB = Profile("web", egress=(
    NetRule("allow", ("tcp",), ((80, 80), (443, 443))),
    NetRule("reject", ("udp",), ((1000, 2000),)),
    NetRule("deny", (), (), ("10.0.0.0/8", "2001:db8::/32")),
    NetRule("reject", ("icmp",)),
    NetRule("allow", (), (), (LOOPBACK,)),
), egress_default="deny", ingress=(NetRule("deny", ("tcp",), ((22, 22),), ("192.0.2.0/24",)),),
   log=True)


@pytest.fixture(scope="module")
def rules():
    return table_rules(WEB)


def test_port_range(rules):
    assert match(rules, "out-web", ipv4("10.9.9.9", "198.51.100.1", 17, ports(5, 1500))) \
        == ("web egress rule 2", "reject")
    assert match(rules, "out-web", ipv4("10.9.9.9", "198.51.100.1", 17, ports(5, 2001))) \
        == ("web egress default", "deny")
    assert match(rules, "out-web", ipv4("10.9.9.9", "198.51.100.1", 6, ports(5, 443))) \
        == ("web egress rule 1", "allow")


def test_cidr_peers_either_family_and_a_protocol_less_rule(rules):
    assert match(rules, "out-web", ipv4("192.0.2.1", "10.200.0.1", 6, ports(5, 25)))[0] \
        == "web egress rule 3"
    assert match(rules, "out-web", ipv4("192.0.2.1", "11.0.0.1", 6, ports(5, 25)))[0] \
        == "web egress default"
    assert match(rules, "out-web", ipv6("2001:db9::1", "2001:db8:ffff::1", 17,
                                        ports(5, 53)))[0] == "web egress rule 3"
    # rule 2 (udp 1000-2000) comes first: order decides, not specificity
    assert match(rules, "out-web", ipv4("1.1.1.1", "10.0.0.1", 17, ports(5, 1000)))[0] \
        == "web egress rule 2"


def test_icmp_and_icmpv6(rules):
    echo = bytes([8, 0]) + bytes(6)
    assert match(rules, "out-web", ipv4("192.0.2.1", "198.51.100.1", 1, echo)) \
        == ("web egress rule 4", "reject")
    assert match(rules, "out-web", ipv6("2001:db9::1", "2001:db9::2", 58,
                                        bytes([128, 0]) + bytes(6)))[0] == "web egress rule 4"


def test_loopback_peer_follows_the_interface(rules):
    packet = ipv4("127.0.0.1", "127.0.0.1", 6, ports(5, 9))
    assert match(rules, "out-web", packet, outdev=1)[0] == "web egress rule 5"
    assert match(rules, "out-web", packet, outdev=2)[0] == "web egress default"


def test_ingress_peer_is_the_source_and_port_the_local_one(rules):
    packet = ipv4("192.0.2.7", "198.51.100.1", 6, ports(40000, 22))
    assert match(rules, "in-web", packet, outdev=None, indev=2) \
        == ("web ingress rule 1", "deny")
    other = ipv4("198.51.100.2", "192.0.2.7", 6, ports(40000, 22))
    assert match(rules, "in-web", other, outdev=None, indev=2) \
        == ("web ingress default", "allow")


def test_ipv6_extension_headers_are_walked():
    hop_by_hop = bytes([17, 0]) + bytes(6)              # next: udp, 8 bytes
    dest_opts = bytes([0, 1]) + bytes(14)               # next: hop-by-hop, 16 bytes
    packet = ipv6("2001:db9::1", "2001:db9::2", 60, dest_opts + hop_by_hop + ports(7, 1500))
    headers = evaluate.parse_ip(packet)
    assert (headers["proto"], headers["sport"], headers["dport"]) == ("udp", 7, 1500)
    assert match(table_rules(WEB), "out-web", packet)[0] == "web egress rule 2"


def test_a_later_fragment_has_no_ports():
    rules = table_rules(WEB)
    first = bytes([17, 0]) + struct.pack(">H", 0 | 1) + bytes(4)
    later = bytes([17, 0]) + struct.pack(">H", 8 << 3 | 1) + bytes(4)
    packet = ipv6("2001:db9::1", "2001:db9::2", 44, first + ports(7, 1500))
    assert match(rules, "out-web", packet)[0] == "web egress rule 2"
    packet = ipv6("2001:db9::1", "2001:db9::2", 44, later + ports(7, 1500))
    assert evaluate.parse_ip(packet)["dport"] is None
    assert match(rules, "out-web", packet)[0] == "web egress default"
    v4_later = ipv4("1.1.1.1", "198.51.100.1", 17, ports(7, 1500), frag=100)
    assert match(rules, "out-web", v4_later)[0] == "web egress default"


def test_ipv4_options_move_the_transport_header():
    packet = ipv4("1.1.1.1", "198.51.100.1", 17, ports(7, 1500), ihl=7)
    assert evaluate.parse_ip(packet)["dport"] == 1500
    assert match(table_rules(WEB), "out-web", packet)[0] == "web egress rule 2"


def test_a_copy_cut_short_matches_no_port_rule():
    packet = ipv4("1.1.1.1", "198.51.100.1", 17, ports(7, 1500))[:22]
    assert evaluate.parse_ip(packet)["dport"] is None
    assert match(table_rules(WEB), "out-web", packet)[0] == "web egress default"
    assert evaluate.parse_ip(b"\x45" + bytes(5)) is None
    assert evaluate.parse_ip(bytes([0x70]) + bytes(40)) is None


def test_verdicts_without_denial_chains():
    plain = Profile("plain", egress=(NetRule("reject", ("tcp",), ((25, 25),)),
                                     NetRule("reject", ("udp",), ((53, 53),))),
                    egress_default="deny")
    rules = table_rules(plain)
    assert match(rules, "out-plain", ipv4("1.1.1.1", "2.2.2.2", 6, ports(1, 25)))[1] == "reject"
    assert match(rules, "out-plain", ipv4("1.1.1.1", "2.2.2.2", 17, ports(1, 53)))[1] == "reject"
    assert match(rules, "out-plain", ipv4("1.1.1.1", "2.2.2.2", 17, ports(1, 54))) \
        == ("plain egress default", "deny")


def test_grant_rules_never_match_and_other_chains_are_ignored(rules):
    assert any(r["comment"] == "web egress grant" for r in rules[0])
    packet = ipv4("1.1.1.1", "198.51.100.1", 6, ports(1, 9))
    assert match(rules, "out-nothing", packet) is None


def test_rule_number():
    assert evaluate.rule_number("web egress rule 12") == 12
    assert evaluate.rule_number("web egress default") is None


def test_the_lookup_names_the_rule_through_its_chain(rules):
    """The map's element goes to out-web.2, whose one rule decides: without it the
    packet is undecided (a snapshot that is not the kernel's), never another rule."""
    packet = ipv4("10.9.9.9", "198.51.100.1", 17, ports(5, 1500))
    assert match(rules, "out-web", packet) == ("web egress rule 2", "reject")
    kept = [r for r in rules[0] if r["chain"] != "out-web.2"]
    assert match((kept, rules[1]), "out-web", packet) is None
    assert match((rules[0], []), "out-web", packet) == ("web egress default", "deny")


def test_a_packet_without_layer4_protocol_meets_only_rules_without_protocols_or_ports(rules):
    """The kernel could not find its layer-4 header (meta l4proto breaks): the
    lookups with protocols break, the address-only map still sees rule 3."""
    headers = evaluate.parse_ip(ipv4("192.0.2.1", "10.200.0.1", 6, ports(5, 80)))
    headers["l4proto"], headers["transport"] = None, None
    assert evaluate.first_match(rules[0], "out-web", headers, 2, None, rules[1]) == (
        "web egress rule 3", "deny")
    headers = evaluate.parse_ip(ipv4("192.0.2.1", "198.51.100.1", 6, ports(5, 80)))
    headers["l4proto"], headers["transport"] = None, None
    assert evaluate.first_match(rules[0], "out-web", headers, 1, None, rules[1]) == (
        "web egress rule 5", "allow")                        # loopback, any protocol
    assert evaluate.first_match(rules[0], "out-web", headers, 2, None, rules[1]) == (
        "web egress default", "deny")
