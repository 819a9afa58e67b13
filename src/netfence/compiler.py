"""Policy → compiled snapshot: the nftables table and the login-time lookup part.

Pure: no files, no kernel. The table follows docs/architecture.md: per profile P the
sets uid-P, ucg-P and scg-P, the chains out-P / in-P (and deny-P / reject-P when the
profile logs, counts or monitors: see compiler_denials), and two static base chains that
dispatch on set membership. Profiles
used by always rules also get the sets auid-P, suid-P and agid-P (setkinds.STATIC_KINDS),
tested first by the egress chain; their elements are resolved at reload (resolve.py),
so the always part of the snapshot lists the rules to resolve, not uids.
"""

import hashlib
import ipaddress
import json
from dataclasses import asdict

from . import formats, ir, nfencode, setkinds
from .snapshot import json_text
from .compiler_denials import CT_NEW, accounting_rules, denial_chains, denies_through_chains
from .compiler_lookups import default_chain, direction_lookups, rule_chain
from .model import Settings, profile_accounts, profile_mode
from .setkinds import (ACCT_IN, ACCT_OUT, AGID, AUID, GRANT_KINDS, RUID, SCG, STATIC_KINDS,
                       SUID, TSCG, TUCG, TUID, UCG, UID, WINDOW_KINDS, denied_set)



def has_egress(profile):
    return bool(profile.egress) or profile.egress_default != "allow"


def has_ingress(profile):
    return bool(profile.ingress) or profile.ingress_default != "allow"


def compile_policy(policy):
    """Return the snapshot dict (JSON-serialisable) for a parsed model.Policy."""
    return compile_snapshot(policy).snapshot


class Compiled:
    """compile_snapshot's result: the snapshot dict; its table as the ir.TableDef it
    was built from (what reload sends, instead of one rebuilt from the JSON); and that
    table's JSON text (snapshot.json_text: compiled.json reuses it)."""

    def __init__(self, snapshot, table, table_text):
        self.snapshot, self.table, self.table_text = snapshot, table, table_text


def compile_snapshot(policy):
    """The snapshot of a parsed model.Policy, as Compiled."""
    always = build_always(policy)
    windowed = windowed_profiles(policy)
    table = build_table(policy.profiles.values(), policy.settings,
                        always["profiles"], windowed)
    login = build_login(policy, windowed)
    table_json = table.to_json()
    # to_json's keys come sorted: the text of sort_keys=True, without the sorting
    table_text = json.dumps(table_json, check_circular=False)
    body = {"format": formats.SNAPSHOT, "files": list(policy.files),
            "settings": asdict(policy.settings), "table": table_json, "login": login,
            "always": always, "locations": rule_locations(policy)}
    policy_id = hashlib.sha256(
        json_text(body, {"table": table_text}).encode()).hexdigest()[:16]
    login["policy_id"] = policy_id
    body["policy_id"] = policy_id
    # Derived from the rest, and bytes: added after hashing.
    login["templates"] = nfencode.build_templates(login)
    return Compiled(body, table, table_text)


def rule_locations(policy):
    """{profile: {"egress": ["file:line" of rule 1, ...], "ingress": [...]}}: where each
    numbered rule ("P egress rule N" in the table's comments) is written, so that
    `netfence log` names the rule that denied a packet by file:line."""
    return {name: {"egress": [str(r.where) for r in profile.egress],
                   "ingress": [str(r.where) for r in profile.ingress]}
            for name, profile in policy.profiles.items()}


# ---- the table -------------------------------------------------------------------

def windowed_profiles(policy):
    """The names of the profiles a login rule with `time` names (they have the
    time-window sets), in policy order."""
    names = []
    for rule in policy.rules:
        if rule.scope != "always" and rule.time:
            names += [p for p in rule.profiles if p not in names]
    return names


def timed_kinds_of(profile, windowed=()):
    """The timed set kinds a profile has: grants always; a restriction when it
    restricts egress; the window kinds, like the login kinds, each when the profile
    restricts one of its directions, when a rule with `time` names it."""
    kinds = list(GRANT_KINDS)
    if has_egress(profile):
        kinds.append(RUID)
    if profile.name in windowed:
        present = {"egress": has_egress(profile), "ingress": has_ingress(profile)}
        kinds += [k for k in WINDOW_KINDS if any(present[d] for d in k.directions)]
    return kinds


