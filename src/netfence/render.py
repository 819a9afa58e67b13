"""Print an ir.TableDef the way `nft list table` prints the same table.

Used by `netfence explain` (the rules a login would get) and checked against the real
`nft` listing in the integration tests, so the two never drift apart.
"""

import functools
import ipaddress

from .ir import padded_length
from .nfconst import HOST_ORDER, NF_LOG_UID, NFPROTO_IPV4, NFPROTO_IPV6
from .setkinds import KEY_TYPES, key_number

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp"}
# nft's text for a comparison: "eq" prints nothing ("th dport 80")
CMP_SYMBOLS = {"eq": "", "neq": "!= ", "lt": "< ", "lte": "<= ", "gt": "> ", "gte": ">= "}
NFPROTO_NAMES = {NFPROTO_IPV4: "ip", NFPROTO_IPV6: "ip6"}
NFPROTO_FAMILIES = {NFPROTO_IPV4: "ipv4", NFPROTO_IPV6: "ipv6"}
ADDRESS_FIELDS = {(NFPROTO_IPV4, 16): "daddr", (NFPROTO_IPV4, 12): "saddr",
                  (NFPROTO_IPV6, 24): "daddr", (NFPROTO_IPV6, 8): "saddr"}
IFNAMES = {1: "lo"}
PROTOCOLS_FILE = "/etc/protocols"


def render_table(table, elements=None, counters=True):
    elements = elements or {}
    blocks = [render_set(s, elements.get(s.name, ())) for s in table.sets]
    blocks += [render_chain(table, c, counters) for c in table.chains]
    body = "\n\n".join(blocks)
    return f"table {table.family} {table.name} {{\n{body}\n}}\n"


def render_set(set_def, keys=()):
    if set_def.data == "verdict":
        return render_map(set_def)
    if set_def.key not in KEY_TYPES:          # a foreign set: nft would name its type
        raise ValueError(f"cannot render set key type {set_def.key!r}")
    """keys: hex keys, or [low, high] ranges (a static set's resolution, resolve.py)."""
    lines = [f"\tset {set_def.name} {{", f"\t\ttype {set_def.key}"]
    flags = [name for name, on in (("interval", set_def.interval),
                                   ("timeout", set_def.timeout)) if on]
    if flags:
        lines.append(f"\t\tflags {','.join(flags)}")
    if set_def.counter:
        lines.append("\t\tcounter")
    if keys:
        # a counted set's elements each show their counter (a new one: at zero), one
        # element a line, aligned after "elements = { " (nft 1.0.6)
        counter = " counter packets 0 bytes 0" if set_def.counter else ""
        separator = ",\n\t\t\t     " if set_def.counter else ", "
        shown = separator.join(render_key(set_def.key, k) + counter if isinstance(k, str)
                               else _render_range(k) for k in keys)
        lines.append(f"\t\telements = {{ {shown} }}")
    lines.append("\t}")
    return "\n".join(lines)


def render_map(set_def):
    """A verdict map over a concatenation (compiler_lookups), one element a line."""
    key = " . ".join(name for name, _ in set_def.fields)
    lines = [f"\tmap {set_def.name} {{", f"\t\ttype {key} : verdict"]
    if set_def.interval:
        lines.append("\t\tflags interval")
    if set_def.elements:
        shown = ",\n\t\t\t     ".join(_render_element(set_def.fields, element)
                                       for element in set_def.elements)
        lines.append(f"\t\telements = {{ {shown} }}")
    lines.append("\t}")
    return "\n".join(lines)


def _render_element(fields, element):
    start_hex, end_hex, chain = element
    start, end, offset, parts = bytes.fromhex(start_hex), bytes.fromhex(end_hex), 0, []
    for name, length in fields:
        low = int.from_bytes(start[offset:offset + length], "big")
        high = int.from_bytes(end[offset:offset + length], "big")
        parts.append(_render_field(name, length, low, high))
        offset += padded_length(length)
    return f"{' . '.join(parts)} : goto {chain}"


