"""Encoding of nf_tables messages without a kernel: every attribute survives pyroute2."""

import struct

import pytest

pytest.importorskip("pyroute2")

from netfence import counters, ir, nfconst as nf, nftnl_msg as m  # noqa: E402
from netfence.nftnl import PreparedTable, encode_batch  # noqa: E402
from netfence.nftnl_expr import decode_expr, encode_expr  # noqa: E402

EVERY_EXPR = [
    ("meta", "nfproto"), ("meta", "l4proto"), ("meta", "skuid"), ("meta", "oif"),
    ("meta", "iif"), ("meta", "skgid"), ("meta", "mark"), ("meta", "mark", 2),
    ("meta_set", "mark", 1), ("meta_set", "mark", 2),
    ("nflog", "netfence web", 5140, 128), ("nflog", "netfence web nocg", 0, 128),
    ("byteorder", "hton", 4, 4), ("byteorder", "ntoh", 4, 4),
    ("payload", "network", 16, 4), ("payload", "transport", 2, 2),
    ("socket", "cgroupv2", 3), ("ct", "state"),
    ("bitwise", "08000000", "00000000"),
    ("cmp", "eq", "06"), ("cmp", "neq", "00000000"), ("cmp", "lt", "0050"),
    ("cmp", "lte", "0050"), ("cmp", "gt", "0050"), ("cmp", "gte", "0050"),
    ("range", "eq", "03e8", "07d0"), ("range", "neq", "03e8", "07d0"),
    ("lookup", "uid-web"), ("counter",), ("limit", 5, 60, 10), ("log", "deny ", 8),
    ("reject", "tcp-reset"), ("reject", "icmpx-port-unreachable"),
    ("verdict", "accept"), ("verdict", "drop"), ("verdict", "return"),
    ("verdict", "jump", "out-web"), ("verdict", "goto", "deny-web"),
    # the lookup rules' key fields (issue 12): into NFT_REG32_xx, then a verdict map
    ("meta", "oif", 8), ("meta", "iif", 8), ("meta", "l4proto", 9),
    ("payload", "network", 16, 4, 10), ("payload", "network", 24, 16, 10),
    ("payload", "transport", 2, 2, 11), ("payload", "transport", 2, 2, 14),
    ("vmap", "out-web.v4", 8), ("vmap", "in-web.any", 8), ("vmap", "m", 1),
    ("byteorder", "hton", 4, 4, 8),     # the key's oif, big-endian as nft makes it
]


def _rule_message(exprs, comment=""):
    attrs = [('NFTA_RULE_TABLE', 'netfence'), ('NFTA_RULE_CHAIN', 'c'),
             ('NFTA_RULE_EXPRESSIONS', [encode_expr(e) for e in exprs])]
    if comment:
        attrs.append(('NFTA_RULE_USERDATA', m.udata_tlvs([(0, comment.encode() + b"\0")])))
    return m.build(m.RuleMsg, nf.NFT_MSG_NEWRULE, attrs, seq=7)


@pytest.mark.parametrize("expr", EVERY_EXPR, ids=lambda e: "-".join(map(str, e)))
def test_expression_survives_encoding(expr):
    data = _rule_message([expr])
    ((_header, msg, _raw),) = m.decode(data)
    (item,) = m.attr(msg, 'NFTA_RULE_EXPRESSIONS')
    assert decode_expr(item, m.attr) == expr


def test_socket_level_is_encoded():
    """The attribute pyroute2 0.9.7 lacks: NFTA_SOCKET_LEVEL (3) = 2, key 3 = cgroupv2."""
    data = _rule_message([("socket", "cgroupv2", 2)])
    assert bytes.fromhex("0800010000000003" "0800020000000001" "0800030000000002") in data


def test_emit_rule_is_what_nft_sends():
    """The bytes `nft --debug=mnl` sent (nftables 1.0.6) for `meta mark set meta mark`
    and `log prefix "netfence P" group 5140 snaplen 128`: key before register, and
    the nflog attributes prefix, group (be16), snaplen in that order."""
    data = _rule_message([("meta", "mark", 2), ("meta_set", "mark", 2),
                          ("nflog", "netfence P", 5140, 128)])
    assert bytes.fromhex("0800020000000003" "0800010000000002") in data        # load
    assert bytes.fromhex("0800020000000003" "0800030000000002") in data        # set
    assert bytes.fromhex("0f0002006e657466656e63652050000006000100141400000800030000000080") in data


