"""ir expressions -> nf_tables bytes, written directly (reload of large policies).

pyroute2 takes ~2 ms per rule message (a 20,000-rule policy: ~60 s of CPU before the
batch leaves). The functions below write the same bytes as nftnl_expr's encoders do
through pyroute2: nlattrs in the order those give them, nested attributes without
NLA_F_NESTED and every list item numbered NFTA_LIST_ELEM, exactly as pyroute2 does.
tests/unit/test_nftnl_raw.py (random rules of every expression kind),
test_nftnl_encode.py and test_nftnl_wire.py (a whole compiled table) check them
against pyroute2 byte for byte; reload itself never imports pyroute2.
"""

import struct

from . import nfconst as nf
from .nfconst import NFT_LIMIT_PKTS, NFT_REG_1, NFT_REG_VERDICT
from .nfencode import attr as nla, cstring
from .nftnl_expr import (BYTEORDER_OPS, CMP_OPS, CT_KEYS, META_KEYS, PAYLOAD_BASES,
                         RANGE_OPS, REJECT_CODES, REJECT_TYPES, SOCKET_KEYS, VERDICTS,
                         encode_expr)

_U16 = struct.Struct(">H").pack
_U32 = struct.Struct(">I").pack
_I32 = struct.Struct(">i").pack
_U64 = struct.Struct(">Q").pack


def _value(hex_value):
    return nla(nf.NFTA_DATA_VALUE, bytes.fromhex(hex_value))


def _raw_expr(name, body):
    return nla(nf.NFTA_LIST_ELEM, nla(nf.NFTA_EXPR_NAME, cstring(name))
               + nla(nf.NFTA_EXPR_DATA, body))


def _raw_regs(*attr_types):
    """Register attributes, each naming register 1."""
    return b"".join(nla(attr_type, _U32(NFT_REG_1)) for attr_type in attr_types)


def _raw_meta(key, reg=NFT_REG_1):
    return _raw_expr("meta", nla(nf.NFTA_META_KEY, _U32(META_KEYS[key]))
                     + nla(nf.NFTA_META_DREG, _U32(reg)))


def _raw_meta_set(key, reg):
    return _raw_expr("meta", nla(nf.NFTA_META_KEY, _U32(META_KEYS[key]))
                     + nla(nf.NFTA_META_SREG, _U32(reg)))


def _raw_payload(base, offset, length, reg=NFT_REG_1):
    return _raw_expr("payload", nla(nf.NFTA_PAYLOAD_DREG, _U32(reg))
                     + nla(nf.NFTA_PAYLOAD_BASE, _U32(PAYLOAD_BASES[base]))
                     + nla(nf.NFTA_PAYLOAD_OFFSET, _U32(int(offset)))
                     + nla(nf.NFTA_PAYLOAD_LEN, _U32(int(length))))


def _raw_socket(key, level):
    return _raw_expr("socket", nla(nf.NFTA_SOCKET_KEY, _U32(SOCKET_KEYS[key]))
                     + _raw_regs(nf.NFTA_SOCKET_DREG)
                     + nla(nf.NFTA_SOCKET_LEVEL, _U32(int(level))))


def _raw_ct(key):
    return _raw_expr("ct", nla(nf.NFTA_CT_KEY, _U32(CT_KEYS[key])) + _raw_regs(nf.NFTA_CT_DREG))


def _raw_byteorder(op, length, size, reg=NFT_REG_1):
    return _raw_expr("byteorder", nla(nf.NFTA_BYTEORDER_SREG, _U32(reg))
                     + nla(nf.NFTA_BYTEORDER_DREG, _U32(reg))
                     + nla(nf.NFTA_BYTEORDER_OP, _U32(BYTEORDER_OPS[op]))
                     + nla(nf.NFTA_BYTEORDER_LEN, _U32(int(length)))
                     + nla(nf.NFTA_BYTEORDER_SIZE, _U32(int(size))))