def _set_def(kind, name):
    return ir.SetDef(name, kind.key_type, interval=kind.interval, timeout=kind.timeout)


def _guard_sets(profiles, always, windowed):
    """The guards: the union of the profiles' sets, tested first by the base chains.
    A timed kind's guard exists when one of its profile sets does."""
    sets = [_set_def(kind, kind.guard) for kind in setkinds.KINDS]
    if always:
        sets += [_set_def(kind, kind.guard) for kind in STATIC_KINDS]
    timed = {k for p in profiles for k in timed_kinds_of(p, windowed)}
    sets += [_set_def(kind, kind.guard) for kind in WINDOW_KINDS + (RUID,)
             if kind in timed]
    return sets


def build_table(profiles, settings=None, always=(), windowed=()):
    """settings: model.Settings (mode, account and the log's rate and group);
    always: the names of the profiles used at always scope (static sets);
    windowed: those named by a login rule with `time` (time-window sets)."""
    profiles = list(profiles)
    settings = settings or Settings()
    sets = _guard_sets(profiles, always, windowed)
    counted = [p for p in profiles if profile_accounts(p, settings)]
    if counted:
        sets += [ir.SetDef(name, "cgroupsv2", counter=True) for name in (ACCT_OUT, ACCT_IN)]
    chains, rules = [], []
    for profile in profiles:
        sets += [_set_def(kind, kind.set_name(profile.name)) for kind in setkinds.KINDS]
        if profile.name in always:
            sets += [_set_def(kind, kind.set_name(profile.name)) for kind in STATIC_KINDS]
        sets += [_set_def(kind, kind.set_name(profile.name))
                 for kind in timed_kinds_of(profile, windowed)]
        if profile in counted:
            sets.append(ir.SetDef(denied_set(profile.name), "cgroupsv2", counter=True))
        if denies_through_chains(profile, settings):
            more_chains, more_rules = denial_chains(profile, settings)
            chains += more_chains
            rules += more_rules
        for direction, present in (("egress", has_egress(profile)),
                                   ("ingress", has_ingress(profile))):
            if present:
                more_sets, more_chains, more_rules = _profile_direction(profile, direction,
                                                                        settings)
                sets += more_sets
                chains += more_chains
                rules += more_rules
    dispatch_chains, dispatch_rules = _dispatch(profiles, always, windowed)
    chains += dispatch_chains
    rules += accounting_rules(bool(counted)) + dispatch_rules
    return ir.TableDef(sets=tuple(sets), chains=tuple(chains), rules=tuple(rules))


def _profile_chain(name, direction):
    return ("out-" if direction == "egress" else "in-") + name


def _dispatch(profiles, always=(), windowed=()):
    """Base chains test the guard sets; only keys found there go on to the per-profile
    tests. Per packet: two lookups for traffic netfence does not restrict, whatever the
    number of profiles or sessions (five on egress with always rules: the guards of
    uid ranges and gids cost a tree walk of depth log2(ranges), that of single uids
    one hash lookup; never one test per uid). Timed guards add one hash lookup each:
    any-ruid on egress, and, when a rule has `time`, any-tuid/any-tscg on egress and
    any-tucg/any-tscg on new inbound flows."""
    egress = [p for p in profiles if has_egress(p)]
    ingress = [p for p in profiles if has_ingress(p)]
    static = [p for p in egress if p.name in always]
    timed_egress = [p for p in egress if p.name in windowed]
    timed_ingress = [p for p in ingress if p.name in windowed]
    new = CT_NEW
    plan = [  # (base chain, extra tests, set kind, sub-chain, profiles, direction)
        ("egress", (), AUID, "egress-always-uid", static, "egress"),
        ("egress", (), SUID, "egress-always-single", static, "egress"),
        ("egress", (), AGID, "egress-always-gid", static, "egress"),
        ("egress", (), RUID, "egress-restrict", egress, "egress"),
        ("egress", (), UID, "egress-uid", egress, "egress"),
        ("egress", (), SCG, "egress-session", egress, "egress"),
        ("egress", (), TUID, "egress-tuid", timed_egress, "egress"),
        ("egress", (), TSCG, "egress-tsession", timed_egress, "egress"),
        ("ingress", new, UCG, "ingress-user", ingress, "ingress"),
        ("ingress", new, SCG, "ingress-session", ingress, "ingress"),
        ("ingress", new, TUCG, "ingress-tuser", timed_ingress, "ingress"),
        ("ingress", new, TSCG, "ingress-tsession", timed_ingress, "ingress"),
    ]
    chains, rules = [], []
    for base, tests, kind, sub, members, direction in plan:
        if not members:
            continue
        key = _key_load(kind)
        chains.append(ir.ChainDef(sub))
        rules.append(ir.RuleDef(base, tests + key + (("lookup", kind.guard),
                                                     ("verdict", "jump", sub))))
        for profile in members:           # the key alone: ct state was tested above
            rules.append(ir.RuleDef(sub, key + (
                ("lookup", kind.set_name(profile.name)),
                ("verdict", "jump", _profile_chain(profile.name, direction)))))
    chains += [ir.ChainDef("egress", hook="output"), ir.ChainDef("ingress", hook="input")]
    return chains, rules