def _render_field(name, length, low, high):
    """One field of an element as nft 1.0.6 prints it: an interface by its name when
    it is lo, a protocol by its /etc/protocols name, an address range as a prefix
    when it is one."""
    if name in ("ipv4_addr", "ipv6_addr"):
        return _render_address_range(length, low, high)
    if name == "iface_index":
        show = _render_ifindex
    elif name == "inet_proto" and low == high:
        return protocol_name(low)
    else:
        show = str
    return show(low) if low == high else f"{show(low)}-{show(high)}"


def _render_ifindex(index):
    return f'"{IFNAMES[index]}"' if index in IFNAMES else str(index)


def _render_address_range(length, low, high):
    first = ipaddress.ip_address(low.to_bytes(length, "big"))
    last = ipaddress.ip_address(high.to_bytes(length, "big"))
    if first == last:
        return str(first)
    networks = list(ipaddress.summarize_address_range(first, last))
    if len(networks) == 1:
        return str(networks[0])
    return f"{first}-{last}"


@functools.cache
def _protocols():
    """number -> name, as getprotobynumber(3) reads /etc/protocols (nft prints these)."""
    names = {}
    try:
        with open(PROTOCOLS_FILE, encoding="ascii", errors="replace") as handle:
            for line in handle:
                words = line.split("#", 1)[0].split()
                if len(words) >= 2 and words[1].isdigit():
                    names.setdefault(int(words[1]), words[0])
    except OSError:
        pass
    return names


def protocol_name(number):
    return _protocols().get(number, str(number))


def render_key(key_type, hex_key):
    return str(key_number(hex_key))


def _render_range(pair):
    low, high = pair
    return str(low) if low == high else f"{low}-{high}"


def render_chain(table, chain, counters=True):
    lines = [f"\tchain {chain.name} {{"]
    if chain.hook:
        lines.append(f"\t\ttype filter hook {chain.hook} priority "
                     f"{_priority(chain.priority)}; policy {chain.policy};")
    lines += [f"\t\t{render_rule(r.exprs, r.comment, counters)}"
              for r in table.rules if r.chain == chain.name]
    lines.append("\t}")
    return "\n".join(lines)


def _priority(value):
    if value == 0:
        return "filter"
    return f"filter {'+' if value > 0 else '-'} {abs(value)}"


def render_rule(exprs, comment="", counters=True):
    """nft's text for one rule: dependencies folded into the matches that need them."""
    if exprs and exprs[-1][0] == "vmap":
        return _render_lookup(exprs) + (f' comment "{comment}"' if comment else "")
    words, state, i = [], {}, 0
    while i < len(exprs):
        consumed, text = _render_at(exprs, i, state, counters)
        if text:
            words.append(text)
        i += consumed
    if comment:
        words.append(f'comment "{comment}"')
    return " ".join(words)


def _render_lookup(exprs):
    """A profile's lookup rule as nft prints it: the key's fields joined by " . ";
    the family test is implied by the address field and the byteorder is not shown."""
    family, fields = None, []
    for expr in exprs[:-1]:
        if expr[0] == "cmp":                   # meta nfproto ipv4|ipv6
            family = _value(expr[2])[0]
        elif expr[0] == "meta" and len(expr) == 3:
            fields.append(expr[1] if expr[1] in ("oif", "iif") else f"meta {expr[1]}")
        elif expr[0] == "payload" and expr[1] == "network":
            fields.append(f"{NFPROTO_NAMES[family]} {ADDRESS_FIELDS[(family, expr[2])]}")
        elif expr[0] == "payload":
            fields.append("th dport")
    text = f"{' . '.join(fields)} vmap @{exprs[-1][1]}"
    if family is not None and not any(e[0] == "payload" and e[1] == "network" for e in exprs):
        text = f"meta nfproto {NFPROTO_FAMILIES[family]} {text}"
    return text


def _value(hex_data):
    return bytes.fromhex(hex_data)


