"""ir expression tuples <-> nf_tables expression attributes (pyroute2 nla values).

One table per expression kind, both directions side by side, so a constant can only
be wrong in one place. Values are the kernel's (include/uapi/linux/netfilter/
nf_tables.h); each was checked against what `nft --debug=netlink` sends for the same
rule and against `nft list` reading back what we send (tests/integration/test_nftnl*).
nftnl_raw writes the same expressions as bytes directly, from the same tables.
"""

from . import nfconst as nf
from .nfconst import NFT_LIMIT_PKTS, NFT_REG_1, NFT_REG_2, NFT_REG_VERDICT

# ir names -> kernel numbers; every expression loads into / reads from register 1
# except meta and meta_set with an explicit register (emit-P's mark juggling) and the
# lookup rules' key fields: meta and payload into NFT_REG32_xx, read by "vmap"
META_KEYS = {"iif": nf.NFT_META_IIF, "oif": nf.NFT_META_OIF, "skuid": nf.NFT_META_SKUID,
             "skgid": nf.NFT_META_SKGID, "mark": nf.NFT_META_MARK,
             "nfproto": nf.NFT_META_NFPROTO, "l4proto": nf.NFT_META_L4PROTO}
PAYLOAD_BASES = {"network": nf.NFT_PAYLOAD_NETWORK_HEADER,
                 "transport": nf.NFT_PAYLOAD_TRANSPORT_HEADER}
SOCKET_KEYS = {"cgroupv2": nf.NFT_SOCKET_CGROUPV2}
CT_KEYS = {"state": nf.NFT_CT_STATE}
BYTEORDER_OPS = {"ntoh": nf.NFT_BYTEORDER_NTOH, "hton": nf.NFT_BYTEORDER_HTON}
CMP_OPS = {"eq": nf.NFT_CMP_EQ, "neq": nf.NFT_CMP_NEQ, "lt": nf.NFT_CMP_LT,
           "lte": nf.NFT_CMP_LTE, "gt": nf.NFT_CMP_GT, "gte": nf.NFT_CMP_GTE}
RANGE_OPS = {"eq": nf.NFT_RANGE_EQ, "neq": nf.NFT_RANGE_NEQ}
REJECT_TYPES = {"tcp-reset": nf.NFT_REJECT_TCP_RST,
                "icmpx-port-unreachable": nf.NFT_REJECT_ICMPX_UNREACH}
REJECT_CODES = {"icmpx-port-unreachable": nf.NFT_REJECT_ICMPX_PORT_UNREACH}
SETTABLE_META_KEYS = ("mark",)
# 16-byte registers (a cgroup id (8) fits in one), and the 32-bit ones a concatenated
# key's fields are loaded into (NFT_REG32_00..15: the kernel's numbers 8..23; a
# 16-byte register 1..4 is the same storage as NFT_REG32_00 + 4 * (n - 1) on)
REGISTERS = (NFT_REG_1, NFT_REG_2) + tuple(range(nf.NFT_REG32_00, nf.NFT_REG32_15 + 1))
LOOKUP_KEY_REGISTERS = (NFT_REG_1,) + tuple(range(nf.NFT_REG32_00, nf.NFT_REG32_15 + 1))
VERDICTS = {"drop": nf.NF_DROP, "accept": nf.NF_ACCEPT, "jump": nf.NFT_JUMP,
            "goto": nf.NFT_GOTO, "return": nf.NFT_RETURN}


def _reverse(table):
    return {value: key for key, value in table.items()}


def _expr(name, attrs):
    return {'attrs': [('NFTA_EXPR_NAME', name), ('NFTA_EXPR_DATA', {'attrs': attrs})]}


def _data(hex_value):
    return {'attrs': [('NFTA_DATA_VALUE', bytes.fromhex(hex_value))]}


def encode_expr(expr):
    """One ir expression tuple -> the nla value of one NFTA_RULE_EXPRESSIONS item."""
    try:
        encoder = _ENCODERS[expr[0]]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"unknown expression {expr!r}") from None
    try:
        return encoder(*expr[1:])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"invalid expression {expr!r}: {exc}") from None


