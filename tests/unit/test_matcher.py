"""match_login: which rules apply to a login (pure; no root)."""

import pytest

from netfence.compiler import build_login
from netfence.matcher import LoginFacts, match_login
from netfence.timed import time_matches
from netfence.model import Location, MatchRule, Patterns, Policy, Settings, TimeWindow

MON, SAT, SUN = 0, 5, 6


def login_part(*rules):
    return build_login(Policy(Settings(), {}, tuple(rules)))


def rule(index=0, scope="session", profiles=("p",), **fields):
    patterns = {k: (Patterns(tuple(i for i in v if not i.startswith("!")),
                             tuple(i[1:] for i in v if i.startswith("!"))))
                for k, v in fields.items() if k != "time"}
    return MatchRule(index=index, scope=scope, profiles=tuple(profiles),
                     time=fields.get("time", ()), where=Location("t.toml", index + 1),
                     **patterns)


def run(login, user="alice", uid=1001, groups=("alice",), service="sshd", rhost="",
        tty=""):
    return match_login(login, LoginFacts(user=user, uid=uid, groups=frozenset(groups),
                                         service=service, rhost=rhost, tty=tty))


def test_wildcard_matches_users_but_never_root():
    login = login_part(rule(users=["*"]))
    assert run(login).session_profiles == ("p",)
    assert run(login, user="root", uid=0, groups=("root",)).empty


def test_root_matches_only_when_named():
    login = login_part(rule(users=["root"]))
    assert run(login, user="root", uid=0).session_profiles == ("p",)


def test_groups_never_match_root():
    login = login_part(rule(groups=["wheel"]))
    assert run(login, user="root", uid=0, groups=("root", "wheel")).empty


def test_group_membership_includes_supplementary_groups():
    login = login_part(rule(groups=["students"]))
    assert run(login, groups=("alice", "students")).session_profiles == ("p",)
    assert run(login, groups=("alice",)).empty


def test_negated_user_and_group_exclude():
    login = login_part(rule(users=["*", "!bob"], groups=["!staff"]))
    assert not run(login).empty
    assert run(login, user="bob").empty
    assert run(login, groups=("alice", "staff")).empty


def test_services_and_ttys():
    login = login_part(rule(users=["*"], services=["sshd", "login"], ttys=["pts/*", "!pts/9"]))
    assert not run(login, tty="pts/3").empty
    assert run(login, tty="pts/9").empty
    assert run(login, service="su-l", tty="pts/3").empty
    assert run(login, tty="tty1").empty


@pytest.mark.parametrize("rhost,expected", [
    ("203.0.113.9", True), ("10.1.2.3", False), ("::ffff:10.1.2.3", False),
    ("2001:db8::1", True), ("", True), ("host.example.org", True),
])
def test_negated_cidr_is_restrictive_for_names(rhost, expected):
    login = login_part(rule(users=["*"], rhosts=["!10.0.0.0/8"]))
    assert (not run(login, rhost=rhost).empty) is expected


@pytest.mark.parametrize("rhost,expected", [
    ("", True), ("127.0.0.1", False), ("gw.campus.example", True), ("CAMPUS.EXAMPLE", False),
    ("2001:db8::5", True), ("[2001:db8::5]", True), ("2001:db9::5", False),
])
def test_positive_rhost_items(rhost, expected):
    login = login_part(rule(users=["*"], rhosts=["local", ".campus.example", "2001:db8::/32"]))
    assert (not run(login, rhost=rhost).empty) is expected


def test_time_windows_including_midnight_crossing():
    workday = TimeWindow(days=0b0011111, start=8 * 60, end=20 * 60)
    night = TimeWindow(days=1 << 4, start=22 * 60, end=6 * 60)        # Fr 22:00-06:00
    windows = [(w.days, w.start, w.end) for w in (workday, night)]
    assert time_matches(windows, MON, 8 * 60)
    assert not time_matches(windows, MON, 20 * 60)
    assert not time_matches(windows, SAT, 12 * 60)
    assert time_matches(windows, 4, 23 * 60)                           # Friday night
    assert time_matches(windows, SAT, 5 * 60)                          # … into Saturday
    assert not time_matches(windows, SUN, 5 * 60)
    assert time_matches([], SUN, 5 * 60)                               # no window: always


def test_a_rule_with_time_goes_to_timed_whatever_the_clock_says():
    """The clock is followed by the kernel and watch, not decided once at login: the
    rule is matched on everything else and handed over with its windows."""
    workday = TimeWindow(days=0b0011111, start=8 * 60, end=20 * 60)
    login = login_part(rule(users=["*"], profiles=("lab",), time=(workday,)),
                       rule(index=1, users=["bob"], profiles=("web",), time=(workday,)))
    decision = run(login)
    assert not decision.empty and decision.matched == ()
    assert decision.session_profiles == decision.user_profiles == ()
    ((index, scope, profiles, windows),) = decision.timed
    assert (index, scope, profiles) == (0, "session", ("lab",))
    assert [tuple(w) for w in windows] == [(0b0011111, 480, 1200)]
    assert run(login, user="root", uid=0).empty             # the rest still decides


def test_a_timed_profile_an_untimed_rule_applies_is_left_out():
    workday = TimeWindow(days=0b0011111, start=8 * 60, end=20 * 60)
    login = login_part(rule(users=["*"], profiles=("lab", "web"), time=(workday,)),
                       rule(index=1, scope="user", users=["*"], profiles=("web",)))
    decision = run(login)
    assert decision.user_profiles == ("web",)
    assert [t[2] for t in decision.timed] == [("lab",)]


def test_all_matching_rules_accumulate_and_user_scope_wins_duplicates():
    login = login_part(
        rule(0, users=["*"], scope="user", profiles=("a", "b")),
        rule(1, groups=["students"], profiles=("b", "c")),
        rule(2, users=["nobody-else"], profiles=("d",)),
    )
    decision = run(login, groups=("students",))
    assert decision.user_profiles == ("a", "b")
    assert decision.session_profiles == ("c",)
    assert decision.matched == (0, 1)
