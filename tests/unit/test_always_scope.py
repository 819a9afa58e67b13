"""scope = "always" without a kernel: policy errors (file:line), the compiled table,
NSS resolution with a fake NSS, interval elements as nft writes them, rendering."""

import pytest

from netfence import compiler, ir, nfconst as nf, render, resolve
from netfence.errors import PolicyError
from netfence.nfencode import interval_elements, interval_list_message, static_elements
from netfence.policy import parse_policy_text

PROFILES = """\
[profile.web]
egress = [ { action = "reject", proto = "tcp", ports = [80] } ]

[profile.srv]
ingress_default = "deny"
"""


def parse(rule):
    return parse_policy_text([("/etc/netfence/a.toml", PROFILES + "\n[[rule]]\n" + rule)])


def problems(rule):
    with pytest.raises(PolicyError) as info:
        parse(rule)
    return [(line, text) for _path, line, text in info.value.problems]


RULE_LINE = 8                  # the first line after [[rule]]


# ---- policy ---------------------------------------------------------------------

@pytest.mark.parametrize("key,value", [("services", '["sshd"]'), ("rhosts", '["local"]'),
                                       ("ttys", '["tty1"]'), ("time", '"Mo 08:00-18:00"')])
def test_always_rule_with_a_login_condition_is_refused_at_its_line(key, value):
    found = problems(f'scope = "always"\nusers = ["*"]\n{key} = {value}\nprofiles = ["web"]\n')
    assert found == [(RULE_LINE + 2, f"rule 1: {key} is a login condition: scope = "
                      f'"always" holds without a login; use scope "user" or "session" '
                      f"for a rule with {key}")]


def test_ingress_profile_at_always_scope_is_refused_and_says_why():
    ((line, text),) = problems('scope = "always"\nusers = ["*"]\nprofiles = ["web", "srv"]\n')
    assert line == RULE_LINE + 2
    assert "profile 'srv' restricts ingress" in text
    assert "no socket owner on the input hook" in text and "netfence run" in text


def test_uids_outside_always_scope_is_refused():
    found = problems('scope = "user"\nuids = [1000]\nprofiles = ["web"]\n')
    assert found == [(RULE_LINE + 1, 'rule 1: uids is for scope = "always" rules; at '
                                     'login scopes name users or groups')]


@pytest.mark.parametrize("value,message", [
    ('["5-3"]', "bad uid range '5-3'"), ('["4294967295"]', "bad uid range"),
    ('["x"]', "bad uid 'x'"), ("[true]", "uids items must be"), ("[]", "uids is empty")])
def test_bad_uids_are_refused(value, message):
    ((line, text),) = problems(f'scope = "always"\nuids = {value}\nprofiles = ["web"]\n')
    assert line == RULE_LINE + 1 and message in text, text


def test_always_rule_needs_users_uids_or_groups():
    ((_line, text),) = problems('scope = "always"\nprofiles = ["web"]\n')
    assert "rule matches nobody" in text


def test_uids_alone_match():
    (rule,) = parse('scope = "always"\nuids = ["1000-59999", 1234, "77"]\n'
                    'profiles = ["web"]\n').rules
    assert rule.scope == "always" and rule.uids == ((1000, 59999), (1234, 1234), (77, 77))


# ---- compiler -------------------------------------------------------------------

def compiled(rule):
    return compiler.compile_policy(parse(rule))


def test_always_rules_compile_to_interval_sets_and_egress_dispatch():
    snap = compiled('scope = "always"\nusers = ["*"]\ngroups = ["staff"]\nprofiles = ["web"]\n')
    table = ir.TableDef.from_json(snap["table"])
    sets = {s.name: s for s in table.sets}
    assert sets["auid-web"] == ir.SetDef("auid-web", "uid", interval=True)
    assert sets["agid-web"] == ir.SetDef("agid-web", "gid", interval=True)
    assert sets["suid-web"] == ir.SetDef("suid-web", "uid")     # single uids: a hash set
    assert sets["any-auid"].interval and sets["any-agid"].interval
    assert not sets["any-suid"].interval
    assert "auid-srv" not in sets                  # only profiles used at always scope
    egress = [r.exprs for r in table.rules if r.chain == "egress"]
    assert egress[:3] == [
        (("meta", "skuid"), ("byteorder", "hton", 4, 4), ("lookup", "any-auid"),
         ("verdict", "jump", "egress-always-uid")),
        (("meta", "skuid"), ("lookup", "any-suid"), ("verdict", "jump", "egress-always-single")),
        (("meta", "skgid"), ("byteorder", "hton", 4, 4), ("lookup", "any-agid"),
         ("verdict", "jump", "egress-always-gid"))]
    assert snap["login"]["rules"] == []            # no login matches an always rule
    assert snap["always"]["rules"][0]["groups"] == [["staff"], []]


