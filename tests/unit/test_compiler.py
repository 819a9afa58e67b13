"""compile_policy: policy model → table IR and login part (pure; no root)."""

import json

import pytest

from netfence import compiler, ir
from support import linear_compile as compiler_linear
from netfence.model import (MatchRule, NetRule, Patterns, Policy, Profile, Settings,
                            TimeWindow)


def policy(*profiles, rules=()):
    return Policy(Settings(), {p.name: p for p in profiles}, tuple(rules))


def table_of(*profiles):
    return ir.TableDef.from_json(compiler.compile_policy(policy(*profiles))["table"])


def rules_in(table, chain):
    """The rules of a chain, the grant exemptions that start a profile chain aside."""
    return [r.exprs for r in table.rules
            if r.chain == chain and not r.comment.endswith(" grant")]


def every_rule_in(table, chain):
    return [r.exprs for r in table.rules if r.chain == chain]


def test_allow_is_return_never_accept():
    table = table_of(Profile("p", egress=(NetRule("allow", ("tcp",), ((443, 443),)),),
                             egress_default="deny"))
    verdicts = [e for r in table.rules for e in r.exprs if e[0] == "verdict"]
    assert ("verdict", "return") in verdicts
    assert all(v[1] != "accept" for v in verdicts)
    assert rules_in(table, "out-p")[-1] == (("verdict", "goto", "out-p.default"),)
    assert every_rule_in(table, "out-p.default") == [(("counter",),
                                                      ("verdict", "goto", "out-p.deny"))]
    assert rules_in(table, "out-p.deny") == [(("verdict", "drop"),)]


def test_linear_compile_expands_peers_protocols_and_ports_to_one_rule_each():
    """The pre-lookup compile, kept as the property test's reference."""
    rule = NetRule("deny", ("tcp", "udp"), ((53, 53), (8000, 8099)),
                   ("10.0.0.0/8", "2001:db8::/32", "loopback"))
    combos = compiler_linear.expand_matches(rule, "egress")
    assert len(combos) == 3 * 2 * 2
    assert combos[0][:5] == (("meta", "nfproto"), ("cmp", "eq", "02"),
                             ("payload", "network", 16, 4),
                             ("bitwise", "ff000000", "00000000"), ("cmp", "eq", "0a000000"))
    assert ("payload", "transport", 2, 2) in combos[0]
    assert ("range", "eq", "1f40", "1fa3") in combos[1]


def boxes_of(set_def):
    """{rule chain: [{datatype: (low, high)}, ...]} of a map's elements."""
    out = {}
    for start, end, chain in set_def.elements:
        start, end, offset, box = bytes.fromhex(start), bytes.fromhex(end), 0, {}
        for name, length in set_def.fields:
            box[name] = (int.from_bytes(start[offset:offset + length], "big"),
                         int.from_bytes(end[offset:offset + length], "big"))
            offset += ir.padded_length(length)
        out.setdefault(chain, []).append(box)
    return out


