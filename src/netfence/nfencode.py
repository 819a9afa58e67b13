"""Netlink bytes written by hand: attributes, nf_tables messages, set element
messages and the login hook's message templates.

One encoder for everything that does not go through pyroute2's classes: the hook's
templates (built at compile time by `build_templates`, or at login by
`set_templates` when the snapshot has none), reload's bulk element messages
(`element_list_message`, ~3 us per element where pyroute2 takes ~0.5 ms) and the rule
bodies nftnl_raw writes with `attr`. Light on purpose (the hook may import it at
login): nfconst, setkinds and formats only, no pyroute2, no struct.

Message layout (names as in the kernel headers):

  nlmsghdr {len u32, type u16, flags u16, seq u32, pid u32}       host byte order
  nfgenmsg {family u8, version u8 = NFNETLINK_V0, res_id be16}
  NEWSETELEM / DESTROYSETELEM, family NFPROTO_INET, res_id 0:
    NFTA_SET_ELEM_LIST_TABLE    "netfence\\0"
    NFTA_SET_ELEM_LIST_SET      "<set>\\0"
    NFTA_SET_ELEM_LIST_ELEMENTS nested
      NFTA_LIST_ELEM            nested
        NFTA_SET_ELEM_KEY       nested
          NFTA_DATA_VALUE       key bytes (uid: 4, cgroup id: 8, host order)
  BATCH_BEGIN / BATCH_END: family AF_UNSPEC, res_id = htons(NFNL_SUBSYS_NFTABLES)

Interval sets (the always rules' static sets) hold each range [low, high] as two
elements, as nft writes them: a start element keyed `low` and an end element keyed
`high + 1` carrying NFTA_SET_ELEM_FLAGS = NFT_SET_ELEM_INTERVAL_END (be32, before the
key); when the first range does not start at 0, an end element keyed 0 comes first
(nft sends it; the rbtree then has no gap below the first range). Keys are
big-endian. Ranges stop at 4294967294 (uid/gid -1 is not an id), so high + 1 fits.

No NFNL_BATCH_GENID in the hook's batches: a login only adds (or destroys) elements,
there is no read-modify-write to protect, and additions commute with a concurrent
reload, which itself uses GENID and so re-reads the elements if a login slipped in.
"""

from . import formats, setkinds
from .nfconst import (
    HOST_ORDER, NETWORK_ORDER, NFNETLINK_V0, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END,
    NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFPROTO_UNSPEC, NFT_MSG_DELSETELEM, NFT_MSG_DESTROYSETELEM,
    NFT_MSG_NEWSETELEM, NFT_NAME_MAXLEN, NFT_SET_ELEM_INTERVAL_END, NFTA_DATA_VALUE,
    NFTA_LIST_ELEM, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_LIST_ELEMENTS,
    NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_TIMEOUT, NLA_F_NESTED, NLA_HDRLEN, NLM_F_ACK,
    NLM_F_CREATE, NLM_F_REQUEST, NLMSG_HDRLEN, NLMSG_SEQ_OFFSET)

NEW_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE   # no EXCL: re-adding is fine
DESTROY_FLAGS = NLM_F_REQUEST | NLM_F_ACK


# ---- building blocks ---------------------------------------------------------------

_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")     # after an attribute of length % 4 == i
# nla_len then nla_type, both u16 in host order, as one u32: one to_bytes, not two
# (reload writes ~30,000 attributes for a 1,000-rule policy)
if HOST_ORDER == "little":
    def _nla_header(attr_type, length):
        return ((attr_type << 16) | length).to_bytes(4, "little")
else:
    def _nla_header(attr_type, length):
        return ((length << 16) | attr_type).to_bytes(4, "big")


def attr(attr_type, data):
    """One netlink attribute, padded to 4 bytes."""
    length = NLA_HDRLEN + len(data)
    return _nla_header(attr_type, length) + data + _PAD[length & 3]


def nested(attr_type, data):
    """A nested attribute flagged NLA_F_NESTED, as libnftnl writes it."""
    return attr(attr_type | NLA_F_NESTED, data)


def cstring(text):
    return text.encode() + b"\0"


