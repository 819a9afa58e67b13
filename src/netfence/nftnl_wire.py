"""nf_tables messages as bytes, without pyroute2: reload's whole path.

pyroute2 costs ~100 ms to import and ~0.2 ms per message it encodes; reload needs
neither. This module writes the attribute lists nftnl_batch builds for tables, sets
and chains (pyroute2's form: [(name, value)], nested values as {'attrs': [...]},
arrays as lists of those) and the GET requests of nftnl.Ruleset, and splits and
parses the kernel's answers. The bytes are exactly those pyroute2's classes
(nftnl_msg) write for the same lists: tests/unit/test_nftnl_wire.py compares them
for every attribute and a whole table, and test_nftnl_fixtures.py against what a
real kernel accepted. An attribute name this module does not know is refused
(EncodingError), never dropped: a new attribute in nftnl_batch fails the tests and
the reload loudly until it is added to SCHEMA.

pyroute2's conventions, kept on purpose (the kernel accepts both): nested attributes
without NLA_F_NESTED, array items numbered 1, 2, 3... except expression lists, whose
items are all NFTA_LIST_ELEM (1).
"""

import struct

from .nfconst import (NETWORK_ORDER, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFPROTO_UNSPEC,
                      NLA_TYPE_MASK, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_REQUEST,
                      NLMSG_HDRLEN, NLMSGERR_ATTR_MSG, NFGENMSG_LEN)
from .nfconst import NFTA_LIST_ELEM, NFTA_SET_ELEM_LIST_ELEMENTS
from .nfencode import attr as nla, message

ATTRS_OFFSET = NLMSG_HDRLEN + NFGENMSG_LEN      # an nf_tables message's first attribute


class EncodingError(Exception):
    """A message would lose or garble an attribute: a bug in netfence, not the kernel's."""


# attribute value kinds (pyroute2's names in the comments)
STR = "asciiz"          # text + NUL
BE16, BE32, SBE32, BE64 = "be16", "be32", "sbe32", "be64"
RAW = "cdata"           # bytes as given
NEST = "nested"         # {'attrs': [...]}
ARRAY = "array"         # [{'attrs': [...]}, ...], items numbered 1, 2, 3...
EXPRS = "exprs"         # [{'attrs': [...]}, ...], every item NFTA_LIST_ELEM (1)

