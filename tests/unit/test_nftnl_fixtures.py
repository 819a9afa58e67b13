"""Stored kernel messages (tests/fixtures/nftables, made by capture.py): no root needed.

The dumps a kernel sent decode to what the live tests expect of a round trip, and our
encoders still write, byte for byte, the batches that kernel accepted. A difference
here means either a decoder regression or an encoding change: in the second case
check the new bytes against a kernel (capture.py) and store them again.
"""

import dataclasses

import pytest

pytest.importorskip("pyroute2")

from fixtures.nftables import scenario  # noqa: E402
from netfence import counters, fastpath, fastpath_py, nftnl_dump, nftnl_maps  # noqa: E402
from netfence import nftnl_msg as m  # noqa: E402
from netfence import nfconst as nf  # noqa: E402
from netfence.nftnl import PreparedTable, differences, expected_summary  # noqa: E402
from netfence.nftnl_expr import canonical_registers  # noqa: E402
from netfence.nftnl_sock import ack_last_only  # noqa: E402

TABLE = "netfence"


def replies(name):
    """The nf_tables messages of one stored answer (acks and NLMSG_DONE left out)."""
    _sent, received, _notes = scenario.read(name)
    return [raw for raw in received if msg_type(raw) >> 8 == nf.NFNL_SUBSYS_NFTABLES]


def msg_type(raw):
    return int.from_bytes(raw[4:6], nf.HOST_ORDER)


def decoded(name):
    return [msg for raw in replies(name) for _header, msg, _raw in m.decode(raw)]


def test_dumps_decode_to_the_table_that_was_sent():
    got = nftnl_dump.table_of(TABLE, decoded("getset.hex"), decoded("getchain.hex"),
                              decoded("getrule.hex"))
    sent = scenario.table()
    # The kernel dumps rules chain by chain, in chain order (the live round trip's
    # tables are written in that order; a compiled one interleaves its base chains).
    order = {chain.name: index for index, chain in enumerate(sent.chains)}
    by_chain = tuple(sorted(sent.rules, key=lambda rule: order[rule.chain]))
    # Registers as the kernel dumps them (NFT_REG32_00 is NFT_REG_1's storage), and the
    # maps without their elements (table_of reads none: test_summary_shows_no_drift
    # and test_map_element_dumps_decode_to_the_boxes_sent read them).
    by_chain = tuple(dataclasses.replace(r, exprs=tuple(canonical_registers(e) for e in r.exprs))
                     for r in by_chain)
    sets = tuple(dataclasses.replace(s, elements=()) for s in sent.sets)
    assert any(s.data for s in sets)
    assert got == dataclasses.replace(sent, sets=sets, rules=by_chain)


def test_element_dumps_decode_to_every_login_key():
    table = scenario.table()
    names = nftnl_dump.set_names(TABLE, replies("getset.hex"))
    assert sorted(names) == sorted(s.name for s in table.sets)
    got = {name: sorted(nftnl_dump.set_keys(replies(scenario.elements_file(name))))
           for name in names}
    maps = {s.name: sorted(key for key, _end, _chain in s.elements)
            for s in table.sets if s.data}      # a map's keys: its boxes' lower corners
    assert got == {**scenario.all_elements(), **maps}


def test_map_element_dumps_decode_to_the_boxes_sent():
    sets = {m.parse_attrs(raw)[nf.NFTA_SET_NAME].rstrip(b"\0").decode(): m.parse_attrs(raw)
            for raw in replies("getset.hex")}
    maps = [s for s in scenario.table().sets if s.data]
    assert maps
    for set_def in maps:
        got = nftnl_maps.map_summary(sets[set_def.name],
                                     replies(scenario.elements_file(set_def.name)))
        assert got == nftnl_maps.expected_map(set_def)


def test_counters_decode_in_rule_order():
    table = scenario.table()
    want = [(r.chain, r.comment, 0, 0) for r in table.rules if ("counter",) in r.exprs]
    assert nftnl_dump.counters_of(TABLE, replies("getrule.hex")) == want


def test_summary_shows_no_drift():
    (raw_table,) = replies("gettable.hex")
    got = nftnl_dump.summary_of(TABLE, raw_table, replies("getset.hex"),
                                replies("getchain.hex"), replies("getrule.hex"),
                                lambda name: replies(scenario.elements_file(name)))
    assert got["marker"] == scenario.MARKER
    assert got["maps"]
    assert differences(expected_summary(scenario.table()), got) == []


