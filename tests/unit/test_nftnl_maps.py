"""Verdict maps over concatenations as bytes, without a kernel: what nft 1.0.6 sends
(`nft --debug=mnl -f` of the map in nftnl_maps' docstring), read back, and drift."""

import pytest

pytest.importorskip("pyroute2")

from netfence import ir, nfconst as nf, nftnl_maps, nftnl_msg as m  # noqa: E402
from netfence.nfencode import attr, cstring, nested, nft_message  # noqa: E402
from netfence.nftnl import PreparedTable, differences, expected_summary  # noqa: E402
from netfence.nftnl_dump import summary_of  # noqa: E402
from netfence.nftnl_expr import canonical_registers  # noqa: E402

V4 = (("iface_index", 4), ("inet_proto", 1), ("ipv4_addr", 4), ("inet_service", 2))
V6NP = (("iface_index", 4), ("inet_proto", 1), ("ipv6_addr", 16))
# nft's first element: 1 . 6 . 10.0.0.0/8 . 80-90 : goto c1 (nft converts the
# interface index with hton; the bytes are what matters here)
KEY = "00000001" "06000000" "0a000000" "00500000"
KEY_END = "00000001" "06000000" "0affffff" "005a0000"
MAP = ir.SetDef("m4", "concat", interval=True, fields=V4, data="verdict",
                elements=((KEY, KEY_END, "c1"),))


def test_set_message_is_what_nft_sends():
    attrs = m.parse_attrs(nftnl_maps.map_set_body("t", MAP, 1), 0)
    assert attrs[3] == bytes.fromhex("0000008c")          # MAP | INTERVAL | CONCAT
    assert attrs[4] == bytes.fromhex("0050c1cd")          # iface_index . inet_proto ...
    assert attrs[5] == bytes.fromhex("00000010")          # 16 bytes: 4 + 4 + 4 + 4
    assert attrs[6] == bytes.fromhex("ffffff00")          # NFT_DATA_VERDICT
    assert attrs[7] == bytes.fromhex("00000000")
    assert attrs[10] == bytes.fromhex("00000001")
    # NFTA_SET_DESC { CONCAT { {FIELD_LEN 4} {1} {4} {2} } }, nested flags as nft's
    assert attrs[9] == bytes.fromhex(
        "34000280" + "".join(f"0c000180080001000000000{n}" for n in "4142"))
    assert attrs[13] == bytes.fromhex("000400000000010400000000030800040d0000000100"
                                      "060400000000")


def test_element_is_what_nft_sends():
    item = nftnl_maps.element_item(KEY, KEY_END, "c1")
    assert item == bytes.fromhex(
        "4c000180"
        "18000180" "14000100" + KEY
        + "1800" "0a80" "14000100" + KEY_END
        + "18000280" "14000280" "08000100fffffffc" "0700020063310000")


def test_concat_types():
    assert nftnl_maps.concat_type(V4) == 0x0050C1CD
    assert nftnl_maps.split_concat_type(0x0050C1CD) == V4
    assert nftnl_maps.split_concat_type(nftnl_maps.concat_type(V6NP)) == V6NP
    assert nftnl_maps.key_length(V6NP) == 24


@pytest.mark.parametrize("bad", [
    ir.SetDef("m", "concat", interval=True, fields=V4[:1], data="verdict"),
    ir.SetDef("m", "concat", interval=False, fields=V4, data="verdict"),
    ir.SetDef("m", "concat", interval=True, fields=(("ipv4_addr", 16), V4[1]), data="verdict"),
    ir.SetDef("m", "concat", interval=True, fields=(("mark", 4), V4[1]), data="verdict"),
    ir.SetDef("m", "concat", interval=True, fields=V4, data="verdict",
              elements=((KEY[:-8], KEY_END, "c"),)),
    ir.SetDef("m", "concat", interval=True, fields=V4, data="verdict",
              elements=((KEY, KEY_END, ""),)),
    ir.SetDef("m", "concat", interval=True, fields=V4, data="verdict", counter=True),
], ids=["one field", "no interval", "field length", "field type", "key length", "no chain",
        "counter"])
def test_maps_the_kernel_would_refuse_or_misread_are_refused(bad):
    with pytest.raises(ValueError):
        nftnl_maps.map_set_body("t", bad, 1)