def test_a_policy_without_always_rules_has_no_interval_sets():
    snap = compiled('users = ["*"]\nprofiles = ["web"]\n')
    assert not any(s["interval"] for s in snap["table"]["sets"] if s["data"] != "verdict")
    assert snap["always"] == {"rules": [], "profiles": {}, "guards": {}}


def test_rendering_hides_the_byteorder_and_shows_ranges():
    snap = compiled('scope = "always"\nuids = ["1000-59999", 7]\nprofiles = ["web"]\n')
    table = ir.TableDef.from_json(snap["table"])
    text = render.render_table(table, {"auid-web": [[7, 7], [1000, 59999]]})
    assert "\t\ttype uid\n\t\tflags interval\n\t\telements = { 7, 1000-59999 }" in text
    assert "meta skuid @any-auid jump egress-always-uid" in text
    assert "meta skgid @agid-web jump out-web" in text


# ---- resolution (fake NSS) ------------------------------------------------------

NSS = resolve.Nss(
    [("root", 0, 0), ("daemon", 1, 1), ("alice", 1000, 1000), ("bob", 1001, 50),
     ("carol", 1002, 1002), ("www-data", 33, 33)],
    {"root": (0, []), "staff": (50, ["alice", "root"]), "web": (33, []),
     "carol": (1002, [])})


def test_merge_and_subtract():
    assert resolve.merge([[5, 9], [1, 3], [4, 4], [20, 30], [25, 40]]) == [[1, 9], [20, 40]]
    assert resolve.subtract([[1, 100]], [[1, 1], [50, 60], [100, 200]]) == [[2, 49], [61, 99]]
    assert resolve.subtract([[1, 5]], []) == [[1, 5]]


def rule(users=((), ()), groups=((), ()), uids=()):
    return {"users": [list(users[0]), list(users[1])],
            "groups": [list(groups[0]), list(groups[1])], "uids": [list(r) for r in uids]}


def test_star_is_every_uid_but_root_and_exclusions_cut_it():
    uids, gids, unknown = resolve.rule_ranges(rule(users=(["*"], ["www-data"])), NSS)
    assert uids == [[1, 32], [34, resolve.MAX_ID]] and gids == [] and unknown == []


def test_groups_match_primary_and_supplementary_members_and_their_gid():
    uids, gids, _ = resolve.rule_ranges(rule(groups=(["staff"], [])), NSS)
    assert uids == [[1000, 1001]]                  # alice (supplementary), bob (primary)
    assert gids == [[50, 50]]                      # root, a listed member, is not fenced


def test_named_root_and_ranges_and_unknown_names():
    uids, _gids, unknown = resolve.rule_ranges(
        rule(users=(["root", "nosuch"], []), uids=[[2000, 2999]]), NSS)
    assert uids == [[0, 0], [2000, 2999]] and unknown == ["nosuch"]


def test_resolve_fills_profile_sets_and_guards():
    snap = compiled('scope = "always"\nusers = ["carol"]\ngroups = ["web"]\n'
                    'uids = ["2000-2999"]\nprofiles = ["web"]\n')
    resolved = resolve.resolve(snap["always"], NSS, now=5)
    singles, ranges = [[33, 33], [1002, 1002]], [[2000, 2999]]
    assert resolved == {"at": 5, "unknown": [], "sets": {
        "auid-web": ranges, "suid-web": singles, "agid-web": [[33, 33]],
        "any-auid": ranges, "any-suid": singles, "any-agid": [[33, 33]]}}
    assert resolve.counts(snap["always"], resolved) == {
        "web": {"uids": 1002, "gids": 1, "ranges": 4}}


def test_reasons_say_which_is_which():
    r = dict(rule(groups=(["staff"], []), uids=[[1000, 1999]]), profiles=["web"])
    assert resolve.reasons(r, NSS, "alice", 1000) == (
        ["uid 1000 in range 1000-1999", "member of group staff (supplementary)"],
        ["staff (gid 50)"])
    assert resolve.reasons(r, NSS, "bob", 1001)[0][1] == "member of group staff (primary)"
    assert resolve.reasons(r, NSS, "root", 0) == ([], ["staff (gid 50)"])


# ---- interval elements, as nft writes them --------------------------------------