def _render_at(exprs, i, state, counters):
    expr = exprs[i]
    kind = expr[0]
    nxt = exprs[i + 1] if i + 1 < len(exprs) else (None,)
    if kind == "meta" and nxt[0] == "cmp":
        return 2, _meta_cmp(expr[1], nxt, exprs[i + 2:], state)
    if kind == "meta" and nxt[0] == "byteorder" and exprs[i + 2][0] == "lookup":
        return 3, f"meta {expr[1]} @{exprs[i + 2][1]}"     # nft prints no byteorder
    if kind in ("meta", "socket") and nxt[0] == "lookup":
        left = f"meta {expr[1]}" if kind == "meta" else f"socket cgroupv2 level {expr[2]}"
        return 2, f"{left} @{nxt[1]}"
    if kind == "ct":              # ct state & new != 0
        return 3, "ct state new"
    if kind == "payload":
        return _payload(exprs, i, state)
    if kind in ("meta", "socket"):
        # a load another statement uses (emit-P's meta set mark): nft prints it there
        reg = expr[2] if kind == "meta" and len(expr) == 3 else 1
        state[("reg", reg)] = (f"meta {expr[1]}" if kind == "meta"
                               else f"socket cgroupv2 level {expr[2]}")
        return 1, ""
    if kind == "meta_set":
        return 1, f"meta {expr[1]} set {state[('reg', expr[2])]}"
    return 1, _simple(expr, counters)


def _meta_cmp(key, cmp, rest, state):
    value = _value(cmp[2])
    if key == "nfproto":
        state["nfproto"] = value[0]
        if rest and rest[0][0] == "payload":        # implied by the address match
            return ""
        return f"meta nfproto {NFPROTO_FAMILIES[value[0]]}"
    if key == "l4proto":
        state["l4proto"] = value[0]
        if rest and rest[0][0] == "payload" and rest[0][1] == "transport":
            return ""
        if cmp[1] == "gte" and value[0] == 0:     # the fallback guard: ">= ip"
            return f"meta l4proto >= {protocol_name(0)}"
        return f"meta l4proto {PROTO_NAMES.get(value[0], value[0])}"
    if key in ("oif", "iif"):
        index = int.from_bytes(value, HOST_ORDER)
        return f'{key} "{IFNAMES.get(index, index)}"'
    return f"meta {key} {int.from_bytes(value, HOST_ORDER)}"


def _payload(exprs, i, state):
    _, base, offset, length = exprs[i]
    if base == "transport":
        cmp = exprs[i + 1]
        proto = PROTO_NAMES.get(state.get("l4proto"), "th")
        if cmp[0] == "range":
            text = f"{int(cmp[2], 16)}-{int(cmp[3], 16)}"
        else:
            text = CMP_SYMBOLS[cmp[1]] + str(int(cmp[2], 16))
        return 2, f"{proto} dport {text}"
    family = state.get("nfproto", NFPROTO_IPV4)
    field = ADDRESS_FIELDS[(family, offset)]
    nxt = exprs[i + 1]
    if nxt[0] == "bitwise":
        address = ipaddress.ip_address(_value(exprs[i + 2][2]))
        prefix = bin(int(nxt[1], 16)).count("1")
        return 3, f"{NFPROTO_NAMES[family]} {field} {address}/{prefix}"
    return 2, f"{NFPROTO_NAMES[family]} {field} {ipaddress.ip_address(_value(nxt[2]))}"


def _simple(expr, counters):
    kind = expr[0]
    if kind == "counter":
        return "counter packets 0 bytes 0" if counters else "counter"
    if kind == "limit":
        _, rate, per, burst = expr
        unit = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}[per]
        return f"limit rate {rate}/{unit} burst {burst} packets"
    if kind == "log":
        flags = " flags skuid" if expr[2] & NF_LOG_UID else ""
        return f'log prefix "{expr[1]}"{flags}'
    if kind == "nflog":
        _, prefix, group, snaplen = expr
        return f'log prefix "{prefix}" group {group}' + (f" snaplen {snaplen}" if snaplen else "")
    if kind == "reject":
        return "reject with tcp reset" if expr[1] == "tcp-reset" else "reject"
    if kind == "verdict":
        return " ".join(str(part) for part in expr[1:])
    raise ValueError(f"cannot render expression {expr!r}")
