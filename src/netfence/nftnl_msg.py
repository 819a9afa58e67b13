"""nf_tables netlink messages: pyroute2's message classes, with their gaps closed.

pyroute2 0.9.7 encodes an attribute only if its name is in the class's nla map and
silently drops every other one (the kernel then answers EINVAL or, worse, accepts a
rule that means something else). So all patched classes live here, in one place, and
`build()` re-decodes every message it encodes and refuses one that lost an attribute.

Gaps closed (verified against linux include/uapi/linux/netfilter/nf_tables.h and
`nft --debug=mnl`):
- `socket` expression: NFTA_SOCKET_LEVEL (3) and the key NFT_SOCKET_CGROUPV2 (3).
- `log` flags as a plain be32 (pyroute2 wants a set of flag names).
- rule and set userdata as raw bytes: pyroute2 encodes rule comments with a 2-byte
  big-endian length, which only matches nftnl's 1-byte type + 1-byte length TLV by luck.
- the batch BEGIN message's NFNL_BATCH_GENID attribute.
- message types NFT_MSG_DESTROYTABLE (26) and NFT_MSG_DESTROYSETELEM (30), kernel >= 6.3.

Reload, gc and status do not import this module: nftnl_wire writes the same bytes
without pyroute2 (tested against `build` here) and parses the answers raw. What is
left here: the reference encoding for those tests, and the decoding of whole
expressions for Ruleset.read_table.
"""

from pyroute2.netlink import nla
from pyroute2.netlink.nfnetlink import nfgen_msg
from pyroute2.netlink.nfnetlink.nftsocket import (
    nft_chain_msg, nft_gen_msg, nft_rule_msg, nft_set_elem_list_msg, nft_set_msg,
    nft_table_msg)

from .nfconst import (
    NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NFT_MSG_NEWCHAIN, NFT_MSG_NEWGEN,
    NFT_MSG_NEWRULE, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_MSG_NEWTABLE, NLM_F_ACK,
    NLM_F_REQUEST)
# the raw side, importable from here as before
from .nftnl_wire import (ATTRS_OFFSET, EncodingError, attr, batch_control,  # noqa: F401
                         iter_attrs, parse_attrs, parse_error, parse_udata, split,
                         udata_tlvs)


def _fresh(cls):
    """Give a patched class its own compiled nla tables.

    pyroute2 caches the compiled map on the class and looks the flag up through the
    MRO: a subclass of an already-compiled class would silently reuse the parent's
    map (without our additions) unless it carries its own flag.
    """
    cls._nlmsg_base__compiled_nla = False
    cls._nlmsg_base__t_nla_map = None
    cls._nlmsg_base__r_nla_map = None
    return cls


@_fresh
class BatchMsg(nfgen_msg):
    nla_map = (
        ('NFNL_BATCH_UNSPEC', 'none'),
        ('NFNL_BATCH_GENID', 'be32'),
    )


@_fresh
class RuleMsg(nft_rule_msg):
    nla_map = tuple(
        (name, 'cdata') if name == 'NFTA_RULE_USERDATA' else (name, kind)
        for name, kind in nft_rule_msg.nla_map)

    @_fresh
    class nft_expr(nft_rule_msg.nft_expr):
        # NFTA_EXPR_DATA is resolved by name at run time (getattr(self, 'nft_<name>')),
        # so overriding the expression classes here is enough.

        @_fresh
        class nft_socket(nla):
            nla_map = (
                ('NFTA_SOCKET_UNSPEC', 'none'),
                ('NFTA_SOCKET_KEY', 'be32'),
                ('NFTA_SOCKET_DREG', 'be32'),
                ('NFTA_SOCKET_LEVEL', 'be32'),
            )

        @_fresh
        class nft_log(nla):
            nla_map = (
                ('NFTA_LOG_UNSPEC', 'none'),
                ('NFTA_LOG_GROUP', 'be16'),
                ('NFTA_LOG_PREFIX', 'asciiz'),
                ('NFTA_LOG_SNAPLEN', 'be32'),
                ('NFTA_LOG_QTHRESHOLD', 'be16'),
                ('NFTA_LOG_LEVEL', 'be32'),
                ('NFTA_LOG_FLAGS', 'be32'),
            )