def test_hash_static_sets_hold_single_ids_in_host_order():
    assert static_elements([[7, 7]], 4, False) == [((7).to_bytes(4, nf.HOST_ORDER), False)]
    assert static_elements([[5, 7]], 4, True) == interval_elements([[5, 7]], 4)
    with pytest.raises(ValueError):
        static_elements([[5, 7]], 4, False)


def test_interval_elements_have_a_zero_end_and_end_plus_one():
    assert interval_elements([[5, 7]], 4) == [
        (bytes(4), True), (bytes.fromhex("00000005"), False),
        (bytes.fromhex("00000008"), True)]
    assert interval_elements([[0, 7]], 4) == [(bytes(4), False),
                                              (bytes.fromhex("00000008"), True)]
    assert interval_elements([], 4) == []


def _attr(kind, payload, nested=False):
    length = 4 + len(payload)
    kind |= nf.NLA_F_NESTED if nested else 0
    return (length.to_bytes(2, nf.HOST_ORDER) + kind.to_bytes(2, nf.HOST_ORDER) + payload
            + bytes(-length % 4))


def test_interval_element_list_is_what_nft_sends():
    """`nft --debug=mnl add element inet t s '{ 5-7 }'` (nftables 1.0.6, a gid interval
    set): three list elements, the end ones with NFTA_SET_ELEM_FLAGS (be32 1) first."""
    def element(key, end):
        flags = _attr(nf.NFTA_SET_ELEM_FLAGS, (1).to_bytes(4, "big")) if end else b""
        return _attr(nf.NFTA_LIST_ELEM, flags + _attr(
            nf.NFTA_SET_ELEM_KEY, _attr(nf.NFTA_DATA_VALUE, bytes.fromhex(key)), True), True)
    nft_elements = _attr(nf.NFTA_SET_ELEM_LIST_ELEMENTS, element("00000000", True)
                         + element("00000005", False) + element("00000008", True), True)
    assert len(nft_elements) == 68                 # as nft's dump says: |00068|N-|00003|
    ours = interval_list_message(nf.NFT_MSG_NEWSETELEM, 0, 1, "t", "s",
                                 interval_elements([[5, 7]], 4))
    assert ours.endswith(nft_elements)


# ---- gc widens, never narrows (an NSS outage must not unfence anyone) -----------

ALWAYS_POLICY = ('scope = "always"\nusers = ["carol"]\ngroups = ["staff"]\n'
                 'uids = ["2000-2999"]\nprofiles = ["web"]\n')


def lesser_nss():
    """NSS with LDAP down: carol, bob and the group staff are gone."""
    return resolve.Nss([("root", 0, 0), ("alice", 1000, 1000)], {"root": (0, [])})


def test_gc_keeps_the_applied_ranges_when_nss_returns_less():
    always = compiled(ALWAYS_POLICY)["always"]
    applied = resolve.resolve(always, NSS, now=5)
    now = resolve.resolve(always, lesser_nss(), now=9)
    assert now["sets"]["auid-web"] == [[2000, 2999]]
    assert sorted(now["unknown"]) == ["carol", "staff"]
    widened, lost, narrower = resolve.widen(always, applied, now)
    assert widened["sets"] == applied["sets"]            # nobody unfenced
    assert sorted(lost) == ["carol", "staff"]           # resolved before, not now
    assert "auid-web" in narrower and "agid-web" in narrower
    assert widened["unknown"] == []        # still "resolved": lost again at the next gc


def test_gc_adds_what_nss_newly_resolves():
    always = compiled(ALWAYS_POLICY)["always"]
    applied = resolve.resolve(always, NSS, now=5)
    more = resolve.Nss(NSS.users + [("dave", 3500, 50)], NSS.groups)   # joins staff
    widened, lost, narrower = resolve.widen(always, applied, resolve.resolve(always, more))
    assert widened["sets"]["suid-web"] == [[3500, 3500]]
    assert widened["sets"]["auid-web"] == [[1000, 1002], [2000, 2999]]
    assert lost == [] and narrower == []


def test_an_excluded_account_created_inside_a_range_stays_fenced_until_reload():
    always = compiled('scope = "always"\nuids = ["6000-6100"]\nusers = ["!rvx"]\n'
                      'profiles = ["web"]\n')["always"]
    applied = resolve.resolve(always, NSS)
    assert applied["sets"]["auid-web"] == [[6000, 6100]] and applied["unknown"] == ["rvx"]
    later = resolve.Nss(NSS.users + [("rvx", 6050, 6050)], NSS.groups)
    now = resolve.resolve(always, later)
    assert now["sets"]["auid-web"] == [[6000, 6049], [6051, 6100]]   # what reload does
    widened, lost, _ = resolve.widen(always, applied, now)
    assert widened["sets"]["auid-web"] == [[6000, 6100]] and lost == []
    assert widened["unknown"] == []