def test_a_profile_direction_is_lookups_and_one_rule_chain_per_policy_rule():
    rule = NetRule("deny", ("tcp", "udp"), ((53, 53), (8000, 8099)),
                   ("10.0.0.0/8", "2001:db8::/32", "loopback"))
    table = table_of(Profile("p", egress=(rule, NetRule("allow", ("tcp",), ((22, 22),)))))
    v4, v6, to_default = rules_in(table, "out-p")     # no fallbacks: no guard
    assert v4[:2] == (("meta", "nfproto"), ("cmp", "eq", "02"))
    assert v4[-1] == ("vmap", "out-p.v4", 8)
    # each field into its own registers from NFT_REG32_00 on, the oif made big-endian
    assert set(v4[2:-1]) == {("payload", "network", 16, 4, 8), ("payload", "transport", 2, 2, 9),
                             ("meta", "l4proto", 10), ("meta", "oif", 11),
                             ("byteorder", "hton", 4, 4, 11)}
    assert ("payload", "network", 24, 16, 8) in v6 and v6[-1] == ("vmap", "out-p.v6", 8)
    assert to_default == (("verdict", "goto", "out-p.default"),)
    assert every_rule_in(table, "out-p.default") == [(("counter",), ("verdict", "return"))]
    assert [r.comment for r in table.rules if r.chain == "out-p.default"] == ["p egress default"]
    assert every_rule_in(table, "out-p.1") == [(("counter",), ("verdict", "goto", "out-p.deny"))]
    assert every_rule_in(table, "out-p.2") == [(("counter",), ("verdict", "return"))]
    assert [r.comment for r in table.rules if r.chain == "out-p.1"] == ["p egress rule 1"]
    maps = {s.name: s for s in table.sets if s.data == "verdict"}
    assert set(maps) == {"out-p.v4", "out-p.v6"}        # every rule has ports: no np maps
    v4map = maps["out-p.v4"]
    assert v4map.key == "concat" and v4map.interval
    assert sorted(v4map.fields) == [("iface_index", 4), ("inet_proto", 1), ("inet_service", 2),
                                    ("ipv4_addr", 4)]
    # 10.0.0.0/8 udp 53 from every interface (oif 0..2^31-1, big-endian)
    assert {"iface_index": (0, 2 ** 31 - 1), "inet_proto": (17, 17),
            "ipv4_addr": (0x0A000000, 0x0AFFFFFF),
            "inet_service": (53, 53)} in boxes_of(v4map)["out-p.1"]
    # the key bytes: each field big-endian, padded to whole registers
    order = [name for name, _ in v4map.fields]
    start = v4map.elements[0][0]
    assert len(start) == 2 * 16 and start[8 * order.index("inet_proto") + 2:][:6] == "000000"
    names = [c.name for c in table.chains]
    assert names.index("out-p.1") < names.index("out-p") and "out-p.2" in names
    assert names.index("out-p.default") < names.index("out-p")


def test_the_most_selective_field_leads_the_key():
    """pipapo's cost grows with the elements still matching after each field: 999
    rules of one port and 999 networks put the address first, 999 ports the port."""
    nets = tuple(NetRule("deny", ("tcp",), ((8080, 8080),), (f"10.{i % 250}.{i // 250}.0/24",))
                 for i in range(99))
    ports = tuple(NetRule("deny", ("tcp",), ((9000 + i, 9000 + i),)) for i in range(99))
    last = (NetRule("allow", ("tcp",), ((8000, 8099),)),)
    by_nets = {s.name: s for s in table_of(Profile("p", egress=nets + last)).sets}
    assert by_nets["out-p.v4"].fields[0] == ("ipv4_addr", 4)
    by_ports = {s.name: s for s in table_of(Profile("p", egress=ports + last)).sets}
    assert by_ports["out-p.any"].fields[0] == ("inet_service", 2)


def test_maps_without_ports_follow_the_port_map_and_the_family_maps_without_l4proto():
    rules = (NetRule("allow", ("tcp",), ((443, 443),)), NetRule("deny", (), (), ("10.0.0.0/8",)),
             NetRule("allow", ("icmp",)))
    table = table_of(Profile("p", egress=rules, egress_default="reject"))
    chain = rules_in(table, "out-p")
    lookups = [r[-1][1] for r in chain if r[-1][0] == "vmap"]
    assert lookups == ["out-p.v4", "out-p.v6", "out-p.v4np", "out-p.v4nl",
                       "out-p.v6np"]                     # no v6 rule without l4proto
    # between the main maps and the fallbacks, the guard: a packet whose port loaded
    # missed its family's main map, so no rule matches it
    assert chain[2] == (("payload", "transport", 2, 2), ("cmp", "gte", "0000"),
                        ("verdict", "goto", "out-p.default"))
    assert chain[-1] == (("verdict", "goto", "out-p.default"),)
    nl = {s.name: s for s in table.sets}["out-p.v4nl"]
    assert sorted(nl.fields) == [("iface_index", 4), ("ipv4_addr", 4)]
    assert boxes_of(nl) == {"out-p.2": [{"iface_index": (0, 2 ** 31 - 1),
                                         "ipv4_addr": (0x0A000000, 0x0AFFFFFF)}]}


def test_icmp_follows_the_address_family():
    rule = NetRule("reject", ("icmp",), (), ("192.0.2.0/24", "2001:db8::/32"))
    maps = {s.name: s for s in table_of(Profile("p", egress=(rule,))).sets}
    assert [b["inet_proto"] for b in boxes_of(maps["out-p.v4"])["out-p.1"]] == [(1, 1)]
    assert [b["inet_proto"] for b in boxes_of(maps["out-p.v6"])["out-p.1"]] == [(58, 58)]
    anywhere = NetRule("deny", ("icmp",))
    maps = {s.name: s for s in table_of(Profile("q", egress=(anywhere,))).sets}
    assert sorted(b["inet_proto"] for b in boxes_of(maps["out-q.any"])["out-q.1"]) == [
        (1, 1), (58, 58)]
    assert sorted(maps["out-q.any"].fields) == [("iface_index", 4), ("inet_proto", 1)]