def test_rule_comment_is_an_nftnl_tlv():
    data = _rule_message([("counter",)], comment="web 1")
    assert b"\x00\x06web 1\x00" in data


def test_long_comment_is_cut_to_fit_the_kernel_limit():
    table = ir.TableDef(sets=(), chains=(ir.ChainDef("c"),),
                        rules=(ir.RuleDef("c", (("counter",),), "é" * 200),))
    rule = [data for op, data, _seq in encode_batch(table, {}) if op.startswith("add rule")][0]
    ((_header, msg, _raw),) = m.decode(rule)
    udata = m.attr(msg, 'NFTA_RULE_USERDATA')
    assert udata[:2] == bytes([0, 253])             # 126 two-byte characters + NUL
    assert udata[2:] == ("é" * 126).encode() + b"\0"


def test_dropped_attribute_is_refused():
    with pytest.raises(m.EncodingError, match="NFTA_META_KEYX"):
        m.build(m.RuleMsg, nf.NFT_MSG_NEWRULE, [
            ('NFTA_RULE_TABLE', 't'), ('NFTA_RULE_CHAIN', 'c'),
            ('NFTA_RULE_EXPRESSIONS', [{'attrs': [
                ('NFTA_EXPR_NAME', 'meta'),
                ('NFTA_EXPR_DATA', {'attrs': [('NFTA_META_KEYX', 10)]})]}])], seq=1)
    with pytest.raises(m.EncodingError, match="NFTA_TABLE_BOGUS"):
        m.build(m.TableMsg, nf.NFT_MSG_NEWTABLE, [('NFTA_TABLE_BOGUS', 1)], seq=1)


def test_lookup_rule_is_what_nft_sends():
    """The attributes `nft --debug=mnl` (nftables 1.0.6) sent for `meta oif . meta
    l4proto . ip daddr . th dport vmap @m4`: the payload into register 10, l4proto
    into 9, the lookup reading its key from register 1 (= NFT_REG32_00: we say 8)
    with NFTA_LOOKUP_DREG 0 (the verdict register). nft orders the lookup's
    attributes sreg, dreg, set; the kernel does not care."""
    data = _rule_message([("payload", "network", 16, 4, 10), ("meta", "l4proto", 9),
                          ("vmap", "m4", 1)])
    assert bytes.fromhex("080001000000000a" "0800020000000001" "0800030000000010"
                         "0800040000000004") in data
    assert bytes.fromhex("0800020000000010" "0800010000000009") in data
    assert bytes.fromhex("070001006d340000" "0800020000000001" "0800030000000000") in data


@pytest.mark.parametrize("bad", [("meta", "bogus"), ("meta", "mark", 3), ("meta", "oif", 24),
                                 ("payload", "network", 16, 4, 7), ("vmap", "m", 2),
                                 ("vmap", "m", 0), ("vmap", "m"),
                                 ("meta_set", "skuid", 1), ("cmp", "approx", "00"), ("verdict", "jump"),
                                 ("verdict", "accept", "c"), ("bitwise", "ff", "0000"),
                                 ("nosuch",), ()])
def test_invalid_expression(bad):
    with pytest.raises(ValueError):
        encode_expr(bad)


def test_batch_shape():
    table = ir.TableDef(
        sets=(ir.SetDef("uid-web", "uid"), ir.SetDef("scg-web", "cgroupsv2")),
        chains=(ir.ChainDef("egress", hook="output"), ir.ChainDef("out-web")),
        rules=(ir.RuleDef("out-web", (("counter",), ("verdict", "drop"))),
               ir.RuleDef("egress", (("meta", "skuid"), ("lookup", "uid-web"),
                                     ("verdict", "jump", "out-web")))))
    uid = struct.pack("=I", 1000).hex()
    messages = encode_batch(table, {"uid-web": [uid], "gone": [uid]}, genid=42, seq_start=100)
    ops = [op for op, _data, _seq in messages]
    assert ops == ["begin transaction", "destroy table inet netfence", "add table inet netfence",
                   "add set uid-web", "add set scg-web",
                   "add chain out-web", "add chain egress",     # regular chain first
                   "add rule #1 to chain out-web", "add rule #1 to chain egress",
                   "add 1 element(s) of set uid-web",          # "gone" is not in the table
                   "end transaction"]
    assert [seq for _op, _data, seq in messages] == list(range(100, 111))
    begin = messages[0][1]
    assert struct.unpack_from("=H", begin, 4)[0] == nf.NFNL_MSG_BATCH_BEGIN
    assert begin[-8:] == bytes.fromhex("080001000000002a")      # NFNL_BATCH_GENID = 42
    add_set = messages[3][1]
    assert bytes.fromhex("0a000d00" "000401000000") in add_set  # KEYBYTEORDER = host