def test_gc_widens_a_split_left_by_reload():
    always = compiled('scope = "always"\nuids = ["6000-6100"]\nusers = ["!rvx"]\n'
                      'groups = ["staff"]\nprofiles = ["web"]\n')["always"]
    nss = resolve.Nss(NSS.users + [("rvx", 6050, 6050)], NSS.groups)
    applied = resolve.resolve(always, nss)
    assert applied["sets"]["auid-web"] == [[1000, 1001], [6000, 6049], [6051, 6100]]
    more = resolve.Nss(nss.users + [("erin", 7000, 50)], nss.groups)
    widened, _, _ = resolve.widen(always, applied, resolve.resolve(always, more))
    assert widened["sets"]["auid-web"] == [[1000, 1001], [6000, 6049], [6051, 6100]]
    assert widened["sets"]["suid-web"] == [[7000, 7000]]


def test_system_nss_looks_names_up_without_enumeration(monkeypatch):
    """SSSD's default enumerate = false: getpwall/getgrall list local entries only,
    getpwnam/getgrnam reach LDAP."""
    import grp
    import pwd
    monkeypatch.setattr(pwd, "getpwall", lambda: [])
    monkeypatch.setattr(grp, "getgrall", lambda: [])
    nss = resolve.Nss.from_system()
    assert nss.uid("root") == 0 and nss.uid("nfnosuchuser-x") is None
    assert nss.group("root")[0] == 0 and nss.group("nfnosuchgroup-x") is None


# ---- gid 0 at always scope ------------------------------------------------------

def test_a_group_with_gid_0_is_refused_at_always_scope_and_says_what_to_write():
    policy = parse('scope = "always"\ngroups = ["root"]\nprofiles = ["web"]\n')
    ((path, _line, text),) = resolve.root_group_problems(policy.rules, NSS)
    assert path == "/etc/netfence/a.toml"
    assert "group 'root' has gid 0" in text and "root's daemons" in text
    assert 'users = ["root"]' in text
    policy = parse('scope = "always"\nusers = ["root"]\ngroups = ["!root", "staff"]\n'
                   'profiles = ["web"]\n')
    assert resolve.root_group_problems(policy.rules, NSS) == []
    policy = parse('scope = "user"\ngroups = ["root"]\nprofiles = ["web"]\n')
    assert resolve.root_group_problems(policy.rules, NSS) == []   # a login's groups


def test_gid_0_never_reaches_the_gid_sets():
    """A group renamed to gid 0 after the reload: gc does not fence root's daemons."""
    always = compiled('scope = "always"\ngroups = ["web"]\nprofiles = ["web"]\n')["always"]
    nss = resolve.Nss(NSS.users, dict(NSS.groups, web=(0, [])))
    assert resolve.resolve(always, nss)["sets"]["agid-web"] == []


# ---- static sets are replaced whole, in one transaction -------------------------

STATIC_TABLE = ir.TableDef.from_json(compiled(
    'scope = "always"\nuids = ["6000-6100"]\nprofiles = ["web"]\n')["table"])


def replacement(old, new):
    """What gc sends when the kernel holds `old` ranges in auid-web and the
    resolution says `new`: [(operation, set, elements)]."""
    from netfence import drift
    from netfence.nftnl_batch import Batch, add_static_replacement
    have = {name: {(k.hex(), e) for k, e in items}
            for name, items in drift.static_wanted(STATIC_TABLE, {"auid-web": old}).items()}
    wanted = drift.static_wanted(STATIC_TABLE, {"auid-web": new})
    missing = {n: v for n, v in wanted.items() if {(k.hex(), e) for k, e in v} - have[n]}
    extra = {n: v for n, v in have.items() if v - {(k.hex(), e) for k, e in wanted[n]}}
    contents = drift.static_replacements(wanted, missing, extra)
    batch = Batch(iter(range(1, 100)).__next__)
    add_static_replacement(batch, "netfence", contents)
    return contents, [op for op, _data, _seq in batch.finish()]


