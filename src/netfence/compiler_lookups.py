"""A profile direction's ordered rules as verdict-map lookups (docs/architecture.md,
"Table shape"). Pure.

Every policy rule N of P's direction gets a rule chain `out-P.N` / `in-P.N` holding one
rule, `counter <verdict>` "P egress rule N". The profile chain looks the packet up in
a few verdict maps whose elements `goto` those chains: a connection costs a constant
number of lookups whatever the number of rules.

A map's key is a concatenation of fields, each loaded into consecutive 32-bit registers
from NFT_REG32_00 on: the interface (oif / iif, converted big-endian as nft does, so
that `nft list` prints "lo" and `nft -f` takes the listing back), the layer-4 protocol,
the address (daddr egress, saddr ingress: the per-family maps only) and the destination
port (when a rule has ports). The first-match order is resolved here: `partition` walks
the rules in order, each claiming what is left of its boxes, so the elements are
disjoint and each names the first rule that matches every packet inside it.

Packets some field cannot be loaded from break a lookup rule (the kernel ends the rule)
where the linear chains still matched the rules not needing that field, so:
  - no-port maps (`.anynp` / `.v4np` / `.v6np`), the partition of the rules without
    ports, follow a map with ports: a non-first fragment, a truncated transport header;
  - no-layer-4 lookups follow them, the partition of the rules with neither protocols
    nor ports: a packet whose layer-4 protocol the kernel could not find (an IPv6
    extension header chain it cannot walk) has no `meta l4proto`. Per family the map
    `.v4nl` / `.v6nl` (interface, address); without CIDR peers at most two plain rules
    (the first loopback-only rule, the first rule for everything).
A packet that has every field and misses a map matches no rule at all, so it also misses
the later ones (their rules are a subset): they only ever catch what the first one could
not look up. (Covering the whole key space with elements to the default, so that such a
packet hits one element instead of missing up to three maps, was measured slower: a
miss ends the kernel's lookup at the first field no element matches, a hit walks every
field of larger bitmaps; 2-5% fewer connections a second.)

A map of more than MAP_CHUNK elements is several maps of the same key (out-P.v4,
out-P.v4.2, ...), one lookup rule each: the kernel's insert into one concatenated-range
map grows faster than linearly (measured: 65,536 range elements 22.6 s as one map,
2.2 s as chunks of 2,048), and the boxes being disjoint, a packet hits at most one
element over all the chunks.
"""

import functools
import ipaddress

from . import ir
from .compiler_partition import TooManyBoxes, merge_adjacent, partition
from .errors import PolicyError
from .model import LOOPBACK
from .nfconst import HOST_ORDER, NETWORK_ORDER, NFPROTO_IPV4, NFPROTO_IPV6

MAX_MAP_ELEMENTS = 65536
MAP_CHUNK = 2048                   # elements a map at most (see chunks)
NFPROTO = {4: bytes([NFPROTO_IPV4]).hex(), 6: bytes([NFPROTO_IPV6]).hex()}
L4PROTO_NUMBERS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}     # IPPROTO_*
ADDR_OFFSET = {("egress", 4): 16, ("egress", 6): 24,     # destination address
               ("ingress", 4): 12, ("ingress", 6): 8}    # source address
LOOPBACK_INDEX = 1                                       # lo is ifindex 1 in every netns
LOOPBACK_IFINDEX = LOOPBACK_INDEX.to_bytes(4, HOST_ORDER).hex()
IFINDEX_MAX = 2 ** 31 - 1          # dev->ifindex is an int (0: no device)
FIRST_KEY_REGISTER = 8             # NFT_REG32_00

# (nft datatype, bytes, values): the values as the register holds them, read big-endian
IFACE = ("iface_index", 4, (0, IFINDEX_MAX))
L4PROTO = ("inet_proto", 1, (0, 255))
ADDRESS = {4: ("ipv4_addr", 4, (0, 2 ** 32 - 1)), 6: ("ipv6_addr", 16, (0, 2 ** 128 - 1))}
PORT = ("inet_service", 2, (0, 65535))


def rule_chain(profile_chain, number):
    """`out-P.N`: a profile name never contains "." (policy_values.PROFILE_NAME)."""
    return f"{profile_chain}.{number}"


class MapSpec:
    """One lookup: its family (None: both), and whether its key has the layer-4
    protocol and the destination port."""

    def __init__(self, family, l4proto, port, tail=""):
        self.family, self.l4proto, self.port, self.tail = family, l4proto, port, tail

    def suffix(self):
        """any / v4 / v6, then "np" (no port) or "nl" (no layer 4) for the fallbacks."""
        return {None: "any", 4: "v4", 6: "v6"}[self.family] + self.tail

    def fields(self):
        fields = [IFACE]
        if self.l4proto:
            fields.append(L4PROTO)
        if self.family:
            fields.append(ADDRESS[self.family])
        if self.port:
            fields.append(PORT)
        return fields

    def takes(self, net_rule):
        """Whether the rule has a place in this map's partition at all."""
        if net_rule.ports and not self.port:
            return False
        return self.l4proto or not net_rule.protos