def message(msg_type, flags, family, res_id, body, seq=0):
    """nlmsghdr + nfgenmsg + body; msg_type already carries the subsystem."""
    payload = bytes((family, NFNETLINK_V0)) + res_id.to_bytes(2, NETWORK_ORDER) + body
    return ((NLMSG_HDRLEN + len(payload)).to_bytes(4, HOST_ORDER)
            + msg_type.to_bytes(2, HOST_ORDER) + flags.to_bytes(2, HOST_ORDER)
            + seq.to_bytes(4, HOST_ORDER) + bytes(4) + payload)


def nft_message(msg_type, flags, body, seq=0, family=NFPROTO_INET):
    """An nf_tables message (NFT_MSG_*) from already encoded attributes."""
    return message((NFNL_SUBSYS_NFTABLES << 8) | msg_type, flags, family, 0, body, seq)


def batch_message(msg_type, seq=0):
    """BATCH_BEGIN / BATCH_END without a generation."""
    return message(msg_type, NLM_F_REQUEST, NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES, b"", seq)


def check_name(name):
    if not name or len(name.encode()) >= NFT_NAME_MAXLEN or "\0" in name:
        raise ValueError(f"invalid nftables name {name!r}")


# ---- set elements ------------------------------------------------------------------

def _key_wrap(key_len):
    """(bytes before, bytes after) a key of key_len bytes in its NFTA_LIST_ELEM {
    NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE } } item: the same for every key of a length."""
    item = nested(NFTA_LIST_ELEM, nested(NFTA_SET_ELEM_KEY,
                                         attr(NFTA_DATA_VALUE, bytes(key_len))))
    before = len(item) - key_len - (-key_len % 4)
    return item[:before], item[before + key_len:]


def _element_body(table, set_name, keys):
    # wrapped by slicing, not attribute by attribute: reload carries 60,000 keys over
    # at 10,000 sessions (test_nftnl_encode checks the bytes against pyroute2's)
    wraps, items = {}, []
    for key in keys:
        wrap = wraps.get(len(key))
        if wrap is None:
            wrap = wraps[len(key)] = _key_wrap(len(key))
        items.append(wrap[0] + key + wrap[1])
    return (attr(NFTA_SET_ELEM_LIST_TABLE, cstring(table))
            + attr(NFTA_SET_ELEM_LIST_SET, cstring(set_name))
            + nested(NFTA_SET_ELEM_LIST_ELEMENTS, b"".join(items)))


def interval_elements(ranges, key_len):
    """[(key bytes, is_end)] of merged, sorted, inclusive ranges [[low, high], ...]."""
    items = []
    if ranges and ranges[0][0] != 0:
        items.append((bytes(key_len), True))
    for low, high in ranges:
        items.append((low.to_bytes(key_len, NETWORK_ORDER), False))
        items.append(((high + 1).to_bytes(key_len, NETWORK_ORDER), True))
    return items


def static_elements(ranges, key_len, interval):
    """[(key bytes, is_end)] of a static set: interval_elements for an interval set; a
    hash set holds single ids only, keyed in host order like every login set."""
    if interval:
        return interval_elements(ranges, key_len)
    if any(low != high for low, high in ranges):
        raise ValueError("a hash set holds single ids, not ranges")
    return [(low.to_bytes(key_len, HOST_ORDER), False) for low, _high in ranges]


def interval_list_message(msg_type, flags, seq, table, set_name, items):
    """One NEWSETELEM/DESTROYSETELEM message of interval elements [(key, is_end)]."""
    end = attr(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END.to_bytes(4, NETWORK_ORDER))
    elements = b"".join(
        nested(NFTA_LIST_ELEM, (end if is_end else b"")
               + nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key)))
        for key, is_end in items)
    return _list_message(msg_type, flags, seq, table, set_name, elements)


def _list_message(msg_type, flags, seq, table, set_name, elements):
    """A set element message around already encoded NFTA_LIST_ELEM items."""
    body = (attr(NFTA_SET_ELEM_LIST_TABLE, cstring(table))
            + attr(NFTA_SET_ELEM_LIST_SET, cstring(set_name))
            + nested(NFTA_SET_ELEM_LIST_ELEMENTS, elements))
    return nft_message(msg_type, flags, body, seq)