def _register(reg):
    if reg not in REGISTERS:
        raise ValueError(f"register {reg!r} is not one netfence uses")
    return reg


def _meta(key, reg=NFT_REG_1):
    return _expr('meta', [('NFTA_META_KEY', META_KEYS[key]),
                          ('NFTA_META_DREG', _register(reg))])


def _meta_set(key, reg):
    if key not in SETTABLE_META_KEYS:
        raise ValueError(f"meta {key} cannot be set")
    return _expr('meta', [('NFTA_META_KEY', META_KEYS[key]),
                          ('NFTA_META_SREG', _register(reg))])


def _payload(base, offset, length, reg=NFT_REG_1):
    return _expr('payload', [('NFTA_PAYLOAD_DREG', _register(reg)),
                             ('NFTA_PAYLOAD_BASE', PAYLOAD_BASES[base]),
                             ('NFTA_PAYLOAD_OFFSET', int(offset)),
                             ('NFTA_PAYLOAD_LEN', int(length))])


def _socket(key, level):
    return _expr('socket', [('NFTA_SOCKET_KEY', SOCKET_KEYS[key]),
                            ('NFTA_SOCKET_DREG', NFT_REG_1),
                            ('NFTA_SOCKET_LEVEL', int(level))])


def _ct(key):
    return _expr('ct', [('NFTA_CT_KEY', CT_KEYS[key]), ('NFTA_CT_DREG', NFT_REG_1)])


def _byteorder(op, length, size, reg=NFT_REG_1):
    return _expr('byteorder', [('NFTA_BYTEORDER_SREG', _register(reg)),
                               ('NFTA_BYTEORDER_DREG', _register(reg)),
                               ('NFTA_BYTEORDER_OP', BYTEORDER_OPS[op]),
                               ('NFTA_BYTEORDER_LEN', int(length)),
                               ('NFTA_BYTEORDER_SIZE', int(size))])


