"""Verdict maps over concatenations (issue 12: profiles as lookups), as nf_tables bytes.

A profile direction's lookup rule reads a key of several fields (oif/iif, l4proto,
address, port) from consecutive 32-bit registers and looks it up in an interval
verdict map; each element is a box (`key` .. `key_end`, both inclusive) whose data is
`goto <rule chain>`. The kernel keeps such a map in a pipapo set (NFT_SET_CONCAT with
more than one field and NFT_SET_INTERVAL): one lookup whatever the number of boxes.

The messages are what `nft --debug=mnl` (nftables 1.0.6) sends for

    map m { type iface_index . inet_proto . ipv4_addr . inet_service : verdict;
            flags interval; elements = { ... : goto c } }

  NEWSET  NFTA_SET_FLAGS       MAP | INTERVAL | CONCAT (0x8c)
          NFTA_SET_KEY_TYPE    the nft datatypes, 6 bits each, the first field highest
          NFTA_SET_KEY_LEN     the padded total (each field a multiple of 4 bytes)
          NFTA_SET_DATA_TYPE   NFT_DATA_VERDICT, NFTA_SET_DATA_LEN 0
          NFTA_SET_DESC        { NFTA_SET_DESC_CONCAT { LIST_ELEM { FIELD_LEN n } ... } }
          NFTA_SET_USERDATA    nft's TLVs (CONCAT_UDATA): without them `nft list` still
                               prints the typed key, with them it is byte-identical
  NEWSETELEM, per element: NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_KEY_END (inclusive: pipapo's
          upper bound, unlike the rbtree's end element), NFTA_SET_ELEM_DATA { VERDICT
          { CODE NFT_GOTO, CHAIN } }

The elements are sent after the chains they name: the kernel resolves the chain when
the element is added (nft_verdict_init), within the same transaction.
"""

from . import nfconst as nf, nftnl_wire as m
from .nfencode import attr, cstring, nested, nft_message

# nftables' datatype numbers (include/datatype.h, enum datatypes)
FIELD_TYPES = {"ipv4_addr": 7, "ipv6_addr": 8, "inet_proto": 12, "inet_service": 13,
               "iface_index": 20}
FIELD_TYPE_NAMES = {number: name for name, number in FIELD_TYPES.items()}
FIELD_LENGTHS = {"ipv4_addr": 4, "ipv6_addr": 16, "inet_proto": 1, "inet_service": 2,
                 "iface_index": 4}
TYPE_BITS = 6                   # nftables' concat_subtype_add: type << 6 | subtype
NFT_SET_MAP, NFT_SET_CONCAT = 0x8, 0x80
NFT_DATA_VERDICT = 0xFFFFFF00
NFTA_SET_FLAGS, NFTA_SET_KEY_LEN, NFTA_SET_DATA_TYPE, NFTA_SET_DATA_LEN = 3, 5, 6, 7
NFTA_SET_DESC, NFTA_SET_ID, NFTA_SET_USERDATA = 9, 10, 13
NFTA_SET_DESC_CONCAT, NFTA_SET_FIELD_LEN = 2, 1
NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_KEY_END = 2, 10
MAP_FLAGS = NFT_SET_MAP | nf.NFT_SET_INTERVAL | NFT_SET_CONCAT
# What nft 1.0.6 writes for a `type a . b ... : verdict` interval map (libnftnl TLVs:
# key byte order 0 and data byte order 0 (a concatenation has none), key typeof
# {expression type EXPR_CONCAT (13), no sub-data: the fields are datatypes, not
# expressions}, data interval 0).
CONCAT_UDATA = bytes.fromhex("000400000000" "010400000000" "0308" "00040d000000" "0100"
                             "060400000000")
ELEMENTS_PER_MESSAGE = 128      # ~110 bytes each with a v6 key: ~14 KiB per message


def is_map(set_def):
    return set_def.data == "verdict"


def _be32(value):
    return int(value).to_bytes(4, nf.NETWORK_ORDER)


def concat_type(fields):
    """NFTA_SET_KEY_TYPE of a concatenation: each field's datatype in 6 bits, the
    first field in the highest bits (what nft sends, and reads back for `nft list`)."""
    number = 0
    for name, _length in fields:
        number = (number << TYPE_BITS) | FIELD_TYPES[name]
    return number