def test_tcp_only_reject_is_a_reset():
    rule = NetRule("reject", ("tcp",), ((80, 80),))
    table = table_of(Profile("p", egress=(rule, NetRule("reject", ("tcp", "udp"), ((81, 81),)))))
    assert rules_in(table, "out-p.1")[0][-1] == ("verdict", "goto", "out-p.reset")
    assert rules_in(table, "out-p.reset") == [(("reject", "tcp-reset"),)]
    assert rules_in(table, "out-p.2")[0][-1] == ("verdict", "goto", "out-p.reject")
    assert rules_in(table, "out-p.reject") == [(("reject", "icmpx-port-unreachable"),)]


def test_ingress_matches_sources_and_loopback_by_input_interface():
    profile = Profile("p", ingress=(NetRule("allow", peers=("loopback",)),
                                    NetRule("allow", ("tcp",), ((22, 22),), ("192.0.2.7",))),
                      ingress_default="deny")
    table = table_of(profile)
    lookups = rules_in(table, "in-p")
    assert any(e[:2] == ("meta", "iif") for e in lookups[0])
    assert any(e[:4] == ("payload", "network", 12, 4) for e in lookups[0])   # source
    assert lookups[-1][-1] == ("verdict", "goto", "in-p.default")
    assert rules_in(table, "in-p.default")[0][-1] == ("verdict", "goto", "in-p.deny")
    assert rules_in(table, "in-p.deny") == [(("verdict", "drop"),)]
    loopback = {s.name: s for s in table.sets}["in-p.v4nl"]
    assert boxes_of(loopback) == {"in-p.1": [{"iface_index": (1, 1),
                                              "ipv4_addr": (0, 2 ** 32 - 1)}]}
    guards = rules_in(table, "ingress")
    assert [e for r in guards for e in r if e[0] in ("socket", "lookup")] == [
        ("socket", "cgroupv2", 2), ("lookup", "any-ucg"),
        ("socket", "cgroupv2", 3), ("lookup", "any-scg")]
    assert rules_in(table, "ingress-user") == [(
        ("socket", "cgroupv2", 2), ("lookup", "ucg-p"), ("verdict", "jump", "in-p"))]
    assert rules_in(table, "egress") == []                # nothing to do on output


def test_without_cidr_peers_a_packet_without_l4proto_meets_at_most_two_plain_rules():
    rules = (NetRule("allow", ("tcp",)), NetRule("allow", (), (), ("loopback",)),
             NetRule("deny", (), (), ("loopback",)), NetRule("reject"), NetRule("allow"))
    table = table_of(Profile("p", egress=rules))
    assert rules_in(table, "out-p")[1:] == [
        (("meta", "l4proto"), ("cmp", "gte", "00"), ("verdict", "goto", "out-p.default")),
        (("meta", "oif"), ("cmp", "eq", "01000000"), ("verdict", "goto", "out-p.2")),
        (("verdict", "goto", "out-p.4"),), (("verdict", "goto", "out-p.default"),)]
    assert rules_in(table, "out-p.default") == [(("counter",), ("verdict", "return"))]


def test_logging_profiles_go_to_logging_chains():
    table = table_of(Profile("p", egress=(NetRule("deny", ("udp",)),), log=True,
                             egress_default="reject"))
    assert rules_in(table, "out-p.1")[0][-1] == ("verdict", "goto", "out-p.deny")
    assert rules_in(table, "out-p.deny") == [(("verdict", "goto", "deny-p"),)]
    assert rules_in(table, "out-p.default")[-1][-1] == ("verdict", "goto", "out-p.reject")
    assert rules_in(table, "out-p.reject") == [(("verdict", "goto", "reject-p"),)]
    assert rules_in(table, "deny-p") == [(("verdict", "jump", "log-p"),),
                                         (("verdict", "drop"),)]
    assert rules_in(table, "log-p") == [(("limit", 5, 1, 10), ("verdict", "goto", "emit-p"))]
    marked, plain = rules_in(table, "emit-p")
    # the mark is lent to the session cgroup id for the nflog copy, then put back; the
    # rule returns, or the nocg rule would log the same denial a second time
    assert marked == (("meta", "mark", 2), ("socket", "cgroupv2", 3), ("meta_set", "mark", 1),
                      ("nflog", "netfence p", 5140, 128), ("meta_set", "mark", 2),
                      ("verdict", "return"))
    assert plain == (("nflog", "netfence p nocg", 5140, 128),)