def _bitwise(mask, xor):
    if len(mask) != len(xor):
        raise ValueError("mask and xor differ in length")
    return _expr('bitwise', [('NFTA_BITWISE_SREG', NFT_REG_1),
                             ('NFTA_BITWISE_DREG', NFT_REG_1),
                             ('NFTA_BITWISE_LEN', len(mask) // 2),
                             ('NFTA_BITWISE_MASK', _data(mask)),
                             ('NFTA_BITWISE_XOR', _data(xor))])


def _cmp(op, value):
    return _expr('cmp', [('NFTA_CMP_SREG', NFT_REG_1), ('NFTA_CMP_OP', CMP_OPS[op]),
                         ('NFTA_CMP_DATA', _data(value))])


def _range(op, low, high):
    return _expr('range', [('NFTA_RANGE_SREG', NFT_REG_1), ('NFTA_RANGE_OP', RANGE_OPS[op]),
                           ('NFTA_RANGE_FROM_DATA', _data(low)),
                           ('NFTA_RANGE_TO_DATA', _data(high))])


def _lookup(set_name):
    # By name only: the kernel finds a set added earlier in the same transaction
    # by name too (NFTA_LOOKUP_SET_ID is not needed; tested).
    return _expr('lookup', [('NFTA_LOOKUP_SET', set_name), ('NFTA_LOOKUP_SREG', NFT_REG_1)])


def _vmap(set_name, sreg):
    # A verdict map: NFTA_LOOKUP_DREG NFT_REG_VERDICT makes the element's data the
    # rule's verdict (a miss breaks the rule), as nft sends for `... vmap @m`.
    if sreg not in LOOKUP_KEY_REGISTERS:
        raise ValueError(f"a lookup key cannot start at register {sreg!r}")
    return _expr('lookup', [('NFTA_LOOKUP_SET', set_name), ('NFTA_LOOKUP_SREG', sreg),
                            ('NFTA_LOOKUP_DREG', NFT_REG_VERDICT)])


def _counter():
    return _expr('counter', [])


def _limit(rate, per_seconds, burst):
    return _expr('limit', [('NFTA_LIMIT_RATE', int(rate)), ('NFTA_LIMIT_UNIT', int(per_seconds)),
                           ('NFTA_LIMIT_BURST', int(burst)),
                           ('NFTA_LIMIT_TYPE', NFT_LIMIT_PKTS), ('NFTA_LIMIT_FLAGS', 0)])


def _log(prefix, flags):
    # No NFTA_LOG_GROUP: the packet goes to the kernel log (nf_log), not nflog.
    return _expr('log', [('NFTA_LOG_PREFIX', prefix), ('NFTA_LOG_FLAGS', int(flags))])


def _nflog(prefix, group, snaplen):
    # NFTA_LOG_GROUP makes it nfnetlink_log (nft: `log group G`); the order is nft's.
    if not (0 <= int(group) <= 0xFFFF and 0 <= int(snaplen) <= 0xFFFFFFFF):
        raise ValueError("nflog group is 16 bits, snaplen 32")
    return _expr('log', [('NFTA_LOG_PREFIX', prefix), ('NFTA_LOG_GROUP', int(group)),
                         ('NFTA_LOG_SNAPLEN', int(snaplen))])


def _reject(kind):
    attrs = [('NFTA_REJECT_TYPE', REJECT_TYPES[kind])]
    if kind in REJECT_CODES:
        attrs.append(('NFTA_REJECT_ICMP_CODE', REJECT_CODES[kind]))
    return _expr('reject', attrs)


def _verdict(kind, chain=None):
    if (chain is None) != (kind not in ("jump", "goto")):
        raise ValueError("jump and goto, and only they, name a chain")
    verdict = [('NFTA_VERDICT_CODE', VERDICTS[kind])]
    if chain is not None:
        verdict.append(('NFTA_VERDICT_CHAIN', chain))
    return _expr('immediate', [('NFTA_IMMEDIATE_DREG', NFT_REG_VERDICT),
                               ('NFTA_IMMEDIATE_DATA',
                                {'attrs': [('NFTA_DATA_VERDICT', {'attrs': verdict})]})])


_ENCODERS = {
    "meta": _meta, "meta_set": _meta_set, "payload": _payload, "socket": _socket,
    "ct": _ct, "byteorder": _byteorder, "bitwise": _bitwise, "cmp": _cmp, "range": _range,
    "lookup": _lookup, "vmap": _vmap,
    "counter": _counter, "limit": _limit, "log": _log, "nflog": _nflog, "reject": _reject,
    "verdict": _verdict,
}


# -- decoding (what the kernel dumps) -> ir tuples ------------------------------------

def decode_expr(node, attr):
    """A decoded NFTA_RULE_EXPRESSIONS item -> ir tuple.

    `attr(node, name)` reads one raw attribute (nftnl_msg.attr). Expressions netfence
    never writes come back as ("unknown", name), so reading a table someone edited by
    hand does not fail.
    """
    name = attr(node, 'NFTA_EXPR_NAME')
    data = attr(node, 'NFTA_EXPR_DATA')
    decoder = _DECODERS.get(name)
    if decoder is None or data is None:
        return ("unknown", name)
    try:
        return decoder(data, attr)
    except KeyError:
        return ("unknown", name)


def _hex(data_node, attr):
    return attr(data_node, 'NFTA_DATA_VALUE').hex()


def _d_meta(d, a):
    key = _reverse(META_KEYS)[a(d, 'NFTA_META_KEY')]
    source = a(d, 'NFTA_META_SREG')
    if source is not None:
        return ("meta_set", key, source)
    dest = a(d, 'NFTA_META_DREG')
    return ("meta", key) if dest == NFT_REG_1 else ("meta", key, dest)


def _d_payload(d, a):
    load = ("payload", _reverse(PAYLOAD_BASES)[a(d, 'NFTA_PAYLOAD_BASE')],
            a(d, 'NFTA_PAYLOAD_OFFSET'), a(d, 'NFTA_PAYLOAD_LEN'))
    dest = a(d, 'NFTA_PAYLOAD_DREG')
    return load if dest == NFT_REG_1 else load + (dest,)


def _d_socket(d, a):
    return ("socket", _reverse(SOCKET_KEYS)[a(d, 'NFTA_SOCKET_KEY')], a(d, 'NFTA_SOCKET_LEVEL'))


def _d_ct(d, a):
    return ("ct", _reverse(CT_KEYS)[a(d, 'NFTA_CT_KEY')])


def _d_byteorder(d, a):
    convert = ("byteorder", _reverse(BYTEORDER_OPS)[a(d, 'NFTA_BYTEORDER_OP')],
               a(d, 'NFTA_BYTEORDER_LEN'), a(d, 'NFTA_BYTEORDER_SIZE'))
    register = a(d, 'NFTA_BYTEORDER_DREG')      # a lookup key's oif/iif: its own
    return convert if register == NFT_REG_1 else convert + (register,)


def _d_bitwise(d, a):
    return ("bitwise", _hex(a(d, 'NFTA_BITWISE_MASK'), a), _hex(a(d, 'NFTA_BITWISE_XOR'), a))


def _d_cmp(d, a):
    return ("cmp", _reverse(CMP_OPS)[a(d, 'NFTA_CMP_OP')], _hex(a(d, 'NFTA_CMP_DATA'), a))


def _d_range(d, a):
    return ("range", _reverse(RANGE_OPS)[a(d, 'NFTA_RANGE_OP')],
            _hex(a(d, 'NFTA_RANGE_FROM_DATA'), a), _hex(a(d, 'NFTA_RANGE_TO_DATA'), a))


def _d_lookup(d, a):
    if a(d, 'NFTA_LOOKUP_DREG') == NFT_REG_VERDICT:
        return ("vmap", a(d, 'NFTA_LOOKUP_SET'), a(d, 'NFTA_LOOKUP_SREG'))
    return ("lookup", a(d, 'NFTA_LOOKUP_SET'))


def _d_counter(d, a):
    return ("counter",)


def _d_limit(d, a):
    return ("limit", a(d, 'NFTA_LIMIT_RATE'), a(d, 'NFTA_LIMIT_UNIT'), a(d, 'NFTA_LIMIT_BURST'))


def _d_log(d, a):
    group = a(d, 'NFTA_LOG_GROUP')
    if group is not None:
        return ("nflog", a(d, 'NFTA_LOG_PREFIX', ""), group, a(d, 'NFTA_LOG_SNAPLEN', 0))
    return ("log", a(d, 'NFTA_LOG_PREFIX', ""), a(d, 'NFTA_LOG_FLAGS', 0))


def _d_reject(d, a):
    return ("reject", _reverse(REJECT_TYPES)[a(d, 'NFTA_REJECT_TYPE')])


def _d_immediate(d, a):
    verdict = a(a(d, 'NFTA_IMMEDIATE_DATA'), 'NFTA_DATA_VERDICT')
    kind = _reverse(VERDICTS)[a(verdict, 'NFTA_VERDICT_CODE')]
    chain = a(verdict, 'NFTA_VERDICT_CHAIN')
    return ("verdict", kind, chain) if chain is not None else ("verdict", kind)


def canonical_registers(expr):
    """The expression as the kernel dumps it: a 32-bit register that starts a 16-byte
    one (NFT_REG32_00, 04, 08, 12) comes back as that 16-byte register (1..4;
    nft_dump_register), which is the same storage."""
    kind = expr[0] if expr else None
    position = {"meta": 2, "payload": 4, "vmap": 2, "byteorder": 4}.get(kind)
    if position is None or len(expr) <= position:
        return expr
    reg = expr[position]
    if isinstance(reg, int) and nf.NFT_REG32_00 <= reg and (reg - nf.NFT_REG32_00) % 4 == 0:
        reg = NFT_REG_1 + (reg - nf.NFT_REG32_00) // 4
    if reg == NFT_REG_1 and kind != "vmap":
        return expr[:position]
    return expr[:position] + (reg,) + expr[position + 1:]


_DECODERS = {
    "meta": _d_meta, "payload": _d_payload, "socket": _d_socket, "ct": _d_ct,
    "byteorder": _d_byteorder, "bitwise": _d_bitwise, "cmp": _d_cmp, "range": _d_range,
    "lookup": _d_lookup,
    "counter": _d_counter, "limit": _d_limit, "log": _d_log, "reject": _d_reject,
    "immediate": _d_immediate,
}
