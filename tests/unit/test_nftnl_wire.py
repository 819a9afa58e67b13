"""reload's messages without pyroute2 (nftnl_wire, nftnl_raw, nfencode) are pyroute2's
bytes (nftnl_msg, the classes the kernel tests were written against): every attribute
the direct encoder knows, every GET request, and a whole compiled table message by
message. And reload's modules do not import pyroute2 at all."""

import itertools
import random
import subprocess
import sys

import pytest

pytest.importorskip("pyroute2")

from netfence import compiler, ir, nfconst as nf, nftnl_batch, nftnl_msg as m  # noqa: E402
from netfence import nftnl_maps, nftnl_wire as wire  # noqa: E402
from netfence.nfencode import attr, cstring, element_list_message, nested, nft_message  # noqa: E402
from netfence.nftnl_expr import encode_expr  # noqa: E402
from netfence.policy import parse_policy_text  # noqa: E402

ACKED = nf.NLM_F_REQUEST | nf.NLM_F_ACK
CREATE = ACKED | nf.NLM_F_CREATE | nf.NLM_F_EXCL

POLICY = """
[settings]
account = true

[profile.no-plain-http]
egress = [ { action = "reject", proto = "tcp", ports = [80] } ]

[profile.lab]
egress = [
  { action = "allow", proto = "tcp", ports = [443, "8443-8444"] },
  { action = "allow", proto = "udp", ports = [53], to = ["127.0.0.0/8", "::1"] },
  { action = "deny", proto = "icmp" },
  { action = "deny", to = ["loopback"] },
]
egress_default = "reject"
log = true

[profile.watched]
egress = [ { action = "deny", proto = "tcp", ports = [25] } ]
mode = "monitor"

[profile.no-servers]
ingress = [ { action = "allow", from = ["loopback", "10.0.0.0/8"] } ]
ingress_default = "deny"

[[rule]]
users = ["*"]
profiles = ["no-plain-http", "no-servers"]
scope = "user"

[[rule]]
groups = ["students"]
time = "Mo-Fr 08:00-20:00"
profiles = ["lab"]

[[rule]]
scope = "always"
users = ["alice", "bob"]
uids = ["70000-70010"]
groups = ["staff"]
profiles = ["watched"]
"""


def whole_table():
    snap = compiler.compile_policy(parse_policy_text([("/etc/netfence/netfence.toml", POLICY)]))
    return ir.TableDef.from_json(snap["table"])


# ---- one attribute at a time -----------------------------------------------------------

def test_every_kind_of_table_set_and_chain_attribute_matches_pyroute2():
    cases = [
        (m.TableMsg, nf.NFT_MSG_NEWTABLE, [('NFTA_TABLE_NAME', "netfence"),
                                          ('NFTA_TABLE_FLAGS', 0),
                                          ('NFTA_TABLE_USERDATA', b"\xa5\x03abc")]),
        (m.SetMsg, nf.NFT_MSG_NEWSET, [
            ('NFTA_SET_TABLE', "netfence"), ('NFTA_SET_NAME', "x" * 200),
            ('NFTA_SET_FLAGS', nf.NFT_SET_INTERVAL | nf.NFT_SET_TIMEOUT),
            ('NFTA_SET_KEY_TYPE', 46), ('NFTA_SET_KEY_LEN', 8), ('NFTA_SET_DATA_TYPE', 0xffffff00),
            ('NFTA_SET_DATA_LEN', 16), ('NFTA_SET_ID', 0xfffffffe),
            ('NFTA_SET_TIMEOUT', 2 ** 63), ('NFTA_SET_GC_INTERVAL', 5),
            ('NFTA_SET_USERDATA', bytes(range(7))),
            ('NFTA_SET_EXPR', nftnl_batch.SET_COUNTER)]),
        (m.SetMsg, nf.NFT_MSG_NEWSET, [
            ('NFTA_SET_TABLE', "t"), ('NFTA_SET_NAME', "s"),
            ('NFTA_SET_EXPRESSIONS', [nftnl_batch.SET_COUNTER, nftnl_batch.SET_COUNTER])]),
        (m.ChainMsg, nf.NFT_MSG_NEWCHAIN, [
            ('NFTA_CHAIN_TABLE', "netfence"), ('NFTA_CHAIN_NAME', "egress"),
            ('NFTA_CHAIN_HOOK', {'attrs': [('NFTA_HOOK_HOOKNUM', nf.NF_INET_LOCAL_OUT),
                                           ('NFTA_HOOK_PRIORITY', -300)]}),
            ('NFTA_CHAIN_POLICY', nf.NF_ACCEPT), ('NFTA_CHAIN_TYPE', "filter")]),
        (m.ChainMsg, nf.NFT_MSG_NEWCHAIN, [('NFTA_CHAIN_TABLE', "n"), ('NFTA_CHAIN_NAME', "c"),
                                          ('NFTA_CHAIN_HOOK', {'attrs': [
                                              ('NFTA_HOOK_HOOKNUM', 1),
                                              ('NFTA_HOOK_PRIORITY', 2 ** 31 - 1)]})]),
    ]
    for seq, (cls, msg_type, attrs) in enumerate(cases, 1):
        assert wire.build(msg_type, attrs, seq, CREATE) == m.build(
            cls, msg_type, attrs, seq, flags=CREATE), attrs