def _key_load(kind):
    """The expressions that load a set kind's key: the socket's uid, or its cgroup
    at the kind's level; for a static (interval) kind the socket's uid or gid turned
    big-endian, as its keys are (nft: byteorder reg 1 = hton(reg 1, 4, 4))."""
    if kind.interval:
        return (("meta", kind.meta_key), ("byteorder", "hton", kind.key_len, kind.key_len))
    if kind.static:
        return (("meta", kind.meta_key),)
    if kind.level is None:
        return (("meta", "skuid"),)
    return (("socket", "cgroupv2", kind.level),)


def _profile_direction(profile, direction, settings):
    """(sets, chains, rules) of out-P / in-P: the rule chains out-P.N (one counted
    verdict each, "P egress rule N"), the verdict maps, the profile chain (lookups, then
    the default: compiler_lookups), and the denial chains out-P.deny / .reject / .reset
    where its deny and reject verdicts go, each asking the grants first."""
    chain = _profile_chain(profile.name, direction)
    net_rules = profile.egress if direction == "egress" else profile.ingress
    default = profile.egress_default if direction == "egress" else profile.ingress_default
    denials = {}                        # denial chain -> its final verdict
    chains, rules = [], []
    for number, net_rule in enumerate(net_rules, 1):
        target = rule_chain(chain, number)
        chains.append(ir.ChainDef(target))
        verdict = _granted(chain, profile, net_rule.action, net_rule.protos, settings,
                           denials)
        rules.append(ir.RuleDef(target, (("counter",), verdict),
                                f"{profile.name} {direction} rule {number}"))
    # the default in a chain of its own: the fallback guard goes to it too
    default_target = default_chain(chain)
    chains += [ir.ChainDef(default_target), ir.ChainDef(chain)]
    sets, lookups = direction_lookups(profile, direction, net_rules, chain)
    rules += lookups
    rules.append(ir.RuleDef(chain, (("verdict", "goto", default_target),)))
    verdict = _granted(chain, profile, default, (), settings, denials)
    rules.append(ir.RuleDef(default_target, (("counter",), verdict),
                            f"{profile.name} {direction} default"))
    for target, final in sorted(denials.items()):
        chains.insert(0, ir.ChainDef(target))
        rules += _grant_rules(profile, direction, target) + [ir.RuleDef(target, (final,))]
    return sets, chains, rules


def _granted(chain, profile, action, protos, settings, denials):
    """The verdict of a rule chain or the default chain: `return` for allow; for a deny
    or reject a `goto` to the profile direction's denial chain of that kind (out-P.deny,
    out-P.reset for a TCP-only reject that ends in place, else out-P.reject), which
    tests P's grants and then ends with _verdict's verdict (recorded in `denials`).
    A grant only changes what P denies, so only a packet P denies pays its lookups (they
    were the first rules of out-P, looked up for every restricted packet: 2-10% of a
    restricted connection's rate in alternated runs)."""
    verdict = _verdict(profile, action, protos, settings)
    if action == "allow":
        return verdict
    kind = "reset" if verdict == ("reject", "tcp-reset") else action
    denials[f"{chain}.{kind}"] = verdict
    return ("verdict", "goto", f"{chain}.{kind}")