def test_monitor_mode_logs_and_lets_through():
    table = table_of(Profile("p", egress=(NetRule("deny", ("udp",)),), mode="monitor",
                             egress_default="reject"))
    # only a flow's first packet is logged (and counted): the flow goes on
    assert rules_in(table, "deny-p") == [compiler.CT_NEW + (("verdict", "jump", "log-p"),),
                                         (("verdict", "return"),)]
    assert rules_in(table, "reject-p") == [compiler.CT_NEW + (("verdict", "jump", "log-p"),),
                                           (("verdict", "return"),)]


def test_accounting_counts_every_packet_and_each_denial_per_cgroup():
    table = table_of(Profile("p", egress=(NetRule("deny", ("udp",)),), account=True),
                     Profile("q", egress=(NetRule("deny", ("udp",)),)))
    counted = {s.name for s in table.sets if s.counter}
    assert counted == {"acct-out", "acct-in", "denied-p"}
    assert rules_in(table, "egress")[:2] == [
        (("socket", "cgroupv2", 3), ("lookup", "acct-out")),
        (("socket", "cgroupv2", 2), ("lookup", "acct-out"))]
    assert rules_in(table, "ingress")[:2] == [
        (("socket", "cgroupv2", 3), ("lookup", "acct-in")),
        (("socket", "cgroupv2", 2), ("lookup", "acct-in"))]
    assert rules_in(table, "deny-p") == [
        (("socket", "cgroupv2", 3), ("lookup", "denied-p")),
        (("socket", "cgroupv2", 2), ("lookup", "denied-p")), (("verdict", "drop"),)]
    assert rules_in(table, "out-q.deny")[-1][-1] == ("verdict", "drop")  # q: unchanged


def test_unrestricted_traffic_costs_one_guard_lookup_per_kind_whatever_the_profiles():
    profiles = [Profile(f"p{i}", egress=(NetRule("deny", ("tcp",), ((25, 25),)),))
                for i in range(5)]
    table = table_of(*profiles)
    assert rules_in(table, "egress") == [
        (("meta", "skuid"), ("lookup", "any-ruid"), ("verdict", "jump", "egress-restrict")),
        (("meta", "skuid"), ("lookup", "any-uid"), ("verdict", "jump", "egress-uid")),
        (("socket", "cgroupv2", 3), ("lookup", "any-scg"),
         ("verdict", "jump", "egress-session"))]
    assert rules_in(table, "egress-uid")[4] == (
        ("meta", "skuid"), ("lookup", "uid-p4"), ("verdict", "jump", "out-p4"))
    assert len(rules_in(table, "egress-session")) == 5
    assert {c.name: c.hook for c in table.chains}["egress"] == "output"
    assert {c.name: c.hook for c in table.chains}["ingress"] == "input"
    # per profile: 3 login sets, 3 grant sets, ruid, its map; guards: 3 login kinds
    # and any-ruid
    assert len(table.sets) == 4 + 5 * 8
    # regular chains exist before the chains that jump to them
    names = [c.name for c in table.chains]
    assert names.index("out-p0") < names.index("egress-uid") < names.index("egress")


def test_compile_is_deterministic_and_json_round_trips():
    pol = policy(Profile("p", egress=(NetRule("deny", ("tcp",), ((25, 25),)),)),
                 rules=[MatchRule(0, users=Patterns(("*",)), profiles=("p",))])
    first, second = compiler.compile_policy(pol), compiler.compile_policy(pol)
    assert first["policy_id"] == second["policy_id"]
    table = ir.TableDef.from_json(json.loads(json.dumps(first["table"])))
    assert table == ir.TableDef.from_json(first["table"])
    assert first["login"]["profiles"]["p"] == {
        "egress": True, "ingress": False, "uid_set": "uid-p", "ucg_set": "ucg-p",
        "scg_set": "scg-p", "mode": "enforce"}
    assert first["login"]["guards"] == {
        "uid_set": "any-uid", "ucg_set": "any-ucg", "scg_set": "any-scg"}


