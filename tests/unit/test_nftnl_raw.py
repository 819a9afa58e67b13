"""The direct rule encoder (reload of large policies) writes exactly pyroute2's bytes."""

import random

import pytest

pytest.importorskip("pyroute2")

from netfence import nfconst as nf, nftnl_batch, nftnl_msg as m  # noqa: E402
from netfence.nfencode import nft_message  # noqa: E402
from netfence.nftnl_expr import encode_expr  # noqa: E402
from netfence.nftnl_raw import rule_body  # noqa: E402

FLAGS = nf.NLM_F_REQUEST | nf.NLM_F_ACK | nf.NLM_F_CREATE | nf.NLM_F_APPEND


def _random_expr(rnd):
    hexes = lambda n: bytes(rnd.randrange(256) for _ in range(n)).hex()  # noqa: E731
    name = "".join(rnd.choice("abcxyz-0123456789") for _ in range(rnd.randrange(1, 40)))
    n = rnd.choice([1, 2, 4, 8, 16])
    return rnd.choice([
        ("meta", rnd.choice(["nfproto", "l4proto", "skuid", "skgid", "oif", "iif", "mark"])),
        ("meta", rnd.choice(["mark", "skuid"]), rnd.choice([1, 2])),
        ("meta_set", "mark", rnd.choice([1, 2])),
        ("nflog", name, rnd.randrange(65536), rnd.choice([0, 64, 128, 65535])),
        ("byteorder", rnd.choice(["hton", "ntoh"]), rnd.choice([2, 4, 8]), rnd.choice([2, 4])),
        ("payload", rnd.choice(["network", "transport"]), rnd.randrange(64), rnd.randrange(1, 17)),
        ("socket", "cgroupv2", rnd.randrange(1, 8)),
        ("ct", "state"),
        ("bitwise", hexes(n), hexes(n)),
        ("cmp", rnd.choice(["eq", "neq", "lt", "lte", "gt", "gte"]), hexes(n)),
        ("range", rnd.choice(["eq", "neq"]), hexes(n), hexes(n)),
        ("lookup", name), ("counter",),
        ("meta", rnd.choice(["oif", "iif", "l4proto"]), rnd.randrange(8, 24)),
        ("byteorder", "hton", 4, 4, rnd.randrange(8, 24)),
        ("payload", rnd.choice(["network", "transport"]), rnd.randrange(64), rnd.randrange(1, 17),
         rnd.choice([1, 2] + list(range(8, 24)))),
        ("vmap", name, rnd.choice([1] + list(range(8, 24)))),
        ("limit", rnd.randrange(1, 10**6), rnd.choice([1, 60, 3600, 86400]), rnd.randrange(100)),
        ("log", name + " ", rnd.choice([0, 8])),
        ("reject", rnd.choice(["tcp-reset", "icmpx-port-unreachable"])),
        ("verdict", rnd.choice(["accept", "drop", "return"])),
        ("verdict", rnd.choice(["jump", "goto"]), name),
    ])


def _pyroute2(chain, exprs, udata, seq):
    attrs = [('NFTA_RULE_TABLE', "netfence"), ('NFTA_RULE_CHAIN', chain),
             ('NFTA_RULE_EXPRESSIONS', [encode_expr(e) for e in exprs])]
    if udata:
        attrs.append(('NFTA_RULE_USERDATA', udata))
    return m.build(m.RuleMsg, nf.NFT_MSG_NEWRULE, attrs, seq, flags=FLAGS)


def test_random_rules_match_pyroute2_byte_for_byte():
    rnd = random.Random(7)
    for seq in range(1, 1500):
        exprs = tuple(_random_expr(rnd) for _ in range(rnd.randrange(1, 9)))
        chain = "c" * rnd.randrange(1, 30)
        udata = nftnl_batch.comment_udata("x" * rnd.randrange(0, 300)) if rnd.random() < .7 else None
        ours = nft_message(nf.NFT_MSG_NEWRULE, FLAGS, rule_body("netfence", chain, exprs, udata),
                           seq)
        assert ours == _pyroute2(chain, exprs, udata, seq), exprs


def test_invalid_expressions_are_refused_like_the_pyroute2_path():
    for bad in [("meta", "bogus"), ("meta", "mark", 3), ("meta_set", "skuid", 1),
                ("nflog", "p", 65536, 128), ("cmp", "approx", "00"), ("verdict", "jump"), ("nosuch",),
                ("bitwise", "ff", "0000")]:
        with pytest.raises(ValueError):
            rule_body("netfence", "c", (bad,))