@pytest.mark.parametrize("old,new", [
    ([[6000, 6100]], [[6000, 6049], [6051, 6100]]),          # split
    ([[6000, 6049], [6051, 6100]], [[6000, 6100]]),          # merge
    ([[6000, 6100]], [[6000, 6200]]),                        # extension
    ([[6000, 6100]], [[6000, 6010]]),                        # shrink
    ([[6000, 6100]], []),                                    # emptied
])
def test_a_changed_static_set_is_flushed_and_filled_in_one_transaction(old, new):
    contents, operations = replacement(old, new)
    assert contents == {"auid-web": interval_elements(new, 4)}     # the whole content
    adds = [f"add {len(interval_elements(new, 4))} range element(s) of set auid-web"]
    assert operations == (["begin transaction", "flush set auid-web"]
                          + (adds if new else []) + ["end transaction"])


def test_an_unchanged_static_set_is_left_alone():
    assert replacement([[6000, 6100]], [[6000, 6100]]) == (
        {}, ["begin transaction", "end transaction"])


def test_the_flush_message_is_delsetelem_without_elements():
    from netfence.nfencode import set_flush_message
    data = set_flush_message(nf.NLM_F_REQUEST, 7, "t", "s")
    assert int.from_bytes(data[4:6], nf.HOST_ORDER) == (
        nf.NFNL_SUBSYS_NFTABLES << 8 | nf.NFT_MSG_DELSETELEM)
    assert data.endswith(_attr(nf.NFTA_SET_ELEM_LIST_TABLE, b"t\0")
                         + _attr(nf.NFTA_SET_ELEM_LIST_SET, b"s\0"))


def test_gc_logs_names_nss_lost_and_exits_1_without_removing(monkeypatch):
    from netfence import drift, snapshot
    snap = compiled(ALWAYS_POLICY)
    snap["resolved"] = resolve.resolve(snap["always"], NSS, now=5)
    applied_sets = dict(snap["resolved"]["sets"])
    logged, written = [], []
    monkeypatch.setattr(resolve.Nss, "from_system", staticmethod(lesser_nss))
    monkeypatch.setattr(drift, "log_event", logged.append)
    monkeypatch.setattr(snapshot, "replace_compiled", lambda _dir, snap: written.append(snap))
    for _ in range(2):          # every gc says so again, until reload
        changed, lost, _narrower = drift._resolve_again(snap, "/nonexistent")
        assert changed == {} and sorted(lost) == ["carol", "staff"]
        assert snap["resolved"]["sets"] == applied_sets
    assert logged == 2 * ["event=nss-unresolved name=carol",
                                  "event=nss-unresolved name=staff"]
    repair = drift.Repair(drift.Drift(), unresolved=lost)
    assert repair.failed
    assert "gc: always rules: event=nss-unresolved name=carol" in str(repair)
    assert not drift.Repair(drift.Drift()).failed


def test_an_exclusion_nss_no_longer_resolves_fences_its_uid_until_reload():
    always = compiled('scope = "always"\nusers = ["*", "!carol"]\nprofiles = ["web"]\n')["always"]
    applied = resolve.resolve(always, NSS)
    assert applied["sets"]["auid-web"] == [[1, 1001], [1003, resolve.MAX_ID]]
    widened, lost, _ = resolve.widen(always, applied, resolve.resolve(always, lesser_nss()))
    assert widened["sets"]["auid-web"] == [[1, resolve.MAX_ID]] and lost == ["carol"]


def test_a_groups_member_nss_cannot_find_is_named():
    """A local group listing an LDAP user while LDAP is down: reload says which member
    it skipped (gc then reports it lost, as any name)."""
    nss = resolve.Nss(NSS.users, dict(NSS.groups, staff=(50, ["alice", "ghost"])))
    uids, _gids, unknown = resolve.rule_ranges(rule(groups=(["staff"], [])), nss)
    assert uids == [[1000, 1001]] and unknown == ["staff:ghost"]


def test_names_lost_during_an_outage_are_kept_for_status_until_nss_knows_them():
    always = compiled(ALWAYS_POLICY)["always"]
    applied = resolve.resolve(always, NSS, now=5)
    outage = resolve.resolve(always, lesser_nss(), now=9)
    first, lost, _ = resolve.widen(always, applied, outage)
    assert sorted(first["lost"]) == sorted(lost) == ["carol", "staff"]
    second, lost_again, _ = resolve.widen(always, first, outage)
    assert sorted(second["lost"]) == ["carol", "staff"] and sorted(lost_again) == \
        ["carol", "staff"]
    back, lost_now, _ = resolve.widen(always, second, resolve.resolve(always, NSS, now=11))
    assert back["lost"] == [] and lost_now == [] and back["sets"] == applied["sets"]