def test_element_chunks():
    table = ir.TableDef(sets=(ir.SetDef("uid-x", "uid"),), chains=(), rules=())
    keys = [struct.pack("=I", i).hex() for i in range(600)]
    messages = encode_batch(table, {"uid-x": keys}, delete=None)
    ops = [op for op, _data, _seq in messages]
    assert ops[-4:-1] == ["add 256 element(s) of set uid-x"] * 2 + [
        "add 88 element(s) of set uid-x"]


@pytest.mark.parametrize("msg_type,flags", [
    (nf.NFT_MSG_NEWSETELEM, nf.NLM_F_CREATE), (nf.NFT_MSG_DESTROYSETELEM, 0)])
@pytest.mark.parametrize("key_len,count", [(4, 1), (8, 3), (8, 256)])
def test_bulk_element_messages_match_pyroute2(msg_type, flags, key_len, count):
    """The login path's encoder, used by reload for bulk elements, says what pyroute2
    says: same header, same attributes, same keys when pyroute2 decodes it. (The bytes
    differ only where the kernel does not look: it sets NLA_F_NESTED and numbers every
    list element 1, as libnftnl does; pyroute2 numbers them 1, 2, 3.)"""
    from netfence.nfencode import element_list_message
    keys = [bytes([i % 256, i // 256]) + bytes(key_len - 2) for i in range(count)]
    items = [{'attrs': [('NFTA_SET_ELEM_KEY', {'attrs': [('NFTA_DATA_VALUE', k)]})]}
             for k in keys]
    attrs = [('NFTA_SET_ELEM_LIST_TABLE', "netfence"), ('NFTA_SET_ELEM_LIST_SET', "scg-web"),
             ('NFTA_SET_ELEM_LIST_ELEMENTS', items)]
    wanted = m.build(m.SetElemMsg, msg_type, attrs, 77,
                     flags=nf.NLM_F_REQUEST | nf.NLM_F_ACK | flags)
    ours = element_list_message(msg_type, nf.NLM_F_REQUEST | nf.NLM_F_ACK | flags, 77,
                                "netfence", "scg-web", keys)
    assert len(ours) == len(wanted) and ours[:48] == wanted[:48]     # header and names
    decoded = m.SetElemMsg(ours)
    decoded.decode()
    assert decoded.get_attr('NFTA_SET_ELEM_LIST_SET') == "scg-web"
    got = [e.get_attr('NFTA_SET_ELEM_KEY').get_attr('NFTA_DATA_VALUE')
           for e in decoded.get_attr('NFTA_SET_ELEM_LIST_ELEMENTS')]
    assert [bytes.fromhex(k.replace(":", "")) if isinstance(k, str) else bytes(k)
            for k in got] == keys


def test_carried_counters_go_with_the_kept_elements_of_counted_sets_only():
    table = ir.TableDef(sets=(ir.SetDef("acct-out", "cgroupsv2", counter=True),
                              ir.SetDef("scg-web", "cgroupsv2")), chains=(), rules=())
    old, new, other = "01" * 8, "02" * 8, "03" * 8
    messages = PreparedTable(table).messages(
        {"acct-out": [old, new], "scg-web": [old]}, counts={
            "acct-out": {old: (5, 700), other: (1, 1)},     # other: not kept
            "scg-web": {old: (9, 9)},                        # not a counted set any more
            "gone": {old: (1, 1)}})
    ops = [op for op, _data, _seq in messages if "element" in op]
    assert ops == ["add 1 element(s) of set acct-out", "add 1 element(s) of set scg-web",
                   "add 1 counted element(s) of set acct-out"]
    counted = [data for op, data, _seq in messages if "counted" in op][0]
    assert bytes.fromhex(old) in counted and bytes.fromhex(other) not in counted
    # NFTA_SET_ELEM_EXPR: a counter starting at 5 packets, 700 bytes
    assert counters.counter_expression(5, 700) in counted
