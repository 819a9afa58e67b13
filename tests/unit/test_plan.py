"""plan: what an open or a close does, decided without files, kernel or root."""

from netfence import plan, setkinds, timed
from support.clock import MONDAY, utc  # noqa: F401  (a fixture)

PROFILES = {"web": {"egress": True, "ingress": True, "uid_set": "uid-web",
                    "ucg_set": "ucg-web", "scg_set": "scg-web"}}
LOGIN = {"profiles": PROFILES, "settings": {"cgroup_base": "nf"}, "policy_id": "p1",
         "guards": setkinds.guards()}
INFO = {"user": "alice", "uid": 1001, "service": "sshd", "rhost": "", "tty": "ssh"}
CGROUP = {"path": "/nf/user-1001/session-5-6", "id": 0x10, "user_path": "/nf/user-1001",
          "user_id": 0x20, "created": True, "origin": "/"}
UID_KEY = setkinds.UID.key(1001)
UCG_KEY = setkinds.UCG.key(0x20)
SCG_KEY = setkinds.SCG.key(0x10)


def record(key="5-6", user_profiles=("web",), session_profiles=(), cgroup=CGROUP):
    session = {"key": key, "ppid": int(key.split("-")[0]),
               "starttime": int(key.split("-")[1])}
    return plan.session_record(LOGIN, INFO, session, list(user_profiles),
                               list(session_profiles), cgroup, 100.0)


def test_the_session_record_holds_the_login_and_its_elements():
    rec = record(session_profiles=["web"])
    assert (rec["key"], rec["uid"], rec["ppid"], rec["starttime"]) == ("5-6", 1001, 5, 6)
    assert rec["base"] == "nf" and rec["policy_id"] == "p1" and rec["opened_at"] == 100.0
    assert rec["user_elements"] == {"uid-web": [UID_KEY], "any-uid": [UID_KEY],
                                    "ucg-web": [UCG_KEY], "any-ucg": [UCG_KEY]}
    assert rec["session_elements"] == {"scg-web": [SCG_KEY], "any-scg": [SCG_KEY]}


def test_the_cgroup_base_defaults_to_netfence():
    assert plan.cgroup_base({}) == "netfence"
    assert plan.cgroup_base(LOGIN) == "nf"


def test_a_first_open_adds_everything_and_creates_the_user_record():
    rec = record()
    todo = plan.open_plan(rec, None, None, [], [])
    assert todo["send"] == todo["added"] == plan.union([rec["user_elements"]])
    assert todo["refs"] == ["5-6"]
    user = todo["user"]
    assert user["elements"] == rec["user_elements"] and user["sessions"] == ["5-6"]
    assert user["user_cgroups"] == user["live_cgroups"] == ["/nf/user-1001"]
    assert user["updated_at"] == 100.0


def test_an_open_adds_only_what_no_live_record_had():
    first = record("1-2", session_profiles=["web"])
    user = plan.open_plan(first, None, None, [], [])["user"]
    second = record("3-4", session_profiles=["web"])
    todo = plan.open_plan(second, None, user, ["1-2"], [first])
    assert todo["added"] == {}                     # shared cgroup, same user: all held
    assert todo["send"] == plan.union([second["user_elements"],
                                       second["session_elements"]])
    assert todo["refs"] == ["1-2", "3-4"]
    assert todo["user"]["sessions"] == ["1-2", "3-4"]
    assert plan.open_plan(second, None, user, ["1-2"], [])["added"] == \
        second["session_elements"]                 # the other session is dead


def test_a_second_open_by_the_same_application_keeps_the_first():
    previous = dict(record(session_profiles=["web"]), created=False, origin="/x")
    again = record(user_profiles=())
    todo = plan.open_plan(again, previous, None, ["5-6"], [])
    assert todo["record"]["user_elements"] == previous["user_elements"]
    assert todo["record"]["session_elements"] == previous["session_elements"]
    assert (todo["record"]["created"], todo["record"]["origin"]) == (False, "/x")
    assert again["user_elements"] == {}            # the input is left as it was
    assert todo["refs"] is None and todo["added"] == previous["user_elements"]


def test_a_close_keeps_what_a_nested_login_needs():
    rec, nested = record("1-2", session_profiles=["web"]), record("3-4",
                                                                  session_profiles=["web"])
    user = {"uid": 1001, "elements": rec["user_elements"], "sessions": ["1-2", "3-4"]}
    todo = plan.close_plan(rec, ["1-2", "3-4"], [nested], user, True, {})
    assert todo["destroy"] == {} and not todo["release"] and not todo["ours"]
    assert todo["refs"] == ["3-4"]
    assert todo["user_after"]["sessions"] == ["3-4"]
    assert todo["closing"] == dict(rec, closing=True, destroy={}, history="pending")


