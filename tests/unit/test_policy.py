"""parse_policy_text: policy text → model.Policy, and file:line problems (pure; no root)."""

import os
import re

import pytest

from netfence.errors import PolicyError
from netfence.model import (Location, MatchRule, NetRule, Patterns, Policy, Profile, Settings,
                            TimeWindow)
from netfence.policy import parse_policy_text

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRODUCT_EXAMPLE = """\
[settings]
on_error = "deny"        # "deny" | "allow"
hook_timeout_ms = 2000   # 100..60000
log_rate = 5             # logged denials per second per profile, 1..10000
cgroup_base = "netfence" # one path component [A-Za-z0-9_.-]+, not "." / ".."

[profile.no-plain-http]
egress = [ { action = "reject", proto = "tcp", ports = [80] } ]
# egress_default = "allow" (default) | "deny" | "reject"

[profile.no-servers]
ingress = [ { action = "allow", from = ["loopback"] } ]
ingress_default = "deny"

[profile.web-only]
egress = [
  { action = "allow", to = ["loopback"] },
  { action = "allow", proto = "udp", ports = [53], to = ["10.0.0.53"] },
  { action = "allow", proto = "tcp", ports = [80, 443, "8000-8099"] },
]
egress_default = "reject"
log = true

[[rule]]
users = ["*"]
profiles = ["no-plain-http", "no-servers"]
scope = "user"

[[rule]]
groups = ["students"]
services = ["sshd"]
rhosts = ["!10.0.0.0/8"]
time = "Mo-Fr 08:00-20:00"
profiles = ["web-only"]
scope = "session"
"""

MINIMAL_PROFILE = '[profile.p]\negress = [ { action = "deny" } ]\n'


def parse(text, path="/etc/netfence/netfence.toml"):
    return parse_policy_text([(path, text)])


def problems(text, path="p.toml"):
    with pytest.raises(PolicyError) as info:
        parse(text, path)
    return info.value.problems


def one_problem(text):
    found = problems(text)
    assert len(found) == 1, found
    return found[0][1], found[0][2]


def rule_text(**fields):
    """A minimal valid policy with one rule; fields are raw TOML values."""
    body = {"users": '["*"]', "profiles": '["p"]', **fields}
    lines = [f"{k} = {v}" for k, v in body.items() if v is not None]
    return MINIMAL_PROFILE + "[[rule]]\n" + "\n".join(lines) + "\n"


def one_rule(**fields):
    return parse(rule_text(**fields)).rules[0]


def net_rule(direction="egress", **fields):
    items = ", ".join(f"{k} = {v}" for k, v in fields.items())
    policy = parse(f"[profile.p]\n{direction} = [ {{ {items} }} ]\n")
    return getattr(policy.profiles["p"], direction)[0]


# ---- the product example -------------------------------------------------------------

def test_product_example_parses_to_the_expected_dataclasses():
    path = "/etc/netfence/netfence.toml"
    expected = Policy(
        settings=Settings(on_error="deny", hook_timeout_ms=2000, log_rate=5,
                          cgroup_base="netfence"),
        profiles={
            "no-plain-http": Profile(
                "no-plain-http", egress=(NetRule("reject", ("tcp",), ((80, 80),)),)),
            "no-servers": Profile(
                "no-servers", ingress=(NetRule("allow", (), (), ("loopback",)),),
                ingress_default="deny"),
            "web-only": Profile(
                "web-only",
                egress=(NetRule("allow", peers=("loopback",)),
                        NetRule("allow", ("udp",), ((53, 53),), ("10.0.0.53/32",)),
                        NetRule("allow", ("tcp",), ((80, 80), (443, 443), (8000, 8099)))),
                egress_default="reject", log=True),
        },
        rules=(
            MatchRule(0, users=Patterns(("*",)), scope="user",
                      profiles=("no-plain-http", "no-servers")),
            MatchRule(1, groups=Patterns(("students",)), services=Patterns(("sshd",)),
                      rhosts=Patterns((), ("10.0.0.0/8",)),
                      time=(TimeWindow(0b0011111, 8 * 60, 20 * 60),), scope="session",
                      profiles=("web-only",)),
        ),
        files=(path,),
    )
    policy = parse(PRODUCT_EXAMPLE, path)
    assert policy == expected
    assert list(policy.profiles) == ["no-plain-http", "no-servers", "web-only"]