def _table(elements=MAP.elements):
    m4 = ir.SetDef("m4", "concat", interval=True, fields=V4, data="verdict",
                   elements=elements)
    return ir.TableDef(
        sets=(ir.SetDef("uid-web", "uid"), m4),
        chains=(ir.ChainDef("c1"), ir.ChainDef("out", "output")),
        rules=(ir.RuleDef("c1", (("counter",), ("verdict", "return")), "P egress rule 1"),
               ir.RuleDef("out", (("meta", "oif", 8), ("meta", "l4proto", 9),
                                  ("payload", "network", 16, 4, 10),
                                  ("payload", "transport", 2, 2, 11), ("vmap", "m4", 8)))))


def test_map_and_elements_are_in_the_table_transaction_after_the_chains():
    ops = [op for op, _data, _seq in PreparedTable(_table()).messages({})]
    assert ops.index("add map m4") < ops.index("add chain c1")
    assert ops.index("add chain out") < ops.index("add 1 element(s) of map m4")
    assert ops.index("add 1 element(s) of map m4") < ops.index("add rule #1 to chain c1")


def test_many_elements_are_split_into_messages():
    elements = tuple((KEY[:-4] + f"{n:04x}", KEY[:-4] + f"{n:04x}", "c1") for n in range(300))
    messages = [(op, data) for op, data, _seq in PreparedTable(_table(elements)).messages({})
                if "of map" in op]
    assert [op for op, _ in messages] == ["add 128 element(s) of map m4"] * 2 + [
        "add 44 element(s) of map m4"]
    assert all(len(data) < 32768 for _, data in messages)


def _dumped(table, drop=(), extra=()):
    """A fake kernel dump of `table`: what the kernel answers to GETSET, GETSETELEM,
    GETCHAIN and GETRULE after the transaction (our own messages, as it keeps them),
    with some map elements dropped or added."""
    as_dumped = ir.TableDef(sets=table.sets, chains=table.chains, rules=tuple(
        ir.RuleDef(r.chain, tuple(canonical_registers(e) for e in r.exprs), r.comment)
        for r in table.rules))      # the kernel dumps register 8 as 1
    messages = PreparedTable(as_dumped).messages({})
    by_op = {op: data for op, data, _seq in messages}
    raw_sets = [data for op, data in by_op.items() if op.startswith(("add set", "add map"))]
    raw_chains = [data for op, data in by_op.items() if op.startswith("add chain")]
    raw_rules = [data for op, data in by_op.items() if op.startswith("add rule")]
    raw_table = by_op["add table inet netfence"]
    (m4,) = [s for s in table.sets if s.data]
    items = [e for e in m4.elements if e not in drop] + list(extra)
    body = (attr(nf.NFTA_SET_ELEM_LIST_TABLE, cstring("netfence"))
            + attr(nf.NFTA_SET_ELEM_LIST_SET, cstring("m4"))
            + nested(nf.NFTA_SET_ELEM_LIST_ELEMENTS,
                     b"".join(nftnl_maps.element_item(*e) for e in items)))
    elements = [nft_message(nf.NFT_MSG_NEWSETELEM, 0, body)]
    return summary_of("netfence", raw_table, raw_sets, raw_chains, raw_rules,
                      lambda name: elements if name == "m4" else [])


def test_drift_covers_the_maps_elements():
    table = _table()
    assert differences(expected_summary(table), _dumped(table)) == []
    (element,) = MAP.elements
    assert differences(expected_summary(table), _dumped(table, drop=[element])) == [
        "map m4: 1 element(s) missing or altered, 0 foreign"]
    altered = (KEY, KEY_END, "out")
    assert differences(expected_summary(table), _dumped(table, [element], [altered])) == [
        "map m4: 1 element(s) missing or altered, 1 foreign"]


def test_registers_compare_as_the_kernel_dumps_them():
    """NFT_REG32_00 (8) comes back as NFT_REG_1: the same storage (nft_dump_register)."""
    assert canonical_registers(("meta", "oif", 8)) == ("meta", "oif")
    assert canonical_registers(("meta", "l4proto", 9)) == ("meta", "l4proto", 9)
    assert canonical_registers(("payload", "network", 24, 16, 12)) == (
        "payload", "network", 24, 16, 2)
    assert canonical_registers(("payload", "transport", 2, 2, 10)) == (
        "payload", "transport", 2, 2, 10)
    assert canonical_registers(("vmap", "m", 8)) == ("vmap", "m", 1)
    assert canonical_registers(("byteorder", "hton", 4, 4, 8)) == ("byteorder", "hton", 4, 4)
    assert canonical_registers(("byteorder", "hton", 4, 4, 16)) == (
        "byteorder", "hton", 4, 4, 3)
    assert canonical_registers(("meta", "mark", 2)) == ("meta", "mark", 2)
    assert canonical_registers(("cmp", "eq", "08")) == ("cmp", "eq", "08")