# ---- boxes ------------------------------------------------------------------------

def rule_boxes(net_rule, spec):
    """The boxes (one (low, high) per field of spec) the rule matches, as the linear
    chains expanded it: every peer x protocol x port; "icmp" is icmp for v4 peers,
    icmpv6 for v6 peers, both without a peer; `loopback` is interface 1, any address."""
    if not spec.takes(net_rule):
        return []
    boxes = []
    for peer in list(net_rule.peers) or [None]:
        iface, address, family = IFACE[2], None, None
        if peer == LOOPBACK:
            iface = (LOOPBACK_INDEX, LOOPBACK_INDEX)
        elif peer is not None:
            family, address = network_range(peer)
            if family != spec.family:
                continue
        for l4 in _l4_ranges(net_rule.protos, family, spec):
            for port in [tuple(p) for p in net_rule.ports] or [PORT[2]]:
                box = [iface] + ([l4] if spec.l4proto else [])
                if spec.family:
                    box.append(address or ADDRESS[spec.family][2])
                if spec.port:
                    box.append(port)
                boxes.append(tuple(box))
    return boxes


@functools.lru_cache(maxsize=4096)
def network_range(peer):
    """"10.0.0.0/8" -> (4, (first, last)) as integers."""
    net = ipaddress.ip_network(peer)
    return net.version, (int(net.network_address), int(net.broadcast_address))


def _l4_ranges(protos, family, spec):
    if not spec.l4proto or not protos:
        return [L4PROTO[2]]
    numbers = []
    for proto in protos:
        if proto == "icmp":
            names = {4: ["icmp"], 6: ["icmpv6"]}.get(family, ["icmp", "icmpv6"])
        else:
            names = [proto]
        numbers += [L4PROTO_NUMBERS[name] for name in names]
    return [(n, n) for n in sorted(set(numbers))]


# ---- maps and lookup rules ------------------------------------------------------

def element_key(fields, corner):
    """The key bytes (hex) of a box corner: each field big-endian, zero-padded to
    whole registers."""
    out = b""
    for (_, length, _), value in zip(fields, corner):
        out += value.to_bytes(length, NETWORK_ORDER).ljust(ir.padded_length(length), b"\0")
    return out.hex()


def direction_lookups(profile, direction, net_rules, chain):
    """(sets, lookup rules) of one profile direction: the maps with their elements, and
    the rules of `chain` (out-P / in-P) before its `goto` to the default chain; a map
    of more than MAP_CHUNK elements is several (`chunks`). The main maps come first
    (both families), then, when fallbacks follow, the guard (`fallback_guard`), then
    the fallbacks."""
    specs = map_specs(net_rules)
    sets, main, fallbacks = [], [], []
    for spec in specs:
        name = f"{chain}.{spec.suffix()}"
        fields = spec.fields()
        claimed = _claimed(profile, direction, name, spec, net_rules, fields)
        if not claimed:
            continue
        order = key_order(fields, claimed)
        fields = [fields[i] for i in order]
        boxes = sorted(([box[i] for i in order], number) for box, number in claimed)
        elements = tuple((element_key(fields, [r[0] for r in box]),
                          element_key(fields, [r[1] for r in box]),
                          rule_chain(chain, number)) for box, number in boxes)
        for chunk_name, chunk in chunks(name, elements):
            sets.append(ir.SetDef(chunk_name, "concat", interval=True,
                                  fields=tuple((f[0], f[1]) for f in fields),
                                  data="verdict", elements=chunk))
            (fallbacks if spec.tail else main).append(ir.RuleDef(chain, lookup_exprs(
                spec, direction, chunk_name, [f[0] for f in fields])))
    if not any(spec.family for spec in specs):
        fallbacks += _plain_fallback(direction, net_rules, chain)
    if main and fallbacks:
        main.append(fallback_guard(specs[0], chain))
    return sets, main + fallbacks


def default_chain(profile_chain):
    """`out-P.default`: the chain of the profile direction's default rule, which the
    profile chain's last rule and the fallback guard both `goto`."""
    return f"{profile_chain}.default"


def fallback_guard(main_spec, chain):
    """The rule between the main maps and the fallbacks: `th dport >= 0 goto
    out-P.default` (`meta l4proto >= 0` when the main maps have no port). It matches
    exactly when the kernel could load the main maps' last-loaded field, that is every
    field of their key (`th dport` needs the layer-4 protocol and a first fragment; the
    interface and the address always load): such a packet missed the main map of its
    family, so it matches no rule, and the fallbacks (subsets of the main maps) need not
    be looked up. Measured: the two fallback lookups a missing packet skips were 1-8%
    of a restricted connection's rate (five alternated runs, median ~3.5%)."""
    if main_spec.port:
        load = ("payload", "transport", 2, 2)
        zero = "0000"
    else:
        load = ("meta", "l4proto")
        zero = "00"
    return ir.RuleDef(chain, (load, ("cmp", "gte", zero),
                              ("verdict", "goto", default_chain(chain))))