def test_element_attributes_match_pyroute2():
    items = [{'attrs': [('NFTA_SET_ELEM_KEY', {'attrs': [('NFTA_DATA_VALUE', b"\1\2\3")]}),
                        ('NFTA_SET_ELEM_KEY_END', {'attrs': [('NFTA_DATA_VALUE', bytes(12))]}),
                        ('NFTA_SET_ELEM_TIMEOUT', 5000),
                        ('NFTA_SET_ELEM_DATA', {'attrs': [('NFTA_DATA_VERDICT', {'attrs': [
                            ('NFTA_VERDICT_CODE', nf.NFT_GOTO),
                            ('NFTA_VERDICT_CHAIN', "out-web.3")]})]})]}
             for _ in range(3)]
    attrs = [('NFTA_SET_ELEM_LIST_TABLE', "netfence"), ('NFTA_SET_ELEM_LIST_SET', "out-web.v4"),
             ('NFTA_SET_ELEM_LIST_ELEMENTS', items)]
    assert wire.build(nf.NFT_MSG_NEWSETELEM, attrs, 9, CREATE) == m.build(
        m.SetElemMsg, nf.NFT_MSG_NEWSETELEM, attrs, 9, flags=CREATE)
    # pyroute2 wants flag names there; the kernel reads a be32, as nfencode writes it
    assert wire.encode_attrs([('NFTA_SET_ELEM_FLAGS', nf.NFT_SET_ELEM_INTERVAL_END)]) == attr(
        nf.NFTA_SET_ELEM_FLAGS, nf.NFT_SET_ELEM_INTERVAL_END.to_bytes(4, "big"))


@pytest.mark.parametrize("msg_type,cls,attrs,family", [
    (nf.NFT_MSG_GETGEN, m.GenMsg, [], nf.NFPROTO_UNSPEC),
    (nf.NFT_MSG_GETTABLE, m.TableMsg, [('NFTA_TABLE_NAME', "netfence")], nf.NFPROTO_INET),
    (nf.NFT_MSG_GETSET, m.SetMsg, [('NFTA_SET_TABLE', "netfence")], nf.NFPROTO_INET),
    (nf.NFT_MSG_GETCHAIN, m.ChainMsg, [('NFTA_CHAIN_TABLE', "netfence")], nf.NFPROTO_INET),
    (nf.NFT_MSG_GETRULE, m.RuleMsg, [('NFTA_RULE_TABLE', "netfence")], nf.NFPROTO_INET),
    (nf.NFT_MSG_GETSETELEM, m.SetElemMsg, [('NFTA_SET_ELEM_LIST_TABLE', "netfence"),
                                           ('NFTA_SET_ELEM_LIST_SET', "scg-web")],
     nf.NFPROTO_INET),
    (nf.NFT_MSG_DESTROYTABLE, m.TableMsg, [('NFTA_TABLE_NAME', "netfence")], nf.NFPROTO_INET),
])
@pytest.mark.parametrize("flags", [ACKED, nf.NLM_F_REQUEST | nf.NLM_F_DUMP])
def test_requests_match_pyroute2(msg_type, cls, attrs, family, flags):
    assert wire.build(msg_type, attrs, 4242, flags, family) == m.build(
        cls, msg_type, attrs, 4242, flags=flags, family=family)


@pytest.mark.parametrize("genid", [None, 0, 42, 2 ** 32 - 1])
@pytest.mark.parametrize("msg_type", [nf.NFNL_MSG_BATCH_BEGIN, nf.NFNL_MSG_BATCH_END])
def test_batch_control_matches_pyroute2(msg_type, genid):
    attrs = [('NFNL_BATCH_GENID', genid)] if genid is not None else []
    assert wire.batch_control(msg_type, 7, genid) == m.build(
        m.BatchMsg, msg_type, attrs, 7, flags=nf.NLM_F_REQUEST, family=nf.NFPROTO_UNSPEC,
        res_id=nf.NFNL_SUBSYS_NFTABLES, subsys=0)