# name -> (attribute type, kind): linux include/uapi/linux/netfilter/nf_tables.h and
# nfnetlink.h. Names are unique across messages, so one table serves them all.
SCHEMA = {
    "NFNL_BATCH_GENID": (1, BE32),
    "NFTA_GEN_ID": (1, BE32),
    "NFTA_TABLE_NAME": (1, STR), "NFTA_TABLE_FLAGS": (2, BE32),
    "NFTA_TABLE_USERDATA": (6, RAW),
    "NFTA_CHAIN_TABLE": (1, STR), "NFTA_CHAIN_NAME": (3, STR), "NFTA_CHAIN_HOOK": (4, NEST),
    "NFTA_CHAIN_POLICY": (5, BE32), "NFTA_CHAIN_TYPE": (7, STR),
    "NFTA_CHAIN_FLAGS": (10, BE32), "NFTA_CHAIN_ID": (11, BE32),
    "NFTA_HOOK_HOOKNUM": (1, BE32), "NFTA_HOOK_PRIORITY": (2, SBE32),
    "NFTA_RULE_TABLE": (1, STR), "NFTA_RULE_CHAIN": (2, STR),
    "NFTA_RULE_EXPRESSIONS": (4, EXPRS), "NFTA_RULE_USERDATA": (7, RAW),
    "NFTA_SET_TABLE": (1, STR), "NFTA_SET_NAME": (2, STR), "NFTA_SET_FLAGS": (3, BE32),
    "NFTA_SET_KEY_TYPE": (4, BE32), "NFTA_SET_KEY_LEN": (5, BE32),
    "NFTA_SET_DATA_TYPE": (6, BE32), "NFTA_SET_DATA_LEN": (7, BE32),
    "NFTA_SET_POLICY": (8, BE32), "NFTA_SET_DESC": (9, NEST), "NFTA_SET_ID": (10, BE32),
    "NFTA_SET_TIMEOUT": (11, BE64), "NFTA_SET_GC_INTERVAL": (12, BE32),
    "NFTA_SET_USERDATA": (13, RAW), "NFTA_SET_EXPR": (17, NEST),
    "NFTA_SET_EXPRESSIONS": (18, EXPRS),
    "NFTA_SET_DESC_SIZE": (1, BE32),
    "NFTA_SET_ELEM_LIST_TABLE": (1, STR), "NFTA_SET_ELEM_LIST_SET": (2, STR),
    "NFTA_SET_ELEM_LIST_ELEMENTS": (3, ARRAY),
    "NFTA_SET_ELEM_KEY": (1, NEST), "NFTA_SET_ELEM_DATA": (2, NEST),
    "NFTA_SET_ELEM_FLAGS": (3, BE32), "NFTA_SET_ELEM_TIMEOUT": (4, BE64),
    "NFTA_SET_ELEM_EXPR": (7, NEST), "NFTA_SET_ELEM_KEY_END": (10, NEST),
    "NFTA_DATA_VALUE": (1, RAW), "NFTA_DATA_VERDICT": (2, NEST),
    "NFTA_VERDICT_CODE": (1, SBE32), "NFTA_VERDICT_CHAIN": (2, STR),
    "NFTA_EXPR_NAME": (1, STR), "NFTA_EXPR_DATA": (2, NEST),
    "NFTA_COUNTER_BYTES": (1, BE64), "NFTA_COUNTER_PACKETS": (2, BE64),
}
_INTS = {BE16: (2, False), BE32: (4, False), SBE32: (4, True), BE64: (8, False)}


def encode_attrs(attrs):
    """pyroute2-form attributes -> their bytes, as pyroute2 writes them."""
    return b"".join(_encode_one(name, value) for name, value in attrs)


def _encode_one(name, value):
    try:
        attr_type, kind = SCHEMA[name]
    except KeyError:
        raise EncodingError(f"attribute {name} is unknown to the direct encoder") from None
    try:
        return nla(attr_type, _payload(kind, value))
    except (TypeError, ValueError, OverflowError, KeyError, AttributeError) as exc:
        raise EncodingError(f"attribute {name}: cannot encode {value!r}: {exc}") from None


def _payload(kind, value):
    if kind == STR:
        return value.encode() + b"\0"
    if kind == RAW:
        return bytes(value)
    if kind == NEST:
        return encode_attrs(value["attrs"])
    if kind in (ARRAY, EXPRS):
        return b"".join(nla(1 if kind == EXPRS else number, encode_attrs(item["attrs"]))
                        for number, item in enumerate(value, 1))
    size, signed = _INTS[kind]
    return int(value).to_bytes(size, NETWORK_ORDER, signed=signed)


def build(msg_type, attrs, seq, flags=NLM_F_REQUEST | NLM_F_ACK, family=NFPROTO_INET):
    """One nf_tables message (NFT_MSG_*) with its attributes."""
    return message((NFNL_SUBSYS_NFTABLES << 8) | msg_type, flags, family, 0,
                   encode_attrs(attrs), seq)


def batch_control(msg_type, seq, genid=None):
    """BATCH_BEGIN / BATCH_END; res_id names the nf_tables subsystem; with genid,
    NFNL_BATCH_GENID: the kernel refuses the batch if the ruleset moved on."""
    body = encode_attrs([("NFNL_BATCH_GENID", genid)]) if genid is not None else b""
    return message(msg_type, NLM_F_REQUEST, NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES, body, seq)


# ---- what the kernel answers --------------------------------------------------------

_HEADER = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


