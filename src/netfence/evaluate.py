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
    `loopback` peer, and the first field of every lookup key);
  - a lookup rule (compiler_lookups) loads its key's fields into the 32-bit registers
    from 8 on, the verdict map's element whose box holds the key names the rule chain
    `out-P.N` the packet goes to, and that chain's rule (its comment "P egress rule N")
    decides; a load the packet cannot give ends the rule, as in the kernel, and so does
    a miss;
  - a rule chain's deny or reject goes on to its denial chain (`out-P.deny`,
    `.reject`, `.reset`: the grants, then the verdict); the rule that decided is
    still the one with the comment;
  - set lookups (the grant rules) never match: a packet a grant let through was not
    denied.

Returns None when no rule matches with what the copy holds (a copy cut short by its
128-byte snaplen behind long extension headers, or a snapshot that no longer is the
kernel's): the log then says the rule is unknown rather than guessing.
"""

import ipaddress

from . import ir
from .nfconst import HOST_ORDER, NFPROTO_IPV4, NFPROTO_IPV6

IPV6_EXTENSIONS = {0, 43, 60}          # hop-by-hop, routing, destination options: (len+1)*8
IPV6_FRAGMENT, IPV6_AH, IPV6_NONE = 44, 51, 59
PORT_PROTOS = {6, 17, 33, 132, 136}    # tcp udp dccp sctp udplite: ports at 0 and 2
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
VERDICT_CHAINS = ("deny-", "reject-")
MAX_GOTO_DEPTH = 16                    # the kernel's NFT_JUMP_STACK_SIZE


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


def first_match(rules, chain, headers, outdev=None, indev=None, sets=()):
    """The rule that decides the packet in `chain` (the snapshot table's "rules" and
    "sets", JSON form), first match wins, a verdict map's element followed to the rule
    chain it names: (comment, verdict) with verdict "allow", "deny" or "reject"; None
    when no rule decides."""
    meta = {"nfproto": bytes([NFPROTO_IPV4 if headers["version"] == 4 else NFPROTO_IPV6]),
            "l4proto": None if headers["l4proto"] is None else bytes([headers["l4proto"]]),
            "oif": _ifindex(outdev), "iif": _ifindex(indev)}
    by_chain = {}
    for rule in rules:
        by_chain.setdefault(rule["chain"], []).append(rule)
    maps = {s["name"]: s for s in sets if s.get("data") == "verdict"}
    return _run_chain(by_chain, maps, chain, headers, meta, depth=0)


def _run_chain(by_chain, maps, chain, headers, meta, depth):
    if depth > MAX_GOTO_DEPTH:               # a loop in a damaged snapshot: undecided
        return None
    for rule in by_chain.get(chain, ()):
        outcome = _run_rule(rule["exprs"], headers, meta, maps)
        if outcome is None:
            continue
        if isinstance(outcome, str):         # a verdict map's goto
            return _run_chain(by_chain, maps, outcome, headers, meta, depth + 1)
        last = rule["exprs"][-1]
        if last[0] == "verdict" and last[1] == "goto" and not last[2].startswith(VERDICT_CHAINS):
            decided = _run_chain(by_chain, maps, last[2], headers, meta, depth + 1)
            if decided and rule.get("comment"):      # a rule chain -> its denial chain
                return rule["comment"], decided[1]
            return decided
        return rule["comment"], _verdict(last)
    return None


def _ifindex(index):
    return None if index is None else index.to_bytes(4, HOST_ORDER)


def _run_rule(exprs, headers, meta, maps):
    """Run the rule's expressions up to its verdict: None as soon as one breaks or
    does not match, True when all matched, a chain name when a verdict map sent the
    packet there. Register 1 holds what the single-value matches load; registers 8..
    (NFT_REG32_00..) the 32-bit words of a lookup key."""
    register, words = None, {}
    for expr in exprs:
        kind = expr[0]
        if kind in ("verdict", "reject"):
            return True
        if kind in ("meta", "payload"):
            value = (meta.get(expr[1]) if kind == "meta"
                     else _load(headers, expr[1], expr[2], expr[3]))
            if value is None:
                return None                        # a load the packet cannot give
            target = expr[2] if kind == "meta" and len(expr) == 3 else (
                expr[4] if kind == "payload" and len(expr) == 5 else 1)
            if target == 1:
                register = value
            else:
                _store(words, target, value)
        elif kind == "byteorder" and len(expr) == 5:
            _hton_words(words, expr[4], expr[2])
        elif kind == "vmap":
            return _vmap(maps.get(expr[1]), words, expr[2])
        elif kind == "bitwise":
            mask, xor = bytes.fromhex(expr[1]), bytes.fromhex(expr[2])
            register = bytes((b & m) ^ x for b, m, x in zip(register, mask, xor))
        elif not _test(expr, register):
            return None
    return True


def _test(expr, register):
    kind = expr[0]
    if kind in ("cmp", "range") and register is None:
        return False
    if kind == "cmp":
        return _compare(expr[1], register, bytes.fromhex(expr[2]))
    if kind == "range":
        inside = bytes.fromhex(expr[2]) <= register <= bytes.fromhex(expr[3])
        return inside == (expr[1] == "eq")
    return kind == "counter"                       # lookup, socket: the grants


def _store(words, register, value):
    padded = value.ljust(ir.padded_length(len(value)), b"\0")
    for index in range(len(padded) // 4):
        words[register + index] = padded[index * 4:index * 4 + 4]


def _hton_words(words, register, length):
    for index in range(length // 4):
        word = words.get(register + index, bytes(4))
        words[register + index] = int.from_bytes(word, HOST_ORDER).to_bytes(4, "big")


def _vmap(set_json, words, register):
    """The chain of the element whose box holds the key, None on a miss."""
    if set_json is None:
        return None
    spans = ir.field_spans(set_json["fields"])
    key = b"".join(words.get(register + i, bytes(4)) for i in range(spans[-1][1] // 4))
    for start_hex, end_hex, chain in set_json["elements"]:
        start, end = bytes.fromhex(start_hex), bytes.fromhex(end_hex)
        if all(start[a:b] <= key[a:b] <= end[a:b] for a, b in spans):
            return chain
    return None


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