@pytest.mark.parametrize("attrs", [
    [('NFTA_TABLE_BOGUS', 1)],                                   # unknown: never dropped
    [('NFTA_CHAIN_HOOK', {'attrs': [('NFTA_HOOK_NOSUCH', 1)]})],  # nested too
    [('NFTA_SET_KEY_LEN', "eight")], [('NFTA_SET_ID', -1)], [('NFTA_SET_ID', 2 ** 32)],
    [('NFTA_TABLE_NAME', None)]])
def test_what_the_direct_encoder_cannot_say_is_refused(attrs):
    with pytest.raises(wire.EncodingError):
        wire.build(nf.NFT_MSG_NEWTABLE, attrs, 1)


# ---- a whole table -------------------------------------------------------------------

def pyroute2_messages(table, marker, genid):
    """The replace-table transaction as pyroute2 writes it, elements left out."""
    seq = itertools.count(nftnl_batch.PreparedTable.SEQ_BASE)
    out = [m.build(m.BatchMsg, nf.NFNL_MSG_BATCH_BEGIN, [('NFNL_BATCH_GENID', genid)],
                   next(seq), flags=nf.NLM_F_REQUEST, family=nf.NFPROTO_UNSPEC,
                   res_id=nf.NFNL_SUBSYS_NFTABLES, subsys=0),
           m.build(m.TableMsg, nf.NFT_MSG_DESTROYTABLE, [('NFTA_TABLE_NAME', table.name)],
                   next(seq), flags=ACKED),
           m.build(m.TableMsg, nf.NFT_MSG_NEWTABLE, [
               ('NFTA_TABLE_NAME', table.name), ('NFTA_TABLE_FLAGS', 0),
               ('NFTA_TABLE_USERDATA', nftnl_batch.marker_udata(marker))], next(seq),
               flags=CREATE)]
    for set_id, set_def in enumerate(table.sets, 1):
        if nftnl_maps.is_map(set_def):      # pyroute2 cannot say it: nft's bytes (MAPS)
            out.append(nft_message(nf.NFT_MSG_NEWSET, CREATE, nftnl_maps.map_set_body(
                table.name, set_def, set_id), next(seq)))
            continue
        out.append(m.build(m.SetMsg, nf.NFT_MSG_NEWSET,
                           nftnl_batch._set_attrs(table.name, set_def, set_id), next(seq),
                           flags=CREATE))
    for chain in sorted(table.chains, key=lambda c: bool(c.hook)):
        out.append(m.build(m.ChainMsg, nf.NFT_MSG_NEWCHAIN,
                           nftnl_batch._chain_attrs(table.name, chain), next(seq), flags=CREATE))
    for set_def in table.sets:
        if nftnl_maps.is_map(set_def):
            out += [data for _op, data, _seq in nftnl_maps.element_messages(
                table.name, set_def, CREATE, seq.__next__)]
    for rule in table.rules:
        attrs = [('NFTA_RULE_TABLE', table.name), ('NFTA_RULE_CHAIN', rule.chain),
                 ('NFTA_RULE_EXPRESSIONS', [encode_expr(e) for e in rule.exprs])]
        if rule.comment:
            attrs.append(('NFTA_RULE_USERDATA', nftnl_batch.comment_udata(rule.comment)))
        out.append(m.build(m.RuleMsg, nf.NFT_MSG_NEWRULE, attrs, next(seq),
                           flags=ACKED | nf.NLM_F_CREATE | nf.NLM_F_APPEND))
    return out


def test_a_whole_compiled_table_is_pyroute2s_bytes_message_by_message():
    table = whole_table()
    kinds = {e[0] for r in table.rules for e in r.exprs}
    assert {"meta", "meta_set", "payload", "socket", "ct", "byteorder", "bitwise", "cmp",
            "lookup", "vmap", "counter", "limit", "nflog", "reject", "verdict"} <= kinds
    assert any(nftnl_maps.is_map(s) and s.elements for s in table.sets)
    ours = nftnl_batch.PreparedTable(table, "policy x").messages({}, genid=77)
    theirs = pyroute2_messages(table, "policy x", 77)
    assert ours[-1][0] == "end transaction"
    ours = [data for _op, data, _seq in ours[:-1]]      # no elements, ranges or timed
    assert len(ours) == len(theirs)
    for index, (mine, reference) in enumerate(zip(ours, theirs)):
        assert mine == reference, f"message {index}"


