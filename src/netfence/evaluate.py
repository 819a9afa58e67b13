"""Which rule of a profile denied a logged packet: pure, no kernel.

The nflog copy says which profile logged it (the prefix) but not which rule: this
module finds it the way the kernel did, by running the profile's chain (out-P for
egress, in-P for ingress) from the compiled table in the snapshot on the packet's
headers, first match wins. The rules are the same ir expressions the kernel runs
(ir.py), interpreted here on the copied bytes:

  - `parse_ip` reads the IPv4 or IPv6 header and finds the transport header as the
    kernel's nft_pktinfo does: IPv4 by its IHL, IPv6 by walking the extension headers
    (hop-by-hop, routing, destination options, fragment, AH) like ipv6_find_hdr; a
    fragment that is not the first has no transport header (payload loads break);
  - `meta oif` / `meta iif` come from nflog's NFULA_IFINDEX_OUTDEV / INDEV (the
    `loopback` peer);
  - set lookups (the grant rules) never match: a packet a grant let through was not
    denied.

Returns None when no rule matches with what the copy holds (a copy cut short by its
128-byte snaplen behind long extension headers, or a snapshot that no longer is the
kernel's): the log then says the rule is unknown rather than guessing.
"""

import ipaddress

from .nfconst import HOST_ORDER, NFPROTO_IPV4, NFPROTO_IPV6

IPV6_EXTENSIONS = {0, 43, 60}          # hop-by-hop, routing, destination options: (len+1)*8
IPV6_FRAGMENT, IPV6_AH, IPV6_NONE = 44, 51, 59
PORT_PROTOS = {6, 17, 33, 132, 136}    # tcp udp dccp sctp udplite: ports at 0 and 2
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
VERDICT_CHAINS = ("deny-", "reject-")


def parse_ip(payload):
    """The headers of an IP packet copy -> {"version", "l4proto", "proto", "src", "dst",
    "sport", "dport", "network", "transport"} (transport: the bytes from the transport
    header on, None when unreachable), or None when it is no IP packet."""
    if len(payload) < 20:
        return None
    version = payload[0] >> 4
    if version == 4:
        thoff = (payload[0] & 0x0F) * 4
        fragment_offset = int.from_bytes(payload[6:8], "big") & 0x1FFF
        l4proto = payload[9]
        src, dst = payload[12:16], payload[16:20]
        ok = thoff >= 20 and fragment_offset == 0
    elif version == 6 and len(payload) >= 40:
        l4proto, thoff, ok = _walk_ipv6(payload)
        src, dst = payload[8:24], payload[24:40]
    else:
        return None
    transport = payload[thoff:] if ok and thoff <= len(payload) else None
    sport = dport = None
    if l4proto in PORT_PROTOS and transport is not None and len(transport) >= 4:
        sport = int.from_bytes(transport[0:2], "big")
        dport = int.from_bytes(transport[2:4], "big")
    return {"version": version, "l4proto": l4proto,
            "proto": PROTO_NAMES.get(l4proto, str(l4proto)),
            "src": str(ipaddress.ip_address(bytes(src))),
            "dst": str(ipaddress.ip_address(bytes(dst))),
            "sport": sport, "dport": dport, "network": payload, "transport": transport}


def _walk_ipv6(payload):
    """(l4proto, transport offset, transport reachable) as ipv6_find_hdr finds them."""
    nexthdr, offset = payload[6], 40
    while nexthdr in IPV6_EXTENSIONS or nexthdr in (IPV6_FRAGMENT, IPV6_AH):
        if offset + 8 > len(payload):
            return nexthdr, offset, False          # cut short: not known further
        if nexthdr == IPV6_FRAGMENT:
            fragment_offset = int.from_bytes(payload[offset + 2:offset + 4], "big") & ~7
            if fragment_offset:                    # not the first: no transport header
                return payload[offset], offset + 8, False
            length = 8
        elif nexthdr == IPV6_AH:
            length = (payload[offset + 1] + 2) * 4
        else:
            length = (payload[offset + 1] + 1) * 8
        nexthdr, offset = payload[offset], offset + length
    return nexthdr, offset, True


def first_match(rules, chain, headers, outdev=None, indev=None):
    """The first rule of `chain` (the snapshot table's "rules", JSON form) that matches
    the packet: (comment, verdict) with verdict "allow", "deny" or "reject"; None when
    none does."""
    meta = {"nfproto": bytes([NFPROTO_IPV4 if headers["version"] == 4 else NFPROTO_IPV6]),
            "l4proto": bytes([headers["l4proto"]]),
            "oif": _ifindex(outdev), "iif": _ifindex(indev)}
    for rule in rules:
        if rule["chain"] == chain and _matches(rule["exprs"], headers, meta):
            return rule["comment"], _verdict(rule["exprs"][-1])
    return None


def _ifindex(index):
    return None if index is None else index.to_bytes(4, HOST_ORDER)


def _matches(exprs, headers, meta):
    """Run the rule's expressions up to its verdict; False as soon as one breaks."""
    register = None
    for expr in exprs[:-1]:
        kind = expr[0]
        if kind == "meta":
            register = meta.get(expr[1])
        elif kind == "payload":
            register = _load(headers, expr[1], expr[2], expr[3])
        elif kind == "bitwise":
            mask, xor = bytes.fromhex(expr[1]), bytes.fromhex(expr[2])
            register = bytes((b & m) ^ x for b, m, x in zip(register, mask, xor))
        elif kind == "cmp":
            if not _compare(expr[1], register, bytes.fromhex(expr[2])):
                return False
        elif kind == "range":
            inside = bytes.fromhex(expr[2]) <= register <= bytes.fromhex(expr[3])
            if inside != (expr[1] == "eq"):
                return False
        elif kind == "counter":
            continue
        else:                                      # lookup, socket: the grants
            return False
        if register is None:
            return False                           # a load the packet cannot give
    return True


def _load(headers, base, offset, length):
    data = headers["network"] if base == "network" else headers["transport"]
    if data is None or offset + length > len(data):
        return None
    return bytes(data[offset:offset + length])


def _compare(op, left, right):
    return {"eq": left == right, "neq": left != right, "lt": left < right,
            "lte": left <= right, "gt": left > right, "gte": left >= right}[op]


def _verdict(expr):
    if expr[0] == "reject":
        return "reject"
    if expr[1] == "drop":
        return "deny"
    if expr[1] == "goto" and expr[2].startswith(VERDICT_CHAINS):
        return "deny" if expr[2].startswith("deny-") else "reject"
    return "allow"


def rule_number(comment):
    """"P egress rule 3" -> 3; "P egress default" -> None (the default)."""
    words = comment.split()
    if len(words) >= 2 and words[-2] == "rule" and words[-1].isdigit():
        return int(words[-1])
    return None