def test_product_example_locations():
    policy = parse(PRODUCT_EXAMPLE, "n.toml")
    profiles = policy.profiles
    assert profiles["no-plain-http"].where == Location("n.toml", 7)
    assert profiles["no-plain-http"].egress[0].where == Location("n.toml", 8)
    assert profiles["no-servers"].ingress[0].where == Location("n.toml", 12)
    assert [r.where.line for r in profiles["web-only"].egress] == [17, 18, 19]
    assert [r.where for r in policy.rules] == [Location("n.toml", 24), Location("n.toml", 29)]


def test_default_policy_parses():
    with open(os.path.join(ROOT, "packaging", "netfence.toml"), encoding="utf-8") as f:
        policy = parse(f.read())
    assert policy.settings == Settings()
    profile = policy.profiles["no-servers"]
    assert profile.ingress == (NetRule("allow", peers=("loopback",)),)
    assert profile.ingress_default == "deny"
    assert (profile.egress, profile.egress_default) == ((), "allow")
    assert policy.rules == (MatchRule(0, users=Patterns(("*",)), scope="user",
                                      profiles=("no-servers",)),)


def test_every_toml_example_in_the_docs_parses():
    with open(os.path.join(ROOT, "docs", "policy.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```toml\n(.*?)```", f.read(), re.S)
    assert len(blocks) >= 4
    for number, block in enumerate(blocks):
        parse(block, f"docs-block-{number}.toml")


# ---- settings ------------------------------------------------------------------------

def test_empty_text_is_an_empty_policy():
    assert parse("", "x.toml") == Policy(Settings(), {}, (), ("x.toml",))
    assert parse_policy_text([]) == Policy(Settings(), {}, (), ())


def test_settings_values():
    policy = parse('[settings]\non_error = "allow"\nhook_timeout_ms = 100\n'
                   'log_rate = 10000\ncgroup_base = "nf.d-1_x"\n')
    assert policy.settings == Settings("allow", 100, 10000, "nf.d-1_x")


@pytest.mark.parametrize("line, message", [
    ('on_error = "maybe"', "settings: on_error must be one of deny, allow, not 'maybe'"),
    ("hook_timeout_ms = 99", "settings: hook_timeout_ms must be from 100 to 60000, not 99"),
    ("hook_timeout_ms = 60001", "must be from 100 to 60000"),
    ("hook_timeout_ms = 2000.0", "hook_timeout_ms must be an integer, not a number"),
    ("log_rate = 0", "log_rate must be from 1 to 10000"),
    ("log_rate = true", "log_rate must be an integer, not a boolean"),
    ('cgroup_base = ".."', "cgroup_base must be one directory name"),
    ('cgroup_base = "."', "cgroup_base must be one directory name"),
    ('cgroup_base = "a/b"', "cgroup_base must be one directory name"),
    ('cgroup_base = ""', "cgroup_base must be one directory name"),
    ("cgroup_base = 1", "cgroup_base must be a string, not an integer"),
    ("colour = 5", "unknown key 'colour' in [settings]; expected one of:"),
    ("timeout = 5", "did you mean 'hook_timeout_ms'?"),
    ("log_rates = 5", "unknown key 'log_rates' in [settings]; did you mean 'log_rate'?"),
])
def test_bad_settings(line, message):
    line_number, text = one_problem(f"# comment\n[settings]\n{line}\n")
    assert line_number == 3
    assert message in text


def test_a_setting_set_in_two_files_names_both_places():
    with pytest.raises(PolicyError) as info:
        parse_policy_text([("a.toml", "[settings]\nlog_rate = 5\n"),
                           ("b.toml", "\n[settings]\nlog_rate = 6\n")])
    assert info.value.problems == [
        ("b.toml", 3, "settings: log_rate is already set at a.toml:2")]


def test_settings_in_several_files_merge():
    policy = parse_policy_text([("a.toml", '[settings]\non_error = "allow"\n'),
                                ("b.toml", "[settings]\nlog_rate = 7\n")])
    assert policy.settings == Settings(on_error="allow", log_rate=7)


def test_settings_must_be_a_table():
    assert one_problem("settings = 1\n") == (1, "settings must be a table: [settings]")


def test_unknown_top_level_table():
    assert one_problem("\n[profiles.x]\n") == (
        2, "unknown key 'profiles' in the top level; did you mean 'profile'?")
    assert one_problem("[[rules]]\n")[1].endswith("did you mean 'rule'?")
    assert "expected one of: settings, profile, rule" in one_problem("zzz = 1\n")[1]


# ---- profiles and net rules ----------------------------------------------------------

def test_profile_defaults():
    assert parse("[profile.p]\n").profiles["p"] == Profile("p")


def test_array_of_tables_and_inline_arrays_give_the_same_profile():
    inline = parse('[profile.w]\negress_default = "reject"\n'
                   'egress = [ { action = "allow", proto = "tcp", ports = [443] },\n'
                   '           { action = "deny", to = "10.0.0.0/8" } ]\n')
    tables = parse('[profile.w]\negress_default = "reject"\n\n'
                   '[[profile.w.egress]]\naction = "allow"\nproto = "tcp"\nports = [443]\n\n'
                   '[[profile.w.egress]]\naction = "deny"\nto = "10.0.0.0/8"\n')
    assert inline == tables
    assert [r.where.line for r in inline.profiles["w"].egress] == [3, 4]
    assert [r.where.line for r in tables.profiles["w"].egress] == [4, 9]


def test_array_of_tables_before_the_profile_header():
    policy = parse('[[profile.q.egress]]\naction = "deny"\n[profile.q]\nlog = true\n')
    assert policy.profiles["q"] == Profile("q", egress=(NetRule("deny"),), log=True)
    assert policy.profiles["q"].where.line == 3


def test_ingress_rules():
    rule = net_rule("ingress", action='"reject"', proto='"tcp"', ports="[22, 2222]",
                    **{"from": '["192.0.2.0/24", "2001:db8::/32", "loopback"]'})
    assert rule == NetRule("reject", ("tcp",), ((22, 22), (2222, 2222)),
                           ("192.0.2.0/24", "2001:db8::/32", "loopback"))


def test_protocols():
    assert net_rule(action='"deny"', proto='"any"').protos == ()
    assert net_rule(action='"deny"', proto='["any"]').protos == ()
    assert net_rule(action='"deny"', proto='"icmp"').protos == ("icmp",)
    assert net_rule(action='"deny"', proto='["udp", "tcp", "udp"]').protos == ("udp", "tcp")


def test_ports_keep_order_and_drop_repeats():
    rule = net_rule(action='"deny"', proto='["tcp", "udp"]',
                    ports='[443, "8000-8099", 80, 443, "443", "1-65535", "7-7"]')
    assert rule.ports == ((443, 443), (8000, 8099), (80, 80), (1, 65535), (7, 7))
    assert net_rule(action='"deny"', proto='"tcp"', ports="22").ports == ((22, 22),)


def test_peers_are_normalized():
    rule = net_rule(action='"deny"', to='["10.0.0.53", "2001:DB8::1", "10.0.0.0/8", '
                                        '"10.0.0.0/255.0.0.0", "::/0", "loopback", "0.0.0.0/0"]')
    assert rule.peers == ("10.0.0.53/32", "2001:db8::1/128", "10.0.0.0/8", "::/0",
                          "loopback", "0.0.0.0/0")


def test_unknown_key_with_suggestion_points_at_its_line():
    text = ('[profile.web-only]\negress = [\n  { action = "allow" },\n'
            '  { action = "allow", prot = "tcp" },\n]\n')
    assert one_problem(text) == (
        4, "unknown key 'prot' in profile web-only egress rule 2; did you mean 'proto'?")


def test_unknown_key_in_an_array_of_tables():
    text = '[profile.p]\n[[profile.p.egress]]\naction = "deny"\n\nport = [1]\n'
    line, message = one_problem(text)
    assert line == 5
    assert message == ("unknown key 'port' in profile p egress rule 1; "
                       "did you mean 'ports'?")


def test_unknown_profile_key():
    assert one_problem('[profile.p]\negres = []\n') == (
        2, "unknown key 'egres' in profile p; did you mean 'egress'?")


@pytest.mark.parametrize("fields, message", [
    ('action = "drop"', "action must be one of allow, deny, reject, not 'drop'"),
    ("action = 1", "action must be a string, not an integer"),
    ('proto = "tcp"', "action is required (allow, deny or reject)"),
    ('action = "deny", proto = "icmp", ports = [1]',
     "ports only apply to tcp and udp, not icmp"),
    ('action = "deny", proto = ["tcp", "icmp"], ports = [1]',
     "ports only apply to tcp and udp, not icmp"),
    ('action = "deny", ports = [22]', 'ports need proto = "tcp" or "udp"'),
    ('action = "deny", proto = "any", ports = [22]', 'ports need proto = "tcp" or "udp"'),
    ('action = "deny", proto = "tcp", ports = [0]', "bad port 0: ports are 1..65535"),
    ('action = "deny", proto = "tcp", ports = [65536]', "bad port 65536"),
    ('action = "deny", proto = "tcp", ports = ["90-80"]', "bad port range '90-80'"),
    ('action = "deny", proto = "tcp", ports = ["http"]', "bad port 'http'"),
    ('action = "deny", proto = "tcp", ports = ["1-"]', "bad port '1-'"),
    ('action = "deny", proto = "tcp", ports = [" 80"]', "bad port ' 80'"),
    ('action = "deny", proto = "tcp", ports = [1.5]', "ports items must be an integer or"),
    ('action = "deny", proto = "tcp", ports = []', "ports is empty"),
    ('action = "deny", proto = "sctp"', "proto must be one of tcp, udp, icmp, any, not 'sctp'"),
    ('action = "deny", proto = ["any", "tcp"]', '"any" cannot be combined'),
    ('action = "deny", proto = []', "proto is empty"),
    ('action = "deny", to = ["10.0.0.1/8"]',
     "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"),
    ('action = "deny", to = ["2001:db8::1/32"]',
     "2001:db8::1/32 has host bits set; did you mean 2001:db8::/32?"),
    ('action = "deny", to = ["10.0.0.256"]', "'10.0.0.256' is not an IP address or network"),
    ('action = "deny", to = ["example.org"]', "host names are not resolved"),
    ('action = "deny", to = ["localhost"]', "is not an IP address, a network or \"loopback\""),
    ('action = "deny", to = ["fe80::1%eth0"]', "zone indexes are not supported"),
    ('action = "deny", to = []', "to is empty"),
    ('action = "deny", to = [1]', "to items must be a string, not an integer"),
    ('action = "deny", from = ["::1"]', "'from' is for ingress rules; egress rules use 'to'"),
])
def test_bad_egress_rule(fields, message):
    line, text = one_problem(f'[profile.p]\n\negress = [\n  {{ {fields} }},\n]\n')
    assert line == 4
    assert text.startswith("profile p egress rule 1: ") or text.startswith("unknown key")
    assert message in text


def test_to_in_an_ingress_rule():
    assert one_problem('[profile.p]\ningress = [ { action = "deny", to = ["::1"] } ]\n') == (
        2, "profile p ingress rule 1: 'to' is for egress rules; ingress rules use 'from'")


def test_bad_default_and_log():
    found = problems('[profile.p]\negress_default = "accept"\ningress_default = 0\n'
                     'log = "yes"\n')
    assert [(line, message) for _, line, message in found] == [
        (2, "profile p: egress_default must be one of allow, deny, reject, not 'accept'"),
        (3, "profile p: ingress_default must be a string, not an integer"),
        (4, "profile p: log must be true or false, not a string"),
    ]


def test_rules_must_be_an_array_of_tables():
    line, message = one_problem('[profile.p]\n\negress = { action = "deny" }\n')
    assert line == 3 and message.startswith("profile p: egress must be an array of rules")
    assert one_problem('[profile.p]\negress = ["deny"]\n')[0] == 2


@pytest.mark.parametrize("name", ["a b", "-x", "_x", "x" * 41, "wéb", "a.b", ""])
def test_bad_profile_names(name):
    line, message = one_problem(f'# x\n[profile."{name}"]\n')
    assert line == 2
    assert message.startswith("profile: bad profile name ")


def test_good_profile_names():
    names = ["a", "0", "A-b_c", "x" * 40]
    text = "".join(f"[profile.{n}]\n" for n in names)
    assert list(parse(text).profiles) == names


def test_profile_section_must_hold_tables():
    assert one_problem('[[profile]]\nname = "x"\n') == (
        1, "profile must hold named tables: [profile.NAME]")
    assert one_problem('profile.p = 1\n') == (1, "profile p must be a table: [profile.p]")


def test_duplicate_profile_across_files_names_both_places():
    with pytest.raises(PolicyError) as info:
        parse_policy_text([("/etc/netfence/netfence.toml", "# base\n[profile.web]\n"),
                           ("/etc/netfence/netfence.d/10-x.toml",
                            "\n\n[profile.web]\nlog = true\n")])
    assert info.value.problems == [(
        "/etc/netfence/netfence.d/10-x.toml", 3,
        "profile 'web' is already defined at /etc/netfence/netfence.toml:2")]


def test_duplicate_in_one_file_is_a_toml_error():
    line, message = one_problem("[profile.web]\n[profile.web]\n")
    assert line == 2 and message.startswith("syntax error: Cannot declare")


# ---- match rules ---------------------------------------------------------------------

def test_rule_defaults():
    assert one_rule() == MatchRule(0, users=Patterns(("*",)), profiles=("p",))


def test_single_strings_and_negation():
    rule = one_rule(users='"alice"', groups='["staff", "!guests"]', services='"sshd"',
                    ttys='["pts/*", "!:0", "tty?"]', profiles='"p"')
    assert rule.users == Patterns(("alice",))
    assert rule.groups == Patterns(("staff",), ("guests",))
    assert rule.services == Patterns(("sshd",))
    assert rule.ttys == Patterns(("pts/*", "tty?"), (":0",))
    assert rule.profiles == ("p",)


def test_users_with_exclusions_and_repeats():
    rule = one_rule(users='["*", "!bob", "root", "!bob", "user@REALM", "a.b-c_d"]')
    assert rule.users == Patterns(("*", "root", "user@REALM", "a.b-c_d"), ("bob",))


def test_groups_only_is_enough():
    assert one_rule(users=None, groups='"students"').groups == Patterns(("students",))


def test_rhosts_items():
    rule = one_rule(rhosts='["local", "Bastion.Example.ORG", ".Example.org", "10.0.0.1", '
                           '"2001:db8::/32", "!192.168.0.0/16", "!.evil.test", "host_1"]')
    assert rule.rhosts == Patterns(
        ("local", "bastion.example.org", ".example.org", "10.0.0.1/32", "2001:db8::/32",
         "host_1"),
        ("192.168.0.0/16", ".evil.test"))


def test_time_windows():
    rule = one_rule(time='["Mo-Fr 08:00-20:00", "Sa,Su 22:00-06:00", "* 00:00-24:00", '
                         '"Mo-Fr 08:00-20:00"]')
    assert rule.time == (TimeWindow(0b0011111, 480, 1200), TimeWindow(0b1100000, 1320, 360),
                         TimeWindow(0b1111111, 0, 1440))


def test_scope_and_profiles_from_several_definitions():
    text = MINIMAL_PROFILE + '[profile.q]\n[[rule]]\nusers = "*"\nprofiles = ["q", "p", "q"]\n' \
        'scope = "user"\n'
    rule = parse(text).rules[0]
    assert (rule.scope, rule.profiles) == ("user", ("q", "p"))


def test_rule_indexes_count_over_files_and_a_rule_may_use_a_later_file_profile():
    policy = parse_policy_text([
        ("a.toml", '[[rule]]\nusers = "a"\nprofiles = "later"\n'
                   '[[rule]]\nusers = "b"\nprofiles = "later"\n'),
        ("b.toml", '[profile.later]\n[[rule]]\nusers = "c"\nprofiles = "later"\n'),
    ])
    assert [(r.index, r.users.include, r.where) for r in policy.rules] == [
        (0, ("a",), Location("a.toml", 1)), (1, ("b",), Location("a.toml", 4)),
        (2, ("c",), Location("b.toml", 2))]
    assert policy.files == ("a.toml", "b.toml")


def test_unknown_profile_in_a_rule():
    text = '[profile.web]\n\n[[rule]]\nusers = ["*"]\nprofiles = ["webb", "web", "zzz"]\n'
    assert problems(text, "r.toml") == [
        ("r.toml", 5, "rule 1: unknown profile 'webb'; did you mean 'web'?"),
        ("r.toml", 5, "rule 1: unknown profile 'zzz'"),
    ]


def test_unknown_profile_on_its_own_line_of_a_long_array():
    text = '[profile.web]\n[[rule]]\nusers = "*"\nprofiles = [\n  "web",\n  "nope",\n]\n'
    assert one_problem(text) == (6, "rule 1: unknown profile 'nope'")


@pytest.mark.parametrize("time, message", [
    ('"Mo-Fr 08:00-08:00"', "start equals end; use '00:00-24:00' for the whole day"),
    ('"Mo-Fr"', "bad time 'Mo-Fr': expected 'DAYS HH:MM-HH:MM'"),
    ('"Mo-Fr 08:00"', "bad time range '08:00': expected 'HH:MM-HH:MM'"),
    ('"Mx 08:00-09:00"', "bad days 'Mx': 'Mx' is not one of Mo Tu We Th Fr Sa Su"),
    ('"mo 08:00-09:00"', "'mo' is not one of"),
    ('"Mo, 08:00-09:00"', "'' is not one of"),
    ('"Mo 24:00-09:00"', "'24:00' is not in 00:00..23:59"),
    ('"Mo 08:00-24:01"', "'24:01' is not in 00:00..24:00"),
    ('"Mo 08:60-09:00"', "'08:60' is not in 00:00..23:59"),
    ('"Mo 8-9"', "'8' is not HH:MM"),
    ('"Mo 08:00-09:00 extra"', "expected 'DAYS HH:MM-HH:MM'"),
    ("[]", "time is empty"),
    ("[1]", "time items must be a string, not an integer"),
])
def test_bad_time(time, message):
    line, text = one_problem(rule_text(time=time))
    assert line == 6
    assert text.startswith("rule 1: ")
    assert message in text


def test_each_bad_time_is_reported_at_its_line():
    text = MINIMAL_PROFILE + ('[[rule]]\nusers = "*"\nprofiles = "p"\ntime = [\n'
                              '  "Mo 08:00-09:00",\n  "Xx 08:00-09:00",\n  "Mo 1:00-1:00",\n]\n')
    assert [line for _, line, _ in problems(text)] == [8, 9]


def test_rule_without_users_or_groups_matches_nobody():
    text = MINIMAL_PROFILE + '\n[[rule]]\nservices = ["sshd"]\nprofiles = ["p"]\n'
    assert one_problem(text) == (
        4, 'rule 1: rule matches nobody: give users or groups (users = ["*"] is every '
           'user but root)')


def test_rule_with_only_negated_users_matches_nobody():
    line, message = one_problem(rule_text(users='["!bob"]', groups='["!staff"]'))
    assert line == 3
    assert message.startswith("rule 1: rule matches nobody: users and groups hold only")


def test_rule_needs_profiles():
    assert one_problem(rule_text(profiles=None)) == (
        3, "rule 1: profiles is required: the profiles this rule applies")
    assert one_problem(rule_text(profiles="[]"))[1] == (
        "rule 1: profiles is empty; give at least one profile")


@pytest.mark.parametrize("field, value, message", [
    ("users", '["-rf"]', "bad user name '-rf'"),
    ("users", '["a;b"]', "bad user name 'a;b'"),
    ("users", '["a\\nb"]', "bad user name 'a\\nb'"),
    ("users", '["a b"]', "bad user name 'a b'"),
    ("users", '["!"]', "bad user name ''"),
    ("users", '["!!x"]', "bad user name '!x'"),
    ("users", f'["{"a" * 257}"]', "bad user name"),
    ("users", '["!*"]', '"!*" excludes every user'),
    ("users", "[]", "users is empty"),
    ("users", "[1]", "users items must be a string, not an integer"),
    ("groups", '["*"]', '"*" is for users only'),
    ("groups", '["-g"]', "bad group name '-g'"),
    ("groups", '["$(x)"]', "bad group name '$(x)'"),
    ("services", '["ssh d"]', "bad service name 'ssh d'"),
    ("services", '["*"]', "bad service name '*'"),
    ("services", "[]", "services is empty; leave the key out to match any"),
    ("ttys", '["tty[1-6]"]', "bad tty pattern 'tty[1-6]'"),
    ("ttys", '[""]', "bad tty pattern ''"),
    ("rhosts", '["10.0.0.1/8"]', "10.0.0.1/8 has host bits set; did you mean 10.0.0.0/8?"),
    ("rhosts", '["!10.0.0.1/8"]', "has host bits set"),
    ("rhosts", '["10.0.0"]', "'10.0.0' is not an IP address or network"),
    ("rhosts", '["a..b"]', "bad remote host 'a..b'"),
    ("rhosts", '["-bad.example"]', "bad remote host '-bad.example'"),
    ("rhosts", '["ex ample"]', "bad remote host 'ex ample'"),
    ("rhosts", '["."]', "not an IP address"),
    ("scope", '"global"', "scope must be one of user, session, always, not 'global'"),
    ("profiles", '["bad name"]', "bad profile name 'bad name'"),
])
def test_bad_rule_values(field, value, message):
    line, text = one_problem(rule_text(**{field: value}))
    expected_line = {"users": 4, "profiles": 5}.get(field, 6)
    assert line == expected_line
    assert text.startswith("rule 1: ")
    assert message in text


def test_unknown_rule_key():
    assert one_problem(rule_text(user='"bob"')) == (
        6, "unknown key 'user' in rule 1; did you mean 'users'?")


def test_rule_section_must_be_an_array_of_tables():
    assert one_problem('rule = { users = "*" }\n') == (
        1, "rule must be an array of tables: write each as [[rule]]")


def test_inline_array_of_rules_is_accepted():
    policy = parse('rule = [\n  { users = "a", profiles = "p" },\n'
                   '  { users = "b", profiles = "p" },\n]\n' + MINIMAL_PROFILE)
    assert [(r.index, r.where.line) for r in policy.rules] == [(0, 2), (1, 3)]


# ---- syntax errors and collecting problems -------------------------------------------

def test_toml_syntax_error_line():
    assert one_problem('[profile.p]\nlog = true\nlog2 true\n') == (
        3, "syntax error: Expected '=' after a key in a key/value pair (column 6)")


def test_toml_error_at_end_of_file():
    assert one_problem('[profile.p]\negress = [\n') == (
        2, "syntax error: Invalid value (at end of file)")


def test_deep_nesting_is_a_policy_error():
    line, message = one_problem("x = " + "[" * 5000)
    assert "nested too deeply" in message


def test_problems_from_several_files_are_all_reported_in_file_order():
    with pytest.raises(PolicyError) as info:
        parse_policy_text([
            ("a.toml", '[profile.p]\negress = [ { action = "drop" } ]\n'),
            ("b.toml", "oops\n"),
            ("c.toml", '[[rule]]\nusers = "*"\nprofiles = "nope"\n[settings]\nlog_rate = 0\n'),
        ])
    found = info.value.problems
    assert [(path, line) for path, line, _ in found] == [
        ("a.toml", 2), ("b.toml", 1), ("c.toml", 3), ("c.toml", 5)]
    assert str(info.value).splitlines()[0] == (
        "a.toml:2: profile p egress rule 1: action must be one of allow, deny, reject, "
        "not 'drop'")


def test_a_bad_profile_still_counts_as_defined():
    text = '[profile.p]\negress = [ { action = "drop" } ]\n[[rule]]\nusers="*"\nprofiles="p"\n'
    assert len(problems(text)) == 1


def test_hostile_keys_and_values_stay_on_one_line_in_messages():
    text = ('"a\\nb" = 1\n[profile."x\\ny"]\n[profile.p]\n"k\\u2028" = 1\n'
            '[[rule]]\nusers = ["ok\\n[[rule]]"]\nprofiles = "p"\n')
    found = problems(text)
    assert [line for _, line, _ in found] == [1, 2, 4, 6]
    assert all("\n" not in message and "\u2028" not in message for _, _, message in found)
    assert found[0][2] == r"unknown key 'a\nb' in the top level; expected one of: " \
                          "settings, profile, rule"