def set_flush_message(flags, seq, table, set_name):
    """DELSETELEM without NFTA_SET_ELEM_LIST_ELEMENTS: the kernel removes every
    element of the set (`nft flush set`), within the message's transaction."""
    body = (attr(NFTA_SET_ELEM_LIST_TABLE, cstring(table))
            + attr(NFTA_SET_ELEM_LIST_SET, cstring(set_name)))
    return nft_message(NFT_MSG_DELSETELEM, flags, body, seq)


def element_message(msg_type, flags, table, set_name, key_len):
    """(message bytes with seq 0 and a zero key, offset of the key bytes)."""
    for name in (table, set_name):
        check_name(name)
    msg = nft_message(msg_type, flags, _element_body(table, set_name, [bytes(key_len)]))
    # The key is the last attribute; 4 and 8 byte keys need no padding after them.
    pad = -key_len % 4
    return msg, len(msg) - pad - key_len


def timed_element_message(table, set_name, key, timeout_ms):
    """(NEWSETELEM bytes with seq 0 for one key with a kernel timeout, offset of the
    key bytes): NFTA_SET_ELEM_TIMEOUT (be64 ms) comes before the key, so that the key
    stays last and the hook's fill (fastpath) treats it like a template."""
    for name in (table, set_name):
        check_name(name)
    msg = timed_list_message(0, table, set_name, [(key, timeout_ms)])
    return msg, len(msg) - (-len(key) % 4) - len(key)


def timed_list_message(seq, table, set_name, items):
    """One NEWSETELEM message of [(key bytes, timeout ms)]: elements the kernel
    removes when their timeout runs out (sets with NFT_SET_TIMEOUT)."""
    elements = b"".join(
        nested(NFTA_LIST_ELEM, attr(NFTA_SET_ELEM_TIMEOUT, int(ms).to_bytes(8, NETWORK_ORDER))
               + nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key)))
        for key, ms in items)
    return _list_message(NFT_MSG_NEWSETELEM, NEW_FLAGS, seq, table, set_name, elements)


def element_list_message(msg_type, flags, seq, table, set_name, keys):
    """One NEWSETELEM/DESTROYSETELEM message for many keys (reload carries thousands
    of live elements over)."""
    return nft_message(msg_type, flags, _element_body(table, set_name, keys), seq)


# ---- the hook's templates (compile time) -------------------------------------------

def set_templates(set_name, key_len, table=setkinds.TABLE):
    """The NEWSETELEM and DESTROYSETELEM templates of one set (key bytes zero)."""
    new, key_offset = element_message(NFT_MSG_NEWSETELEM, NEW_FLAGS, table, set_name,
                                      key_len)
    destroy, offset = element_message(NFT_MSG_DESTROYSETELEM, DESTROY_FLAGS, table,
                                      set_name, key_len)
    assert offset == key_offset and len(new) == len(destroy)
    return {"key_len": key_len, "key_offset": key_offset, "new": new, "destroy": destroy}


def build_templates(login, table=setkinds.TABLE):
    """Message templates for every set of every profile of a login part, and for
    the accounting sets a login fills (acct-out, acct-in, denied-P: cgroup ids).

    Marshal-able: {"format", "table", "family", "seq_offset", "begin", "end",
    "sets": {set name: {"key_len", "key_offset", "new", "destroy"}}}.
    """
    sets = {}
    owners = [login["profiles"][name] for name in sorted(login["profiles"])]
    if login.get("guards"):
        owners.append(login["guards"])
    for owner in owners:
        for kind in setkinds.KINDS:
            sets[owner[kind.field]] = set_templates(owner[kind.field], kind.key_len, table)
    counted = list((login.get("account") or {}).values())
    counted += [owner["denied_set"] for owner in owners if owner.get("denied_set")]
    for set_name in counted:
        sets[set_name] = set_templates(set_name, setkinds.SCG.key_len, table)
    return {"format": formats.TEMPLATES, "table": table, "family": NFPROTO_INET,
            "seq_offset": NLMSG_SEQ_OFFSET, "begin": batch_message(NFNL_MSG_BATCH_BEGIN),
            "end": batch_message(NFNL_MSG_BATCH_END), "sets": sets}