def test_the_last_close_releases_the_user_but_spares_other_users_keys():
    rec = record(session_profiles=["web"])
    user = {"uid": 1001, "elements": rec["user_elements"], "sessions": ["5-6"]}
    others = {"ucg-web": [UCG_KEY], "any-ucg": [UCG_KEY]}
    todo = plan.close_plan(rec, ["5-6"], [], user, False, others)
    assert todo["release"] and todo["ours"] and todo["user_after"] is None
    assert todo["destroy"] == {"scg-web": [SCG_KEY], "any-scg": [SCG_KEY],
                               "uid-web": [UID_KEY], "any-uid": [UID_KEY]}
    assert todo["closing"]["destroy"] == todo["destroy"] and todo["refs"] == []


def test_a_close_without_a_user_record_or_cgroup_id():
    rec = dict(record(), cgroup_id=0, created=False)
    todo = plan.close_plan(rec, [], [], None, True, {})
    assert not todo["release"] and todo["user_after"] is None and todo["refs"] is None
    assert not todo["ours"]


def test_release_and_pending_records():
    user = {"uid": 1001, "elements": {"uid-web": [UID_KEY]}}
    releasing = plan.releasing(user)
    assert releasing["closing"] and releasing["destroy"] == user["elements"]
    assert plan.after_pending(releasing) is None
    assert plan.after_pending(dict(user, destroy={"uid-web": [UID_KEY]})) == user


def test_union_keeps_first_seen_order_once():
    assert plan.union([{"s": ["2", "1"]}, {"s": ["1", "3"], "t": []}]) == \
        {"s": ["2", "1", "3"], "t": []}


# ---- rules with `time`: timed entries, their expiry, what a close destroys -----------

EVERY_DAY = 0b1111111
LAB = {"egress": True, "ingress": True, "uid_set": "uid-lab", "ucg_set": "ucg-lab",
       "scg_set": "scg-lab", **setkinds.window_sets("lab")}
TIMED_LOGIN = dict(LOGIN, profiles={"web": PROFILES["web"], "lab": LAB},
                   guards={**setkinds.guards(),
                           **{k.field: k.guard for k in setkinds.WINDOW_KINDS}})
TUID_KEY, TUCG_KEY = setkinds.TUID.key(1001), setkinds.TUCG.key(0x20)
TSCG_KEY = setkinds.TSCG.key(0x10)


def hm(hour, minute=0):
    return MONDAY + hour * 3600 + minute * 60


def window(start_h, end_h):
    return (EVERY_DAY, start_h * 60, end_h * 60)


def timed_record(key="5-6", scope="session", windows=(window(8, 20),), cgroup=CGROUP,
                 login=TIMED_LOGIN):
    session = {"key": key, "ppid": int(key.split("-")[0]),
               "starttime": int(key.split("-")[1])}
    return plan.session_record(login, INFO, session, [], [], cgroup, 100.0,
                               ((3, scope, ("lab",), windows),))


def test_a_timed_rule_records_its_window_keys_apart_from_the_login_elements():
    rec = timed_record()
    assert rec["user_elements"] == rec["session_elements"] == {}
    assert rec["timed"] == [{"rule": 3, "scope": "session", "profiles": ["lab"],
                             "windows": [[EVERY_DAY, 480, 1200]],
                             "elements": {"tscg-lab": [TSCG_KEY], "any-tscg": [TSCG_KEY]}}]
    user = timed_record(scope="user")["timed"][0]["elements"]
    assert user == {"tuid-lab": [TUID_KEY], "any-tuid": [TUID_KEY],
                    "tucg-lab": [TUCG_KEY], "any-tucg": [TUCG_KEY]}
    assert not any(setkinds.is_timed(s) for s in plan.union(
        [rec["user_elements"], rec["session_elements"]]))


def test_a_profile_without_window_sets_gets_no_timed_entry():
    """An older compiler made no window sets: nothing to add, no set to invent."""
    old = dict(LOGIN, profiles={"lab": dict(PROFILES["web"], uid_set="uid-lab")})
    assert timed_record(login=old)["timed"] == []