def test_reload_batch_is_the_accepted_one():
    sent, received, notes = scenario.read("reload-batch.hex")
    prepared = PreparedTable(scenario.table(), scenario.MARKER)
    ours = prepared.messages(scenario.RELOADED, int(notes["genid"]), notes["delete"])
    # as Connection.batch sends them: only the last message before END asks for an ack
    assert ack_last_only(ours) == b"".join(sent)
    codes = [m.parse_error(raw)[0] for raw in received
             if msg_type(raw) == nf.NLMSG_ERROR]
    assert codes == [0]                 # the last message's ack; nothing was refused


@pytest.mark.parametrize("name,kind", [("hook-add.hex", "new"),
                                       ("hook-destroy.hex", "destroy")])
def test_hook_batches_are_the_accepted_ones(name, kind):
    sent, received, _notes = scenario.read(name)
    templates = scenario.snapshot()["login"]["templates"]
    msgs, ops = fastpath.messages(templates, kind, scenario.HOOK_ADDED)
    ours = fastpath._PyImpl("fixture").batch(msgs, fastpath.FIRST_SEQ)
    assert ours == b"".join(sent)
    c_impl = fastpath._load("c")
    if c_impl.name == "c":                          # the C twin too, when it is built
        assert c_impl.to_bytes(c_impl.batch(msgs, fastpath.FIRST_SEQ)) == ours
    errors = [fastpath_py.PENDING] * len(ops)
    rc, pending = fastpath_py._acks(b"".join(received), fastpath.FIRST_SEQ, len(ops),
                                    errors, len(ops))
    assert (rc, pending, errors) == (0, 0, [0] * len(ops))


def test_dump_requests_are_encoded_as_sent():
    table = scenario.table()
    requests = {"getset.hex": (m.SetMsg, nf.NFT_MSG_GETSET, [('NFTA_SET_TABLE', TABLE)]),
                "getrule.hex": (m.RuleMsg, nf.NFT_MSG_GETRULE, [('NFTA_RULE_TABLE', TABLE)])}
    set_name = table.sets[0].name
    requests[scenario.elements_file(set_name)] = (
        m.SetElemMsg, nf.NFT_MSG_GETSETELEM,
        [('NFTA_SET_ELEM_LIST_TABLE', TABLE), ('NFTA_SET_ELEM_LIST_SET', set_name)])
    for name, (cls, msg_type, attrs) in requests.items():
        (request,) = scenario.read(name)[0]
        seq = int.from_bytes(request[8:12], nf.HOST_ORDER)
        assert m.build(cls, msg_type, attrs, seq,
                       flags=nf.NLM_F_REQUEST | nf.NLM_F_DUMP) == request


def test_counted_sets_carry_their_counter_and_every_element_one():
    """The kernel dumps a counted set with NFTA_SET_EXPR and each of its elements with
    a counter (at zero: nothing was sent in the capture's namespace)."""
    counted = {s.name for s in nftnl_dump.table_of(
        TABLE, decoded("getset.hex"), (), ()).sets if s.counter}
    assert counted == {"acct-out", "acct-in", "denied-web"}
    for name in sorted(counted):
        got = {}
        for raw in replies(scenario.elements_file(name)):
            attrs = counters.parse_attrs(raw, counters.ATTRS_OFFSET)
            got.update(counters.element_counters(attrs[nf.NFTA_SET_ELEM_LIST_ELEMENTS]))
        assert got == {key: (0, 0) for key in scenario.RELOADED[name]}


def test_a_set_that_lost_its_counter_is_drift():
    """A counted set recreated without `counter` (its elements would count nothing)
    differs from the table sent: gc restores it."""
    (raw_table,) = replies("gettable.hex")
    got = nftnl_dump.summary_of(TABLE, raw_table, replies("getset.hex"),
                                replies("getchain.hex"), replies("getrule.hex"))
    key_type, counts = got["sets"]["acct-out"]
    assert counts
    got["sets"]["acct-out"] = (key_type, False)
    assert differences(expected_summary(scenario.table()), got) == ["set acct-out changed"]