@_fresh
class SetMsg(nft_set_msg):
    nla_map = tuple(
        (name, 'cdata') if name == 'NFTA_SET_USERDATA'
        else (name, 'be32') if name == 'NFTA_SET_FLAGS' else (name, kind)
        for name, kind in nft_set_msg.nla_map)


@_fresh
class TableMsg(nft_table_msg):
    # userdata as raw bytes (pyroute2's 'comment' type is its own format): nftnl TLVs;
    # netfence's marker uses a private type (nftnl_batch.MARKER_TYPE) that `nft list` ignores.
    nla_map = tuple(
        (name, 'cdata') if name == 'NFTA_TABLE_USERDATA' else (name, kind)
        for name, kind in nft_table_msg.nla_map)


ChainMsg = nft_chain_msg
SetElemMsg = nft_set_elem_list_msg
GenMsg = nft_gen_msg

# reply message type -> class, for decoding dumps
REPLY_CLASSES = {
    NFT_MSG_NEWTABLE: TableMsg,
    NFT_MSG_NEWCHAIN: ChainMsg,
    NFT_MSG_NEWRULE: RuleMsg,
    NFT_MSG_NEWSET: SetMsg,
    NFT_MSG_NEWSETELEM: SetElemMsg,
    NFT_MSG_NEWGEN: GenMsg,
}


def build(cls, msg_type, attrs, seq, flags=NLM_F_REQUEST | NLM_F_ACK,
          family=NFPROTO_INET, res_id=0, subsys=NFNL_SUBSYS_NFTABLES):
    """Encode one message; return its bytes. Raises EncodingError on a lost attribute."""
    msg = cls()
    msg['header']['type'] = (subsys << 8) | msg_type
    msg['header']['flags'] = flags
    msg['header']['sequence_number'] = seq
    msg['header']['pid'] = 0
    msg['nfgen_family'] = family
    msg['version'] = 0
    msg['res_id'] = res_id
    msg['attrs'] = list(attrs)
    msg.encode()
    data = bytes(msg.data)
    shape = (cls, _shape(attrs))
    if shape not in _VERIFIED:
        check_encoded(cls, data, attrs)
        _VERIFIED.add(shape)
    return data


# pyroute2 drops an attribute for its *name* (unknown to the class), never for its value:
# a message whose attribute names, nesting included, were verified once needs no second
# decode. This keeps reload linear in the rules without decoding every message twice.
_VERIFIED = set()


def _shape(attrs):
    out = []
    for name, value in attrs:
        if isinstance(value, dict):
            out.append((name, _shape(value.get('attrs', ()))))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out.append((name, frozenset(_shape(item.get('attrs', ())) for item in value)))
        else:
            out.append(name)
    return tuple(out)


def check_encoded(cls, data, attrs):
    decoded = cls(data)
    decoded.decode()
    missing = list(_missing(attrs, decoded, ""))
    if missing:
        raise EncodingError(f"{cls.__name__}: attributes dropped by the encoder: "
                            + ", ".join(missing))


def _missing(wanted, node, path):
    present = {}
    for slot in node['attrs']:
        present.setdefault(slot[0], slot[1])
    for name, value in wanted:
        where = f"{path}/{name}"
        if name not in present:
            yield where
        elif isinstance(value, dict):
            yield from _missing(value.get('attrs', ()), present[name], where)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            got = present[name]
            if len(got) != len(value):
                yield f"{where}[{len(got)} of {len(value)}]"
                continue
            for i, (item, cell) in enumerate(zip(value, got)):
                yield from _missing(item.get('attrs', ()), cell, f"{where}[{i}]")


def decode(data):
    """Split a receive buffer into (header dict, message or None, raw bytes) tuples,
    nf_tables replies decoded by pyroute2 (message None for errors, done and unknown
    types; see parse_error)."""
    out = []
    for header, raw in split(data):
        cls = None
        if header["type"] >> 8 == NFNL_SUBSYS_NFTABLES:
            cls = REPLY_CLASSES.get(header["type"] & 0xFF)
        msg = None
        if cls is not None:
            msg = cls(raw)
            msg.decode()
        out.append((header, msg, raw))
    return out