def test_the_grants_are_asked_where_a_profile_denies_and_nowhere_else():
    profile = Profile("p", egress=(NetRule("deny", ("tcp",), ((25, 25),)),
                                   NetRule("allow", ("tcp",), ((80, 80),))),
                      ingress_default="deny")
    table = table_of(profile)
    assert every_rule_in(table, "out-p.deny") == [
        (("meta", "skuid"), ("lookup", "guid-p"), ("verdict", "return")),
        (("socket", "cgroupv2", 3), ("lookup", "gscg-p"), ("verdict", "return")),
        (("verdict", "drop"),)]
    assert every_rule_in(table, "in-p.deny") == [
        (("socket", "cgroupv2", 2), ("lookup", "gucg-p"), ("verdict", "return")),
        (("socket", "cgroupv2", 3), ("lookup", "gscg-p"), ("verdict", "return")),
        (("verdict", "drop"),)]
    # what P allows needs no grant: neither the profile chain, its allow rule nor its
    # allow default looks one up
    for chain in ("out-p", "out-p.2", "out-p.default"):
        assert not any(e[0] == "lookup" for r in every_rule_in(table, chain) for e in r)
    names = [c.name for c in table.chains]
    assert names.index("out-p.deny") < names.index("out-p.1")
    timed = {s.name for s in table.sets if s.timeout}
    assert timed == {"guid-p", "gucg-p", "gscg-p", "ruid-p", "any-ruid"}
    assert not any(s.timeout for s in table.sets if s.name.startswith(("uid-", "any-uid")))


def test_a_restriction_applies_a_profile_to_a_uids_egress():
    table = table_of(Profile("p", egress=(NetRule("deny", ("tcp",), ((25, 25),)),)),
                     Profile("in-only", ingress_default="deny"))
    assert rules_in(table, "egress")[0] == (
        ("meta", "skuid"), ("lookup", "any-ruid"), ("verdict", "jump", "egress-restrict"))
    assert rules_in(table, "egress-restrict") == [
        (("meta", "skuid"), ("lookup", "ruid-p"), ("verdict", "jump", "out-p"))]
    names = {s.name for s in table.sets}
    assert "ruid-in-only" not in names and "guid-in-only" in names   # nothing to restrict


def test_no_restricting_profile_no_restriction_guard():
    table = table_of(Profile("in-only", ingress_default="deny"))
    assert "any-ruid" not in {s.name for s in table.sets}
    assert all("egress-restrict" not in str(r) for r in rules_in(table, "egress"))


def windowed_policy():
    egress_only = Profile("web", egress=(NetRule("deny", ("tcp",), ((80, 80),)),))
    ingress_only = Profile("nosrv", ingress_default="deny")
    untimed = Profile("dns", egress=(NetRule("deny", ("udp",), ((53, 53),)),))
    rules = [MatchRule(0, users=Patterns(("*",)), profiles=("web", "nosrv"),
                       time=(TimeWindow(0b0011111, 480, 1200),)),
             MatchRule(1, users=Patterns(("*",)), profiles=("dns",))]
    return policy(egress_only, ingress_only, untimed, rules=rules)


def test_profiles_of_a_rule_with_time_get_window_sets_by_direction():
    snap = compiler.compile_policy(windowed_policy())
    table = ir.TableDef.from_json(snap["table"])
    timed = {s.name for s in table.sets if s.timeout and s.name[0] == "t"}
    assert timed == {"tuid-web", "tscg-web", "tucg-nosrv", "tscg-nosrv"}
    guards = {s.name for s in table.sets if s.timeout and s.name.startswith("any-t")}
    assert guards == {"any-tuid", "any-tucg", "any-tscg"}
    assert rules_in(table, "egress")[-2:] == [
        (("meta", "skuid"), ("lookup", "any-tuid"), ("verdict", "jump", "egress-tuid")),
        (("socket", "cgroupv2", 3), ("lookup", "any-tscg"),
         ("verdict", "jump", "egress-tsession"))]
    new = (("ct", "state"), ("bitwise", "08000000", "00000000"), ("cmp", "neq", "00000000"))
    assert rules_in(table, "ingress")[-2:] == [
        new + (("socket", "cgroupv2", 2), ("lookup", "any-tucg"),
               ("verdict", "jump", "ingress-tuser")),
        new + (("socket", "cgroupv2", 3), ("lookup", "any-tscg"),
               ("verdict", "jump", "ingress-tsession"))]
    assert rules_in(table, "egress-tsession") == [
        (("socket", "cgroupv2", 3), ("lookup", "tscg-web"), ("verdict", "jump", "out-web"))]
    assert rules_in(table, "ingress-tsession") == [
        (("socket", "cgroupv2", 3), ("lookup", "tscg-nosrv"), ("verdict", "jump", "in-nosrv"))]