# ---- elements --------------------------------------------------------------------------

def _element_body_by_attributes(table, set_name, keys):
    items = b"".join(nested(nf.NFTA_LIST_ELEM, nested(nf.NFTA_SET_ELEM_KEY,
                                                      attr(nf.NFTA_DATA_VALUE, key)))
                     for key in keys)
    return (attr(nf.NFTA_SET_ELEM_LIST_TABLE, cstring(table))
            + attr(nf.NFTA_SET_ELEM_LIST_SET, cstring(set_name))
            + nested(nf.NFTA_SET_ELEM_LIST_ELEMENTS, items))


def test_bulk_element_messages_are_the_attribute_by_attribute_bytes():
    rnd = random.Random(3)
    for seq in range(200):
        keys = [bytes(rnd.randrange(256) for _ in range(rnd.choice([1, 2, 3, 4, 5, 8, 16])))
                for _ in range(rnd.randrange(0, 40))]
        want = nft_message(nf.NFT_MSG_NEWSETELEM, CREATE,
                           _element_body_by_attributes("netfence", "s" * (seq % 9 + 1), keys),
                           seq)
        assert element_list_message(nf.NFT_MSG_NEWSETELEM, CREATE, seq, "netfence",
                                    "s" * (seq % 9 + 1), keys) == want


# ---- answers ----------------------------------------------------------------------------

def test_split_and_parse_read_what_pyroute2_reads():
    reply = m.build(m.GenMsg, nf.NFT_MSG_NEWGEN, [('NFTA_GEN_ID', 123456)], 5,
                    flags=0, family=nf.NFPROTO_UNSPEC)
    done = wire.batch_control(nf.NFNL_MSG_BATCH_END, 5)
    ((header, raw), (_h2, raw2)) = wire.split(reply + done)
    assert header == {"type": (nf.NFNL_SUBSYS_NFTABLES << 8) | nf.NFT_MSG_NEWGEN,
                      "flags": 0, "seq": 5}
    assert raw == reply and raw2 == done
    assert int.from_bytes(wire.parse_attrs(raw)[1], "big") == 123456
    ((_h, msg, _raw),) = m.decode(reply)
    assert m.attr(msg, 'NFTA_GEN_ID') == 123456


# ---- no pyroute2 on reload's path ------------------------------------------------------

NO_PYROUTE2 = r"""
import sys
from netfence import apply, drift, status, timed_apply, nftnl, nftnl_batch, nftnl_dump
from netfence import nftnl_drift, nftnl_sock, nftnl_wire, cli, ir, compiler
from netfence.policy import parse_policy_text
snap = compiler.compile_policy(parse_policy_text([("/p.toml", sys.stdin.read())]))
table = ir.TableDef.from_json(snap["table"])
prepared = nftnl.PreparedTable(table, "m x")
prepared.messages({"uid-lab": ["e8030000"]}, genid=1, timed={}, counts={})
nftnl.expected_summary(table)
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "pyroute2")
print(" ".join(loaded) or "none")
"""


def test_reload_encodes_a_whole_table_without_importing_pyroute2():
    out = subprocess.run([sys.executable, "-c", NO_PYROUTE2], input=POLICY, text=True,
                         capture_output=True, check=True)
    assert out.stdout.strip() == "none"


# ---- one ack per batch ---------------------------------------------------------------

def test_only_the_last_message_before_end_asks_for_an_ack():
    from netfence.nftnl_sock import ack_last_only
    table = whole_table()
    messages = nftnl_batch.PreparedTable(table, "m x").messages({"uid-lab": ["e8030000"]}, 5)
    sent = ack_last_only(messages)
    flags = []
    for header, raw in wire.split(sent):
        flags.append(header["flags"])
    assert len(flags) == len(messages) > 100
    assert [bool(f & nf.NLM_F_ACK) for f in flags] == [False] * (len(flags) - 2) + [True, False]
    # nothing else changed: the same messages, the ack bit aside
    for (_op, original, _seq), (_header, raw) in zip(messages, wire.split(sent)):
        assert len(raw) == len(original)
        assert raw[:6] + raw[8:] == original[:6] + original[8:]
        assert (int.from_bytes(raw[6:8], nf.HOST_ORDER) | nf.NLM_F_ACK
                == int.from_bytes(original[6:8], nf.HOST_ORDER) | nf.NLM_F_ACK)