def test_the_open_sends_the_open_window_with_its_end(utc):
    rec = timed_record(scope="user")
    todo = plan.open_plan(rec, None, None, [], [], [], hm(19, 55))
    assert todo["send"] == {}
    assert todo["timed"]["tuid-lab"] == {TUID_KEY: hm(20)}
    assert todo["added"]["tuid-lab"] == [TUID_KEY]
    assert todo["user"]["timed_keys"]["tuid-lab"] == [TUID_KEY]
    closed = plan.open_plan(rec, None, None, [], [], [], hm(21))
    assert closed["timed"] == {} and closed["added"] == {}
    assert closed["user"]["timed_keys"]["tuid-lab"] == [TUID_KEY]   # known for release


def test_a_shorter_window_does_not_cut_another_sessions_short(utc):
    """Attack: a second login of the user whose rule ends sooner would, with an exact
    expiry sent as destroy+add, end the first session's restriction early."""
    late = timed_record("1-2", scope="user", windows=(window(8, 22),))
    early = timed_record("3-4", scope="user", windows=(window(8, 18),))
    todo = plan.open_plan(early, None, None, [], [], [late], hm(17))
    assert todo["timed"]["tuid-lab"] == {TUID_KEY: hm(22)}
    assert "tuid-lab" not in todo["added"]          # the other record needs it: undo keeps


def test_a_close_destroys_its_session_keys_but_not_what_a_sharing_session_needs(utc):
    rec = timed_record("1-2")
    nested = timed_record("3-4", windows=(window(8, 22),))
    user = {"uid": 1001, "elements": {}, "sessions": ["1-2", "3-4"]}
    kept = plan.close_plan(rec, ["1-2", "3-4"], [nested], user, True, {}, now=hm(12))
    assert kept["destroy"] == {}
    late = plan.close_plan(rec, ["1-2", "3-4"], [nested], user, True, {}, now=hm(23))
    assert late["destroy"] == {"tscg-lab": [TSCG_KEY], "any-tscg": [TSCG_KEY]}
    alone = plan.close_plan(rec, ["1-2"], [], user, True, {}, now=hm(12))
    assert alone["destroy"] == {"tscg-lab": [TSCG_KEY], "any-tscg": [TSCG_KEY]}


def test_a_release_destroys_the_users_timed_keys_but_not_other_users(utc):
    rec = timed_record(scope="user")
    user = plan.open_plan(rec, None, None, [], [], [], hm(12))["user"]
    others = {"tucg-lab": [TUCG_KEY], "any-tucg": [TUCG_KEY]}   # a shared logind slice
    todo = plan.close_plan(rec, ["5-6"], [], user, False, others, now=hm(12))
    assert todo["release"]
    assert todo["destroy"] == {"tuid-lab": [TUID_KEY], "any-tuid": [TUID_KEY]}
    kept = plan.close_plan(rec, ["5-6"], [], user, True, {}, now=hm(12))
    assert kept["destroy"] == {}                    # user scope stays while the user does
    assert plan.releasing(user)["destroy"] == user["timed_keys"]


def test_a_second_open_by_the_same_application_keeps_its_timed_entries(utc):
    first = timed_record()
    again = timed_record(scope="user")
    record = plan.open_plan(again, first, None, ["5-6"], [], [], hm(12))["record"]
    assert [e["scope"] for e in record["timed"]] == ["session", "user"]


def test_a_lingering_user_keeps_its_window_after_the_logout(utc):
    """Hole: close with a process left behind kept the user-scope keys but only the
    session records fed timed.desired, so the next gc destroyed tuid-P while the
    user's processes ran, and no later window re-added it."""
    rec = timed_record(scope="user")
    user = plan.open_plan(rec, None, None, [], [], [], hm(12))["user"]
    closed = plan.close_plan(rec, ["5-6"], [], user, True, {}, now=hm(12))
    left = closed["user_after"]                     # the session record is gone now
    assert timed.desired([], [], [], hm(13), users=[left])["tuid-lab"] == \
        {TUID_KEY: hm(20)}
    assert timed.desired([], [], [], hm(21), users=[left]) == {}
    assert timed.next_change([left], hm(21)) == hm(24 + 8)
    assert timed.desired([], [], [], hm(24 + 9), users=[left])["any-tuid"] == \
        {TUID_KEY: hm(24 + 20)}                     # the next opening re-adds it
    assert timed.desired([], [], [], hm(13), users=[plan.releasing(left)]) == {}
    again = plan.open_plan(rec, None, left, [], [], [], hm(13))["user"]
    assert again["timed"] == left["timed"]          # no duplicate entries