def test_the_login_part_names_the_window_sets_that_exist():
    login = compiler.compile_policy(windowed_policy())["login"]
    assert login["profiles"]["web"]["tuid_set"] == "tuid-web"
    assert login["profiles"]["web"]["tscg_set"] == "tscg-web"
    assert "tucg_set" not in login["profiles"]["web"]
    assert login["profiles"]["nosrv"]["tucg_set"] == "tucg-nosrv"
    assert "tuid_set" not in login["profiles"]["nosrv"]
    assert not any(f.startswith("t") for f in login["profiles"]["dns"])
    assert login["guards"] == {"uid_set": "any-uid", "ucg_set": "any-ucg",
                               "scg_set": "any-scg", "tuid_set": "any-tuid",
                               "tucg_set": "any-tucg", "tscg_set": "any-tscg"}


def test_login_rules_carry_compiled_rhosts():
    pol = policy(Profile("p"), rules=[MatchRule(
        0, users=Patterns(("*",)), rhosts=Patterns(("local", ".Example.org", "10.0.0.0/8"),
                                                   ("10.9.0.0/16",)), profiles=("p",))])
    rule = compiler.compile_policy(pol)["login"]["rules"][0]
    assert rule["rhosts"] == [[["local"], ["suffix", ".example.org"],
                               ["net", 4, 0x0A000000, 8]], [["net", 4, 0x0A090000, 16]]]


def test_a_verdict_map_set_def_round_trips_through_json():
    fields = (("iface_index", 4), ("inet_proto", 1), ("ipv4_addr", 4), ("inet_service", 2))
    elements = (("01000000" "06000000" "0a000000" "00500000",
                 "01000000" "06000000" "0affffff" "00500000", "out-web.1"),)
    table = ir.TableDef(sets=(ir.SetDef("out-web.v4", "concat", interval=True, fields=fields,
                                        data="verdict", elements=elements),),
                        chains=(), rules=())
    back = ir.TableDef.from_json(json.loads(json.dumps(table.to_json())))
    assert back == table
    assert back.sets[0].fields == fields and back.sets[0].elements == elements
    assert ir.key_length(fields) == 16


@pytest.mark.parametrize("log", [False, True])
def test_every_denial_chain_asks_the_grants_first(log):
    """Deny, TCP reset, ICMP reject and the default, egress and ingress, logging or not:
    every chain a deny or reject goes to starts with the direction's grants, and every
    deny or reject verdict of a rule chain or a default goes to one of them."""
    rules = (NetRule("deny", ("tcp",), ((25, 25),)), NetRule("reject", ("tcp",), ((26, 26),)),
             NetRule("reject", ("tcp", "udp"), ((27, 27),)), NetRule("allow", ("udp",)))
    table = table_of(Profile("p", egress=rules, ingress=rules, egress_default="reject",
                             ingress_default="deny", log=log))
    grants = {"out": [("lookup", "guid-p"), ("lookup", "gscg-p")],
              "in": [("lookup", "gucg-p"), ("lookup", "gscg-p")]}
    targets = set()
    for side in ("out", "in"):
        for chain in [f"{side}-p.{n}" for n in range(1, 5)] + [f"{side}-p.default"]:
            [rule] = every_rule_in(table, chain)
            if rule[-1] != ("verdict", "return"):
                assert rule[-1][:2] == ("verdict", "goto"), chain
                targets.add(rule[-1][2])
    kinds = {"deny", "reject"} | (set() if log else {"reset"})
    assert targets == {f"{side}-p.{kind}" for side in ("out", "in") for kind in kinds}
    for target in targets:
        denial = every_rule_in(table, target)
        assert [r[-2] for r in denial[:2]] == grants[target[:target.index("-")]], target
        assert all(r[-1] == ("verdict", "return") for r in denial[:2]) and len(denial) == 3
        assert denial[2][-1] != ("verdict", "return"), target
