"""The linear compile of a profile direction, as netfence built it before issue 12:
one rule per peer x protocol x port of each policy rule, walked in order, first match
wins. Not in the table any more (compiler_lookups builds verdict maps instead): kept here,
with the tests, as the reference the lookup property test
(tests/unit/test_lookup_property.py) and the kernel test
(tests/integration/test_lookup_compiled_netns.py) check the maps against. Pure.
"""

import ipaddress

from netfence import ir
from netfence.compiler import _grant_rules, _verdict
from netfence.compiler_lookups import ADDR_OFFSET, LOOPBACK_IFINDEX, NFPROTO
from netfence.model import LOOPBACK
from netfence.nfconst import NETWORK_ORDER

# Register values are compared as the kernel holds them: meta nfproto is one byte,
# meta oif/iif are host-order u32 (nfconst), packet fields network order.
L4PROTO = {"tcp": "06", "udp": "11", "icmp": "01", "icmpv6": "3a"}    # IPPROTO_*


def linear_profile_rules(profile, direction, chain, settings):
    """The chain as netfence compiled it before issue 12: one rule per
    peer x protocol x port of each policy rule, walked in order. Not in the table any
    more; the lookup property test checks the maps decide exactly what it decides."""
    net_rules = profile.egress if direction == "egress" else profile.ingress
    default = profile.egress_default if direction == "egress" else profile.ingress_default
    rules = _grant_rules(profile, direction, chain)
    for number, net_rule in enumerate(net_rules, 1):
        comment = f"{profile.name} {direction} rule {number}"
        verdict = _verdict(profile, net_rule.action, net_rule.protos, settings)
        for matches in expand_matches(net_rule, direction):
            rules.append(ir.RuleDef(chain, matches + (("counter",), verdict), comment))
    verdict = _verdict(profile, default, (), settings)
    rules.append(ir.RuleDef(chain, (("counter",), verdict),
                            f"{profile.name} {direction} default"))
    return rules


def expand_matches(net_rule, direction):
    """Every (peer × protocol × port) combination of a rule, as match expressions."""
    peers = list(net_rule.peers) or [None]
    protos = list(net_rule.protos) or [None]
    ports = list(net_rule.ports) or [None]
    combos = []
    for peer in peers:
        family = None if peer in (None, LOOPBACK) else ipaddress.ip_network(peer).version
        for proto in protos:
            for l4 in _l4_for(proto, family):
                for port in ports:
                    combos.append(_peer_match(peer, family, direction)
                                  + _proto_match(l4) + _port_match(port))
    return combos


def _l4_for(proto, family):
    if proto != "icmp":
        return [proto]
    return {4: ["icmp"], 6: ["icmpv6"]}.get(family, ["icmp", "icmpv6"])


def _peer_match(peer, family, direction):
    if peer is None:
        return ()
    if peer == LOOPBACK:
        key = "oif" if direction == "egress" else "iif"
        return (("meta", key), ("cmp", "eq", LOOPBACK_IFINDEX))
    net = ipaddress.ip_network(peer)
    length = 4 if family == 4 else 16
    exprs = (("meta", "nfproto"), ("cmp", "eq", NFPROTO[family]),
             ("payload", "network", ADDR_OFFSET[(direction, family)], length))
    if net.prefixlen != net.max_prefixlen:
        exprs += (("bitwise", net.netmask.packed.hex(), "00" * length),)
    return exprs + (("cmp", "eq", net.network_address.packed.hex()),)


def _proto_match(l4):
    if l4 is None:
        return ()
    return (("meta", "l4proto"), ("cmp", "eq", L4PROTO[l4]))


def _port_match(port):
    if port is None:
        return ()
    low, high = port
    load = ("payload", "transport", 2, 2)          # destination port
    low, high = (number.to_bytes(2, NETWORK_ORDER).hex() for number in (low, high))
    if low == high:
        return (load, ("cmp", "eq", low))
    return (load, ("range", "eq", low, high))