def split(data):
    """A receive buffer -> [(header {"type", "flags", "seq"}, raw message bytes)]."""
    offset, out = 0, []
    while offset + NLMSG_HDRLEN <= len(data):
        length, mtype, flags, seq, _pid = _HEADER.unpack_from(data, offset)
        if length < NLMSG_HDRLEN:
            break
        out.append(({"type": mtype, "flags": flags, "seq": seq},
                    data[offset:offset + length]))
        offset += (length + 3) & ~3
    return out


def parse_attrs(data, offset=ATTRS_OFFSET):
    """{attribute type: bytes} of the top-level attributes of one raw nf_tables
    message (after nlmsghdr + nfgenmsg), or of a nested attribute's payload with
    offset=0. The first occurrence of each type wins."""
    out = {}
    end = len(data)
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4:
            break
        out.setdefault(kind & NLA_TYPE_MASK, data[offset + 4:offset + length])
        offset += (length + 3) & ~3
    return out


def iter_attrs(data, offset=0):
    """(attribute type, payload bytes) of every attribute from offset on, in order."""
    end = len(data)
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4:
            break
        yield kind & NLA_TYPE_MASK, data[offset + 4:offset + length]
        offset += (length + 3) & ~3


def iter_elements(raw_elements):
    """The parsed attributes of every element of a raw GETSETELEM dump (each message's
    NFTA_SET_ELEM_LIST_ELEMENTS, each NFTA_LIST_ELEM in it)."""
    for raw in raw_elements:
        for kind, items in iter_attrs(raw, ATTRS_OFFSET):
            if kind != NFTA_SET_ELEM_LIST_ELEMENTS:
                continue
            for item_kind, item in iter_attrs(items):
                if item_kind == NFTA_LIST_ELEM:
                    yield parse_attrs(item, 0)


def parse_error(raw):
    """(errno, extack message) of an NLMSG_ERROR message; errno 0 is a plain ack."""
    (error,) = struct.unpack_from("=i", raw, NLMSG_HDRLEN)
    flags = struct.unpack_from("=H", raw, 6)[0]
    text = ""
    if flags & NLM_F_ACK_TLVS:
        # after the error code: the request's header (NLM_F_CAPPED), or all of it
        orig_len = struct.unpack_from("=I", raw, NLMSG_HDRLEN + 4)[0]
        start = NLMSG_HDRLEN + 4 + (NLMSG_HDRLEN if flags & NLM_F_CAPPED else orig_len)
        text = _extack_message(raw, (start + 3) & ~3)
    return -error, text


def _extack_message(raw, offset):
    for kind, payload in iter_attrs(raw, offset):
        if kind == NLMSGERR_ATTR_MSG:
            return payload.rstrip(b"\0").decode("utf-8", "replace")
    return ""


def udata_tlvs(values):
    """Encode nftnl userdata: (type, bytes) pairs as 1-byte type, 1-byte length TLVs."""
    out = b""
    for kind, value in values:
        if len(value) > 255:
            raise ValueError(f"userdata item too long ({len(value)} bytes)")
        out += struct.pack("BB", kind, len(value)) + value
    return out


def parse_udata(data):
    items, offset = {}, 0
    while offset + 2 <= len(data):
        kind, length = data[offset], data[offset + 1]
        items.setdefault(kind, data[offset + 2:offset + 2 + length])
        offset += 2 + length
    return items


def attr(node, name, default=None):
    """Raw value of the first attribute `name` in a message or nested nla pyroute2
    decoded (Ruleset.read_table: nftnl_msg.decode).

    Raw, i.e. integers rather than pyroute2's names for enumerations (its name tables
    miss values such as NFT_SOCKET_CGROUPV2 and would decode them as None).
    """
    for slot in node['attrs']:
        if slot[0] != name:
            continue
        value = slot[1]
        cell = slot.nla if hasattr(slot, 'nla') else None
        if cell is not None and isinstance(cell.get('value'), int):
            return cell['value']
        return value
    return default