def _raw_bitwise(mask, xor):
    return _raw_expr("bitwise", _raw_regs(nf.NFTA_BITWISE_SREG, nf.NFTA_BITWISE_DREG)
                     + nla(nf.NFTA_BITWISE_LEN, _U32(len(mask) // 2))
                     + nla(nf.NFTA_BITWISE_MASK, _value(mask))
                     + nla(nf.NFTA_BITWISE_XOR, _value(xor)))


def _raw_cmp(op, value):
    return _raw_expr("cmp", _raw_regs(nf.NFTA_CMP_SREG) + nla(nf.NFTA_CMP_OP, _U32(CMP_OPS[op]))
                     + nla(nf.NFTA_CMP_DATA, _value(value)))


def _raw_range(op, low, high):
    return _raw_expr("range", _raw_regs(nf.NFTA_RANGE_SREG)
                     + nla(nf.NFTA_RANGE_OP, _U32(RANGE_OPS[op]))
                     + nla(nf.NFTA_RANGE_FROM_DATA, _value(low))
                     + nla(nf.NFTA_RANGE_TO_DATA, _value(high)))


def _raw_lookup(set_name):
    return _raw_expr("lookup", nla(nf.NFTA_LOOKUP_SET, cstring(set_name))
                     + _raw_regs(nf.NFTA_LOOKUP_SREG))


def _raw_vmap(set_name, sreg):
    return _raw_expr("lookup", nla(nf.NFTA_LOOKUP_SET, cstring(set_name))
                     + nla(nf.NFTA_LOOKUP_SREG, _U32(sreg))
                     + nla(nf.NFTA_LOOKUP_DREG, _U32(NFT_REG_VERDICT)))


def _raw_limit(rate, per, burst):
    return _raw_expr("limit", nla(nf.NFTA_LIMIT_RATE, _U64(int(rate)))
                     + nla(nf.NFTA_LIMIT_UNIT, _U64(int(per)))
                     + nla(nf.NFTA_LIMIT_BURST, _U32(int(burst)))
                     + nla(nf.NFTA_LIMIT_TYPE, _U32(NFT_LIMIT_PKTS))
                     + nla(nf.NFTA_LIMIT_FLAGS, _U32(0)))


def _raw_log(prefix, flags):
    return _raw_expr("log", nla(nf.NFTA_LOG_PREFIX, cstring(prefix))
                     + nla(nf.NFTA_LOG_FLAGS, _U32(int(flags))))


def _raw_nflog(prefix, group, snaplen):
    return _raw_expr("log", nla(nf.NFTA_LOG_PREFIX, cstring(prefix))
                     + nla(nf.NFTA_LOG_GROUP, _U16(int(group)))
                     + nla(nf.NFTA_LOG_SNAPLEN, _U32(int(snaplen))))


def _raw_reject(kind):
    code = (nla(nf.NFTA_REJECT_ICMP_CODE, bytes([REJECT_CODES[kind]]))
            if kind in REJECT_CODES else b"")
    return _raw_expr("reject", nla(nf.NFTA_REJECT_TYPE, _U32(REJECT_TYPES[kind])) + code)


def _raw_verdict(kind, chain=None):
    verdict = nla(nf.NFTA_VERDICT_CODE, _I32(VERDICTS[kind]))
    if chain is not None:
        verdict += nla(nf.NFTA_VERDICT_CHAIN, cstring(chain))
    return _raw_expr("immediate", nla(nf.NFTA_IMMEDIATE_DREG, _U32(NFT_REG_VERDICT))
                     + nla(nf.NFTA_IMMEDIATE_DATA, nla(nf.NFTA_DATA_VERDICT, verdict)))


_RAW_ENCODERS = {
    "meta": _raw_meta, "meta_set": _raw_meta_set, "payload": _raw_payload, "socket": _raw_socket, "ct": _raw_ct,
    "byteorder": _raw_byteorder, "bitwise": _raw_bitwise, "cmp": _raw_cmp,
    "range": _raw_range, "lookup": _raw_lookup, "vmap": _raw_vmap,
    "counter": lambda: _raw_expr("counter", b""), "limit": _raw_limit, "log": _raw_log,
    "nflog": _raw_nflog, "reject": _raw_reject, "verdict": _raw_verdict,
}
_RAW_CACHE = {}


def expr_bytes(expr):
    """One ir expression -> the bytes of its NFTA_LIST_ELEM item (cached: a policy
    repeats most expressions many times)."""
    try:
        return _RAW_CACHE[expr]
    except KeyError:
        pass
    except TypeError:
        raise ValueError(f"unknown expression {expr!r}") from None
    encode_expr(expr)                   # validates exactly as the pyroute2 path does
    data = _RAW_ENCODERS[expr[0]](*expr[1:])
    if len(_RAW_CACHE) < 200000:
        _RAW_CACHE[expr] = data
    return data


def rule_head(table, chain):
    """A NEWRULE message's first attributes: its table and chain."""
    return nla(nf.NFTA_RULE_TABLE, cstring(table)) + nla(nf.NFTA_RULE_CHAIN, cstring(chain))


def rule_body(table, chain, exprs, udata=None, head=None):
    """The attributes of a NEWRULE message (after nlmsghdr and nfgenmsg); head:
    rule_head(table, chain), when the caller keeps it for a chain's rules."""
    body = ((head or rule_head(table, chain))
            + nla(nf.NFTA_RULE_EXPRESSIONS, b"".join([expr_bytes(e) for e in exprs])))
    if udata:
        body += nla(nf.NFTA_RULE_USERDATA, udata)
    return body