def _claimed(profile, direction, name, spec, net_rules, fields):
    """The map's boxes [(box, rule number)]; [] when no rule has a box."""
    numbered = [(n, rule_boxes(r, spec)) for n, r in enumerate(net_rules, 1)]
    try:
        claimed, _unclaimed = partition(numbered, [f[2] for f in fields],
                                       4 * MAX_MAP_ELEMENTS)
    except TooManyBoxes as many:
        raise _too_many(profile, direction, name, f"over {many.args[0]}") from None
    claimed = merge_adjacent(claimed)
    if len(claimed) > MAX_MAP_ELEMENTS:
        raise _too_many(profile, direction, name, len(claimed))
    return claimed


def chunks(name, elements):
    """[(map name, elements)]: at most MAP_CHUNK elements a map (the kernel's insert
    into one concatenated-range map grows faster than linearly with its size). The
    boxes are disjoint, so a packet hits at most one element over all the chunks and
    their order does not matter. Names: out-P.v4, out-P.v4.2, out-P.v4.3, ..."""
    return [(name if start == 0 else f"{name}.{start // MAP_CHUNK + 1}",
             elements[start:start + MAP_CHUNK])
            for start in range(0, len(elements), MAP_CHUNK)]


def _too_many(profile, direction, name, count):
    return PolicyError([(profile.where.path, profile.where.line,
                         f"profile {profile.name!r}: its {direction} rules make {count} "
                         f"lookup elements in {name}, more than {MAX_MAP_ELEMENTS}: "
                         f"merge or shorten its rules")])


def map_specs(net_rules):
    """The lookups of a direction, in the order the profile chain tries them."""
    cidr = any(p != LOOPBACK for r in net_rules for p in r.peers)
    with_ports = any(r.ports for r in net_rules)
    without_ports = any(not r.ports for r in net_rules)
    specs = []
    for family in ((4, 6) if cidr else (None,)):
        specs.append(MapSpec(family, True, with_ports))
        if with_ports and without_ports:
            specs.append(MapSpec(family, True, False, "np"))
        if family:
            specs.append(MapSpec(family, False, False, "nl"))
    return specs


FIELD_PREFERENCE = {"inet_service": 0, "ipv4_addr": 1, "ipv6_addr": 1, "inet_proto": 2,
                    "iface_index": 3}


def key_order(fields, claimed):
    """The order of the key's fields, the most selective first. The kernel's pipapo
    lookup narrows field by field and its cost grows with the elements still matching
    after each field (measured: 1,000 elements matching the first field halve a
    connection rate): so the field whose values each lie in the fewest elements at
    worst leads, then by preference port, address, protocol, interface."""
    return sorted(range(len(fields)),
                  key=lambda i: (_deepest(box[i] for box, _ in claimed),
                                 FIELD_PREFERENCE[fields[i][0]]))


def _deepest(ranges):
    """The most ranges any one value lies in (a sweep over their ends)."""
    events = []
    for low, high in ranges:
        events += [(low, 1), (high + 1, -1)]
    depth = deepest = 0
    for _, step in sorted(events):
        depth += step
        deepest = max(deepest, depth)
    return deepest


def lookup_exprs(spec, direction, name, order):
    """The lookup rule: load each field (datatype names in key order) into its
    registers, then the verdict map."""
    exprs = []
    if spec.family:
        exprs += [("meta", "nfproto"), ("cmp", "eq", NFPROTO[spec.family])]
    register = FIRST_KEY_REGISTER
    for datatype in order:
        exprs += _load_field(datatype, direction, spec.family, register)
        register += ir.padded_length(dict((f[0], f[1]) for f in spec.fields())[datatype]) // 4
    return tuple(exprs) + (("vmap", name, FIRST_KEY_REGISTER),)


def _load_field(datatype, direction, family, register):
    if datatype == "iface_index":
        iface = "oif" if direction == "egress" else "iif"
        return [("meta", iface, register), ("byteorder", "hton", 4, 4, register)]
    if datatype == "inet_proto":
        return [("meta", "l4proto", register)]
    if datatype == "inet_service":
        return [("payload", "transport", 2, 2, register)]
    return [("payload", "network", ADDR_OFFSET[(direction, family)],
             ADDRESS[family][1], register)]


def _plain_fallback(direction, net_rules, chain):
    """Without CIDR peers, the rules a packet without `meta l4proto` can match (no
    protocols, no ports) are `loopback`-only or for everything: the first of each kind
    decides, so at most two rules, tried after the maps (which such a packet breaks)."""
    iface = "oif" if direction == "egress" else "iif"
    rules, loopback_seen = [], False
    for number, net_rule in enumerate(net_rules, 1):
        if net_rule.protos or net_rule.ports:
            continue
        target = ("verdict", "goto", rule_chain(chain, number))
        if set(net_rule.peers) == {LOOPBACK}:
            if not loopback_seen:
                rules.append(ir.RuleDef(chain, (("meta", iface),
                                                ("cmp", "eq", LOOPBACK_IFINDEX), target)))
                loopback_seen = True
            continue
        rules.append(ir.RuleDef(chain, (target,)))
        break
    return rules