def split_concat_type(number):
    """((datatype name, length), ...) of a concatenation's key type (concat_type
    reversed; a datatype netfence does not use as ("type-N", 0))."""
    fields = []
    while number:
        number, field = number >> TYPE_BITS, number & ((1 << TYPE_BITS) - 1)
        name = FIELD_TYPE_NAMES.get(field, f"type-{field}")
        fields.append((name, FIELD_LENGTHS.get(name, 0)))
    return tuple(reversed(fields))


def key_length(fields):
    return sum((length + 3) // 4 * 4 for _name, length in fields)


def check_map(set_def):
    """Refuse a map the kernel would refuse or misread: a verdict map over two or more
    fields (pipapo), with interval, and elements whose keys have the key's length."""
    if not is_map(set_def) or set_def.key != "concat" or not set_def.interval:
        raise ValueError(f"set {set_def.name}: only interval verdict maps over a "
                         "concatenation are supported")
    if len(set_def.fields) < 2 or set_def.timeout or set_def.counter:
        raise ValueError(f"map {set_def.name}: two or more fields, no timeout, no counter")
    for name, length in set_def.fields:
        if FIELD_LENGTHS.get(name) != length:
            raise ValueError(f"map {set_def.name}: unknown field {name!r} ({length} bytes)")
    size = key_length(set_def.fields)
    for key, key_end, chain in set_def.elements:
        if len(bytes.fromhex(key)) != size or len(bytes.fromhex(key_end)) != size:
            raise ValueError(f"map {set_def.name}: element {key}-{key_end} is not "
                             f"{size} bytes")
        if not chain:
            raise ValueError(f"map {set_def.name}: element {key} names no chain")


def map_set_body(table_name, set_def, set_id):
    """The attributes of the NEWSET message of a verdict map."""
    check_map(set_def)
    fields = b"".join(nested(nf.NFTA_LIST_ELEM, attr(NFTA_SET_FIELD_LEN, _be32(length)))
                      for _name, length in set_def.fields)
    return (attr(nf.NFTA_SET_TABLE, cstring(table_name))
            + attr(nf.NFTA_SET_NAME, cstring(set_def.name))
            + attr(NFTA_SET_FLAGS, _be32(MAP_FLAGS))
            + attr(nf.NFTA_SET_KEY_TYPE, _be32(concat_type(set_def.fields)))
            + attr(NFTA_SET_KEY_LEN, _be32(key_length(set_def.fields)))
            + attr(NFTA_SET_DATA_TYPE, _be32(NFT_DATA_VERDICT))
            + attr(NFTA_SET_DATA_LEN, _be32(0))
            + attr(NFTA_SET_ID, _be32(set_id))
            + nested(NFTA_SET_DESC, nested(NFTA_SET_DESC_CONCAT, fields))
            + attr(NFTA_SET_USERDATA, CONCAT_UDATA))


_GOTO_CODE = attr(nf.NFTA_VERDICT_CODE, nf.NFT_GOTO.to_bytes(4, nf.NETWORK_ORDER, signed=True))


def goto_data(chain):
    """NFTA_SET_ELEM_DATA's payload: the verdict `goto chain`."""
    return nested(nf.NFTA_DATA_VERDICT, _GOTO_CODE + attr(nf.NFTA_VERDICT_CHAIN, cstring(chain)))


_VALUE_WRAPS = {}


def _value_in(outer, value):
    """nested(outer, attr(NFTA_DATA_VALUE, value)): the headers and padding are the
    same for every value of a length, cut once from an encoded zero value (a map's
    two keys per element, thousands of elements)."""
    wrap = _VALUE_WRAPS.get((outer, len(value)))
    if wrap is None:
        whole = nested(outer, attr(nf.NFTA_DATA_VALUE, bytes(len(value))))
        wrap = _VALUE_WRAPS[outer, len(value)] = (whole[:2 * 4], whole[2 * 4 + len(value):])
    return wrap[0] + value + wrap[1]


def element_item(key_hex, key_end_hex, chain):
    """One NFTA_LIST_ELEM of a map's NEWSETELEM message."""
    return nested(nf.NFTA_LIST_ELEM,
                  _value_in(nf.NFTA_SET_ELEM_KEY, bytes.fromhex(key_hex))
                  + _value_in(NFTA_SET_ELEM_KEY_END, bytes.fromhex(key_end_hex))
                  + nested(NFTA_SET_ELEM_DATA, goto_data(chain)))


def element_messages(table_name, set_def, flags, next_seq):
    """[(operation, bytes, seq)]: NEWSETELEM messages of the map's static elements."""
    out = []
    items = set_def.elements
    for start in range(0, len(items), ELEMENTS_PER_MESSAGE):
        chunk = items[start:start + ELEMENTS_PER_MESSAGE]
        body = (attr(nf.NFTA_SET_ELEM_LIST_TABLE, cstring(table_name))
                + attr(nf.NFTA_SET_ELEM_LIST_SET, cstring(set_def.name))
                + nested(nf.NFTA_SET_ELEM_LIST_ELEMENTS,
                         b"".join(element_item(*item) for item in chunk)))
        seq = next_seq()
        out.append((f"add {len(chunk)} element(s) of map {set_def.name}",
                    nft_message(nf.NFT_MSG_NEWSETELEM, flags, body, seq), seq))
    return out


# ---- drift: what a map looks like, expected and as the kernel dumps it --------------

def expected_map(set_def):
    """(shape, elements) of a map as map_summary reads it back after we sent it:
    shape (flags, key length, data type, field lengths), elements {(key hex, key_end
    hex, verdict code, chain)}."""
    shape = (MAP_FLAGS, key_length(set_def.fields), NFT_DATA_VERDICT,
             tuple(int(length) for _name, length in set_def.fields))
    return shape, frozenset((key, key_end, nf.NFT_GOTO, chain)
                            for key, key_end, chain in set_def.elements)


def is_map_attrs(set_attrs):
    """Whether a set (its raw attributes, nftnl_msg.parse_attrs) is a map."""
    return bool(_int(set_attrs.get(NFTA_SET_FLAGS)) & NFT_SET_MAP)


def map_summary(set_attrs, raw_elements):
    """(shape, elements) of a map from its raw set attributes and its raw GETSETELEM
    dump (the kernel dumps the data length of a verdict map as sizeof(struct
    nft_verdict): not compared)."""
    desc = m.parse_attrs(set_attrs.get(NFTA_SET_DESC, b""), 0)
    lengths = tuple(_int(m.parse_attrs(item, 0).get(NFTA_SET_FIELD_LEN))
                    for kind, item in m.iter_attrs(desc.get(NFTA_SET_DESC_CONCAT, b""))
                    if kind == nf.NFTA_LIST_ELEM)
    shape = (_int(set_attrs.get(NFTA_SET_FLAGS)), _int(set_attrs.get(NFTA_SET_KEY_LEN)),
             _int(set_attrs.get(NFTA_SET_DATA_TYPE)), lengths)
    return shape, frozenset(_element(attrs) for attrs in m.iter_elements(raw_elements))


def _element(attrs):
    def value(kind):
        data = m.parse_attrs(attrs.get(kind, b""), 0).get(nf.NFTA_DATA_VALUE)
        return data.hex() if data is not None else None
    data = m.parse_attrs(attrs.get(NFTA_SET_ELEM_DATA, b""), 0)
    verdict = m.parse_attrs(data.get(nf.NFTA_DATA_VERDICT, b""), 0)
    code = verdict.get(nf.NFTA_VERDICT_CODE)
    chain = verdict.get(nf.NFTA_VERDICT_CHAIN)
    return (value(nf.NFTA_SET_ELEM_KEY), value(NFTA_SET_ELEM_KEY_END),
            int.from_bytes(code, nf.NETWORK_ORDER, signed=True) if code else None,
            chain.rstrip(b"\0").decode("utf-8", "replace") if chain is not None else None)


def _int(data):
    return int.from_bytes(data, nf.NETWORK_ORDER) if data else 0


def map_differences(expected, got):
    """Short phrases: how the maps the kernel holds differ from those we sent."""
    out = []
    for name in sorted(set(expected) & set(got)):
        (want_shape, want), (have_shape, have) = expected[name], got[name]
        if want_shape != have_shape:
            out.append(f"map {name} changed (flags, key or data)")
        elif want != have:
            out.append(f"map {name}: {len(want - have)} element(s) missing or altered, "
                       f"{len(have - want)} foreign")
    return out
