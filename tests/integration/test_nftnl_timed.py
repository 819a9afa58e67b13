"""Timed elements through Ruleset: one batch that destroys and adds with a timeout,
read back with the time each has left (NFTA_SET_ELEM_EXPIRATION), and reload's
transaction putting timed elements in a fresh table."""

import os
import time

import pytest

from netfence import ir
from netfence.setkinds import RUID, UID
from test_nftnl import ruleset_in

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)")

TABLE = ir.TableDef(sets=(ir.SetDef("uid-web", "uid"),
                          ir.SetDef("ruid-web", "uid", timeout=True)),
                    chains=(), rules=())
A, B = RUID.key(60041), RUID.key(60042)


def test_timed_elements_round_trip_and_are_replaced_exactly(netns):
    with ruleset_in(netns) as ruleset:
        ruleset.replace_table(TABLE, {"uid-web": [UID.key(5)]},
                              timed={"ruid-web": {A: 60_000}, "uid-web": {A: 1}})
        got = ruleset.read_expiries(["ruid-web", "uid-web"])
        assert set(got) == {"ruid-web", "uid-web"}
        assert 59_000 < got["ruid-web"][A] <= 60_000
        assert got["uid-web"] == {UID.key(5): None}      # a login set: no timeout, and
        #                                                  timed elements never go there
        generation = ruleset.generation()
        # shorten A (destroy + add in one batch sets the exact timeout), add B
        ruleset.set_timed({"ruid-web": [A]}, {"ruid-web": {A: 2_000, B: 30_000}})
        assert ruleset.generation() == generation + 1
        got = ruleset.read_expiries(["ruid-web"])["ruid-web"]
        assert got[A] <= 2_000 and 29_000 < got[B] <= 30_000
        time.sleep(2.3)
        assert set(ruleset.read_expiries(["ruid-web"])["ruid-web"]) == {B}
        ruleset.set_timed({"ruid-web": [A, B]}, {})       # A already gone: no error
        assert ruleset.read_expiries(["ruid-web"]) == {"ruid-web": {}}