def _grant_rules(profile, direction, chain):
    return [ir.RuleDef(chain, _key_load(kind) + (("lookup", kind.set_name(profile.name)),
                                                 ("verdict", "return")),
                       f"{profile.name} {direction} grant")
            for kind in GRANT_KINDS if direction in kind.directions]


def _verdict(profile, action, protos, settings):
    if action == "allow":
        return ("verdict", "return")     # not accept: later profiles must still be asked
    if denies_through_chains(profile, settings):
        return ("verdict", "goto", f"{'deny' if action == 'deny' else 'reject'}-{profile.name}")
    if action == "deny":
        return ("verdict", "drop")
    if tuple(protos) == ("tcp",):
        return ("reject", "tcp-reset")
    return ("reject", "icmpx-port-unreachable")


# ---- the login part --------------------------------------------------------------

def build_login(policy, windowed=()):
    """The login part. A profile named by a rule with `time` also names its
    time-window sets (tuid_set, ...: only those the table has), and "guards" the
    window kinds' guards that exist: the hook adds only to sets that exist."""
    profiles, guards = {}, setkinds.guards()
    counted = False
    for profile in policy.profiles.values():
        kinds = [k for k in timed_kinds_of(profile, windowed) if k in WINDOW_KINDS]
        window = {k.field: k.set_name(profile.name) for k in kinds}
        guards.update({k.field: k.guard for k in kinds})
        # "denied_set": the login's session and user cgroup ids go in it, and in the
        # login part's "account" sets (setkinds.ACCT_FIELDS), when the profile counts
        accounts = profile_accounts(profile, policy.settings)
        counted = counted or accounts
        profiles[profile.name] = {"egress": has_egress(profile),
                                  "ingress": has_ingress(profile),
                                  "mode": profile_mode(profile, policy.settings),
                                  **setkinds.profile_sets(profile.name), **window}
        if accounts:
            profiles[profile.name]["denied_set"] = denied_set(profile.name)
    # Always rules are resolved at reload, not matched at login.
    rules = [_login_rule(rule) for rule in policy.rules if rule.scope != "always"]
    return {"format": formats.LOGIN, "policy_id": "", "settings": asdict(policy.settings),
            "profiles": profiles, "guards": guards, "rules": rules,
            "account": dict(setkinds.ACCT_FIELDS) if counted else {}}


def build_always(policy):
    """The always rules as resolve.py reads them, and the static sets of each profile
    they use (profiles restricting egress only: the others would have nothing to do)."""
    rules = [{"index": rule.index, "where": str(rule.where), "profiles": list(rule.profiles),
              "users": _pair(rule.users), "groups": _pair(rule.groups),
              "uids": [list(r) for r in rule.uids]}
             for rule in policy.rules if rule.scope == "always"]
    names = []
    for rule in rules:
        names += [p for p in rule["profiles"]
                  if p not in names and has_egress(policy.profiles[p])]
    profiles = {name: {kind.name: kind.set_name(name) for kind in STATIC_KINDS}
                for name in names}
    guards = {kind.name: kind.guard for kind in STATIC_KINDS} if names else {}
    return {"rules": rules, "profiles": profiles, "guards": guards}


def _login_rule(rule):
    return {
        "index": rule.index, "where": str(rule.where), "scope": rule.scope,
        "profiles": list(rule.profiles),
        "users": _pair(rule.users), "groups": _pair(rule.groups),
        "services": _pair(rule.services), "ttys": _pair(rule.ttys),
        "rhosts": [[_rhost_item(i) for i in rule.rhosts.include],
                   [_rhost_item(i) for i in rule.rhosts.exclude]],
        "time": [[w.days, w.start, w.end] for w in rule.time],
    }


def _pair(patterns):
    return [list(patterns.include), list(patterns.exclude)]


def _rhost_item(text):
    if text == "local":
        return ["local"]
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    else:
        return ["net", net.version, int(net.network_address), net.prefixlen]
    if text.startswith("."):
        return ["suffix", text.lower()]
    return ["name", text.lower()]
