"""plan's accounting part: which elements count a login or a run tree, and a close's
totals from the counters (docs/hook.md, "Accounting")."""

import textwrap

from netfence import plan, setkinds
from netfence.compiler import compile_policy
from netfence.policy import parse_policy_text

INFO = {"user": "alice", "uid": 1001, "service": "su-l", "rhost": "", "tty": ""}
CGROUP = {"path": "/nf/user-1001/session-5-6", "id": 0x10, "user_path": "/nf/user-1001",
          "user_id": 0x20, "created": True, "origin": "/"}
SESSION = {"key": "5-6", "ppid": 5, "starttime": 6}
SCG_KEY, UCG_KEY = setkinds.SCG.key(0x10), setkinds.SCG.key(0x20)

POLICY = """
[settings]
cgroup_base = "nf"

[profile.web]
egress = [ { action = "deny", proto = "tcp", ports = [22] } ]
account = true

[profile.counted]
account = true

[profile.plain]
egress = [ { action = "deny", proto = "tcp", ports = [23] } ]

[[rule]]
users = ["alice"]
profiles = ["web"]
scope = "session"
"""


def login(text=POLICY):
    return compile_policy(parse_policy_text([("t.toml", textwrap.dedent(text))]))["login"]


def record(user_profiles=(), session_profiles=(), timed_rules=(), text=POLICY):
    return plan.session_record(login(text), INFO, SESSION, list(user_profiles),
                               list(session_profiles), CGROUP, 1.0, timed_rules)


def test_a_counting_session_profile_counts_the_session_and_the_user():
    rec = record(session_profiles=["web"])
    for name in ("acct-out", "acct-in", "denied-web"):
        assert rec["session_elements"][name] == [SCG_KEY]
        assert rec["user_elements"][name] == [UCG_KEY]
    assert rec["session_elements"]["scg-web"] == [SCG_KEY]     # the fence itself stays


def test_a_counting_user_profile_counts_the_session_too():
    rec = record(user_profiles=["web"])
    assert rec["session_elements"] == {"acct-out": [SCG_KEY], "acct-in": [SCG_KEY],
                                       "denied-web": [SCG_KEY]}
    assert rec["user_elements"]["acct-out"] == [UCG_KEY]


def test_an_accounting_only_profile_without_rules_counts():
    rec = record(session_profiles=["counted"])
    assert rec["session_elements"] == {"acct-out": [SCG_KEY], "acct-in": [SCG_KEY],
                                       "denied-counted": [SCG_KEY]}
    assert rec["user_elements"] == {"acct-out": [UCG_KEY], "acct-in": [UCG_KEY],
                                    "denied-counted": [UCG_KEY]}
    todo = plan.open_plan(rec, None, None, [], [])
    assert todo["send"] == plan.union([rec["user_elements"], rec["session_elements"]])


def test_each_counting_profile_gets_its_denied_set_once_acct_sets_once():
    rec = record(user_profiles=["web"], session_profiles=["counted", "web"])
    assert rec["session_elements"]["acct-out"] == [SCG_KEY]
    assert rec["session_elements"]["denied-web"] == [SCG_KEY]
    assert rec["session_elements"]["denied-counted"] == [SCG_KEY]


def test_a_profile_that_does_not_count_adds_no_accounting_element():
    rec = record(session_profiles=["plain"])
    assert not plan.counted(rec["session_elements"])
    assert not plan.counted(rec["user_elements"])
    assert set(rec["session_elements"]) == {"scg-plain", "any-scg"}


def test_a_policy_without_accounting_adds_nothing():
    text = POLICY.replace("account = true", "")
    rec = record(session_profiles=["web"], text=text)
    assert not plan.counted(rec["session_elements"]) and not plan.counted(rec["user_elements"])


def test_a_timed_counting_profile_counts_whatever_the_clock():
    rec = record(timed_rules=[(0, "session", ("web",), [[127, 0, 1440]])])
    assert rec["session_elements"]["acct-out"] == [SCG_KEY]
    assert rec["session_elements"]["denied-web"] == [SCG_KEY]
    assert rec["user_elements"]["acct-in"] == [UCG_KEY]


def test_a_run_tree_counts_by_its_own_cgroup_only():
    run = {"key": "7-8", "pid": 7, "starttime": 8, "name": "t", "user": "alice",
           "uid": 1001, "argv": ["true"]}
    tree = plan.run_record(login(), run, ["counted"],
                           {"path": "/nf/run/t-7-8", "id": 0x30, "created": True}, 1.0)
    key = setkinds.SCG.key(0x30)
    assert tree["session_elements"] == {"acct-out": [key], "acct-in": [key],
                                        "denied-counted": [key]}


def test_closing_the_last_session_destroys_the_user_accounting_elements():
    rec = record(session_profiles=["web"])
    user = plan.open_plan(rec, None, None, [], [])["user"]
    todo = plan.close_plan(rec, ["5-6"], [], user, False, {})
    assert todo["destroy"]["acct-out"] == [SCG_KEY, UCG_KEY]
    kept = plan.close_plan(rec, ["5-6"], [], user, True, {})
    assert kept["destroy"]["acct-out"] == [SCG_KEY]         # the user element stays


def test_counted_keeps_only_the_accounting_sets():
    assert plan.counted({"acct-out": ["aa"], "acct-in": [], "denied-x": ["aa"],
                         "scg-x": ["aa"]}) == {"acct-out": ["aa"], "denied-x": ["aa"]}


def test_totals_sum_each_way_and_name_the_denying_profiles():
    counters = {"acct-out": {"aa": (3, 300)}, "acct-in": {"aa": (2, 120)},
                "denied-web": {"aa": (4, 240)}, "denied-x": {"aa": (0, 0)}}
    assert plan.totals(counters) == {"sent_bytes": 300, "sent_packets": 3,
                                     "recv_bytes": 120, "recv_packets": 2,
                                     "denied": {"web": 4, "x": 0}}


def test_totals_of_elements_the_kernel_no_longer_has_are_unknown_not_zero():
    assert plan.totals({}) is None
    assert plan.totals({"acct-out": {}}) is None
    partial = plan.totals({"acct-in": {"aa": (1, 60)}})
    assert partial["sent_bytes"] == 0 and partial["recv_bytes"] == 60


def test_the_templates_cover_the_accounting_sets_a_login_fills():
    from netfence import fastpath, nfencode
    part = login()
    sets = part["templates"]["sets"]
    for name in ("acct-out", "acct-in", "denied-web", "denied-counted"):
        assert sets[name]["key_len"] == 8, name
    assert "denied-plain" not in sets
    rec = record(user_profiles=["web"], session_profiles=["counted"])
    send = plan.union([rec["user_elements"], rec["session_elements"]])
    for kind in ("new", "destroy"):        # the same bytes as built at login
        assert (fastpath.messages(part["templates"], kind, send)
                == fastpath.messages(None, kind, send))
    without = nfencode.build_templates(login(POLICY.replace("account = true", "")))
    assert not [s for s in without["sets"] if setkinds.is_counted(s)]
