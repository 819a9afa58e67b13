"""compile_policy: policy model → table IR and login part (pure; no root)."""

import json

from netfence import compiler, ir
from netfence.model import MatchRule, NetRule, Patterns, Policy, Profile, Settings


def policy(*profiles, rules=()):
    return Policy(Settings(), {p.name: p for p in profiles}, tuple(rules))


def table_of(*profiles):
    return ir.TableDef.from_json(compiler.compile_policy(policy(*profiles))["table"])


def rules_in(table, chain):
    return [r.exprs for r in table.rules if r.chain == chain]


def test_allow_is_return_never_accept():
    table = table_of(Profile("p", egress=(NetRule("allow", ("tcp",), ((443, 443),)),),
                             egress_default="deny"))
    verdicts = [e for r in table.rules for e in r.exprs if e[0] == "verdict"]
    assert ("verdict", "return") in verdicts
    assert all(v[1] != "accept" for v in verdicts)
    assert rules_in(table, "out-p")[-1] == (("counter",), ("verdict", "drop"))


def test_peers_protocols_and_ports_expand_to_one_rule_each():
    rule = NetRule("deny", ("tcp", "udp"), ((53, 53), (8000, 8099)),
                   ("10.0.0.0/8", "2001:db8::/32", "loopback"))
    table = table_of(Profile("p", egress=(rule,)))
    assert len(rules_in(table, "out-p")) == 3 * 2 * 2 + 1
    first = rules_in(table, "out-p")[0]
    assert first[:5] == (("meta", "nfproto"), ("cmp", "eq", "02"),
                         ("payload", "network", 16, 4),
                         ("bitwise", "ff000000", "00000000"), ("cmp", "eq", "0a000000"))
    assert ("payload", "transport", 2, 2) in first
    ranged = rules_in(table, "out-p")[1]
    assert ("range", "eq", "1f40", "1fa3") in ranged


def test_icmp_follows_the_address_family():
    rule = NetRule("reject", ("icmp",), (), ("192.0.2.0/24", "2001:db8::/32"))
    v4, v6, _default = rules_in(table_of(Profile("p", egress=(rule,))), "out-p")
    assert ("cmp", "eq", "01") in v4 and ("cmp", "eq", "3a") in v6
    assert v4[-1] == ("reject", "icmpx-port-unreachable")
    anywhere = NetRule("deny", ("icmp",))
    assert len(rules_in(table_of(Profile("q", egress=(anywhere,))), "out-q")) == 3


def test_tcp_only_reject_is_a_reset():
    rule = NetRule("reject", ("tcp",), ((80, 80),))
    assert rules_in(table_of(Profile("p", egress=(rule,))), "out-p")[0][-1] == (
        "reject", "tcp-reset")


def test_ingress_matches_sources_and_loopback_by_input_interface():
    profile = Profile("p", ingress=(NetRule("allow", peers=("loopback",)),
                                    NetRule("allow", ("tcp",), ((22, 22),), ("192.0.2.7",))),
                      ingress_default="deny")
    table = table_of(profile)
    lo, ssh, default = rules_in(table, "in-p")
    assert lo[:2] == (("meta", "iif"), ("cmp", "eq", "01000000"))
    assert ("payload", "network", 12, 4) in ssh          # source address
    assert default[-1] == ("verdict", "drop")
    guards = rules_in(table, "ingress")
    assert [e for r in guards for e in r if e[0] in ("socket", "lookup")] == [
        ("socket", "cgroupv2", 2), ("lookup", "any-ucg"),
        ("socket", "cgroupv2", 3), ("lookup", "any-scg")]
    assert rules_in(table, "ingress-user") == [(
        ("socket", "cgroupv2", 2), ("lookup", "ucg-p"), ("verdict", "jump", "in-p"))]
    assert rules_in(table, "egress") == []                # nothing to do on output


def test_logging_profiles_go_to_logging_chains():
    table = table_of(Profile("p", egress=(NetRule("deny", ("udp",)),), log=True,
                             egress_default="reject"))
    assert rules_in(table, "out-p")[0][-1] == ("verdict", "goto", "deny-p")
    assert rules_in(table, "out-p")[-1][-1] == ("verdict", "goto", "reject-p")
    log = rules_in(table, "deny-p")[0]
    assert log[0] == ("limit", 5, 1, 10) and log[1][0] == "log" and log[1][2] == 0x08


def test_unrestricted_traffic_costs_two_guard_lookups_whatever_the_profiles():
    profiles = [Profile(f"p{i}", egress=(NetRule("deny", ("tcp",), ((25, 25),)),))
                for i in range(5)]
    table = table_of(*profiles)
    assert rules_in(table, "egress") == [
        (("meta", "skuid"), ("lookup", "any-uid"), ("verdict", "jump", "egress-uid")),
        (("socket", "cgroupv2", 3), ("lookup", "any-scg"),
         ("verdict", "jump", "egress-session"))]
    assert rules_in(table, "egress-uid")[4] == (
        ("meta", "skuid"), ("lookup", "uid-p4"), ("verdict", "jump", "out-p4"))
    assert len(rules_in(table, "egress-session")) == 5
    assert {c.name: c.hook for c in table.chains}["egress"] == "output"
    assert {c.name: c.hook for c in table.chains}["ingress"] == "input"
    assert len(table.sets) == 3 + 15
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
        "scg_set": "scg-p"}
    assert first["login"]["guards"] == {
        "uid_set": "any-uid", "ucg_set": "any-ucg", "scg_set": "any-scg"}


def test_login_rules_carry_compiled_rhosts():
    pol = policy(Profile("p"), rules=[MatchRule(
        0, users=Patterns(("*",)), rhosts=Patterns(("local", ".Example.org", "10.0.0.0/8"),
                                                   ("10.9.0.0/16",)), profiles=("p",))])
    rule = compiler.compile_policy(pol)["login"]["rules"][0]
    assert rule["rhosts"] == [[["local"], ["suffix", ".example.org"],
                               ["net", 4, 0x0A000000, 8]], [["net", 4, 0x0A090000, 16]]]
