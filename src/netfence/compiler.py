"""Policy → compiled snapshot: the nftables table and the login-time lookup part.

Pure: no files, no kernel. The table follows docs/architecture.md: per profile P the
sets uid-P, ucg-P and scg-P, the chains out-P / in-P (and deny-P / reject-P when the
profile logs, counts or monitors: see _denial_chains), and two static base chains that
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
from .model import LOOPBACK, Settings, profile_accounts, profile_logs, profile_mode
from .nfconst import (HOST_ORDER, IP_CT_NEW_STATE_BIT, NETWORK_ORDER, NFPROTO_IPV4,
                      NFPROTO_IPV6)
from .setkinds import (ACCT_IN, ACCT_OUT, AGID, AUID, GRANT_KINDS, LOG_PREFIX, NO_CGROUP,
                       RUID, SCG, SESSION_LEVEL, STATIC_KINDS, SUID, TSCG, TUCG, TUID, UCG,
                       UID, USER_LEVEL, WINDOW_KINDS, denied_set)

# Register values are compared as the kernel holds them: meta nfproto is one byte,
# meta oif/iif and ct state are host-order u32 (nfconst), packet fields network order.
NFPROTO = {4: bytes([NFPROTO_IPV4]).hex(), 6: bytes([NFPROTO_IPV6]).hex()}
L4PROTO = {"tcp": "06", "udp": "11", "icmp": "01", "icmpv6": "3a"}    # IPPROTO_*
ADDR_OFFSET = {("egress", 4): 16, ("egress", 6): 24,     # destination address
               ("ingress", 4): 12, ("ingress", 6): 8}    # source address
LOOPBACK_IFINDEX = (1).to_bytes(4, HOST_ORDER).hex()     # lo is ifindex 1 in every netns
CT_STATE_NEW = IP_CT_NEW_STATE_BIT.to_bytes(4, HOST_ORDER).hex()
NO_BITS = bytes(4).hex()
CT_NEW = (("ct", "state"), ("bitwise", CT_STATE_NEW, NO_BITS), ("cmp", "neq", NO_BITS))
LOG_SNAPLEN = 128        # bytes of each denied packet copied to nflog: its headers
REG_SAVED_MARK = 2       # emit-P keeps the packet's mark here while it lends it out


def has_egress(profile):
    return bool(profile.egress) or profile.egress_default != "allow"


def has_ingress(profile):
    return bool(profile.ingress) or profile.ingress_default != "allow"


def compile_policy(policy):
    """Return the snapshot dict (JSON-serialisable) for a parsed model.Policy."""
    always = build_always(policy)
    windowed = windowed_profiles(policy)
    table = build_table(policy.profiles.values(), policy.settings,
                        always["profiles"], windowed)
    login = build_login(policy, windowed)
    body = {"format": formats.SNAPSHOT, "files": list(policy.files),
            "settings": asdict(policy.settings), "table": table.to_json(), "login": login,
            "always": always}
    policy_id = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    login["policy_id"] = policy_id
    body["policy_id"] = policy_id
    # Derived from the rest, and bytes: added after hashing.
    login["templates"] = nfencode.build_templates(login)
    return body


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
            more_chains, more_rules = _denial_chains(profile, settings)
            chains += more_chains
            rules += more_rules
        for direction, present in (("egress", has_egress(profile)),
                                   ("ingress", has_ingress(profile))):
            if present:
                chain = _profile_chain(profile.name, direction)
                chains.append(ir.ChainDef(chain))
                rules += _profile_rules(profile, direction, chain, settings)
    dispatch_chains, dispatch_rules = _dispatch(profiles, always, windowed)
    chains += dispatch_chains
    rules += _accounting_rules(bool(counted)) + dispatch_rules
    return ir.TableDef(sets=tuple(sets), chains=tuple(chains), rules=tuple(rules))


def denies_through_chains(profile, settings):
    """Whether P's deny and reject verdicts go to its deny-P / reject-P chains (which
    log, count and, in monitor mode, let the packet through) instead of ending in
    place."""
    return (profile_logs(profile, settings) or profile_accounts(profile, settings)
            or profile_mode(profile, settings) == "monitor")


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


def _accounting_rules(counted):
    """The first rules of the base chains when some profile counts: every packet's
    socket cgroup, at the session level then the user level, looked up in acct-out
    (egress) or acct-in (ingress, every packet, not only new flows); the lookup
    updates the element's counter. No verdict: the packet goes on to the dispatch.
    A socket-less packet, or one whose cgroup is not that deep, ends the rule there."""
    if not counted:
        return []
    return [ir.RuleDef(base, (("socket", "cgroupv2", level), ("lookup", name)))
            for base, name in (("egress", ACCT_OUT), ("ingress", ACCT_IN))
            for level in (SESSION_LEVEL, USER_LEVEL)]


def _denial_chains(profile, settings):
    """deny-P and reject-P, where P's deny and reject verdicts go (goto):
      1. jump log-P (when P logs): at most log_rate lines a second per profile, then
         emit-P sends the packet's headers to nflog group log_group;
      2. the denial counted for the socket's session and user cgroups (when P counts);
      3. the verdict: drop, or reject (a TCP reset for TCP, else ICMP port
         unreachable); in monitor mode `return` instead: the packet goes on to the
         next profile as if P had allowed it (what it would have denied is in the log
         and the counters).
    In monitor mode 1 and 2 only see a flow's first packet (ct state new): the flow
    goes on, and every later packet of it would match the same rule; logging each
    (measured: a short TCP exchange, 7 lines) would spend the profile's log rate on
    one connection and hide the others, and count packets where enforce mode would
    have denied one connection."""
    name = profile.name
    chains = [ir.ChainDef(f"deny-{name}"), ir.ChainDef(f"reject-{name}")]
    rules, head = [], []
    logs = profile_logs(profile, settings)
    if logs:
        chains += [ir.ChainDef(f"log-{name}"), ir.ChainDef(f"emit-{name}")]
        rate = settings.log_rate
        rules += [ir.RuleDef(f"log-{name}", (("limit", rate, 1, 2 * rate),
                                             ("verdict", "goto", f"emit-{name}")))]
        rules += _emit_rules(name, settings.log_group)
        head.append((("verdict", "jump", f"log-{name}"),))
    if profile_accounts(profile, settings):
        head += [(("socket", "cgroupv2", level), ("lookup", denied_set(name)))
                 for level in (SESSION_LEVEL, USER_LEVEL)]
    if profile_mode(profile, settings) == "monitor":
        head = [CT_NEW + exprs for exprs in head]
        ends = {"deny": [(("verdict", "return"),)], "reject": [(("verdict", "return"),)]}
    else:
        ends = {"deny": [(("verdict", "drop"),)],
                "reject": [(("meta", "l4proto"), ("cmp", "eq", L4PROTO["tcp"]),
                            ("reject", "tcp-reset")),
                           (("reject", "icmpx-port-unreachable"),)]}
    for verdict in ("deny", "reject"):
        rules += [ir.RuleDef(f"{verdict}-{name}", exprs) for exprs in head + ends[verdict]]
    return chains, rules


def _emit_rules(name, group):
    """emit-P: the nflog copy. The packet carries its socket's session cgroup id (its
    low 32 bits: a mark is 32 bits) in its mark while the copy is taken, which is
    how `netfence watch` names the session; the mark is saved in a register first and
    put back by the same rule, so nothing after it sees a change. Without a socket (or
    with one whose cgroup is not that deep) the first rule ends at the socket
    expression and the second logs with the prefix "... nocg": the mark then is not a
    cgroup id. The first rule ends with `return` (back to deny-P / reject-P): a rule
    without a verdict goes on to the next, which would log every denial twice
    (measured on 6.18)."""
    prefix = f"{LOG_PREFIX} {name}"
    return [
        ir.RuleDef(f"emit-{name}", (("meta", "mark", REG_SAVED_MARK),
                                    ("socket", "cgroupv2", SESSION_LEVEL),
                                    ("meta_set", "mark", 1),
                                    ("nflog", prefix, group, LOG_SNAPLEN),
                                    ("meta_set", "mark", REG_SAVED_MARK),
                                    ("verdict", "return"))),
        ir.RuleDef(f"emit-{name}", (("nflog", f"{prefix} {NO_CGROUP}", group, LOG_SNAPLEN),)),
    ]


def _profile_rules(profile, direction, chain, settings):
    net_rules = profile.egress if direction == "egress" else profile.ingress
    default = profile.egress_default if direction == "egress" else profile.ingress_default
    rules = [ir.RuleDef(chain, _key_load(kind) + (("lookup", kind.set_name(profile.name)),
                                                  ("verdict", "return")),
                        f"{profile.name} {direction} grant")
             for kind in GRANT_KINDS if direction in kind.directions]
    for number, net_rule in enumerate(net_rules, 1):
        comment = f"{profile.name} {direction} rule {number}"
        verdict = _verdict(profile, net_rule.action, net_rule.protos, settings)
        for matches in expand_matches(net_rule, direction):
            rules.append(ir.RuleDef(chain, matches + (("counter",), verdict), comment))
    verdict = _verdict(profile, default, (), settings)
    rules.append(ir.RuleDef(chain, (("counter",), verdict),
                            f"{profile.name} {direction} default"))
    return rules


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


def expand_matches(net_rule, direction):
    """Every (peer × protocol × port) combination of a rule, as match expressions."""
    peers = list(net_rule.peers) or [None]
    protos = list(net_rule.protos) or [None]
    ports = list(net_rule.ports) or [None]
    combos = []
    for peer in peers:
        family = None if peer in (None, LOOPBACK) else ipaddress.ip_network(peer).version
        for proto in protos:
            for l4 in _l4_for(proto, family):
                for port in ports:
                    combos.append(_peer_match(peer, family, direction)
                                  + _proto_match(l4) + _port_match(port))
    return combos


def _l4_for(proto, family):
    if proto != "icmp":
        return [proto]
    return {4: ["icmp"], 6: ["icmpv6"]}.get(family, ["icmp", "icmpv6"])


def _peer_match(peer, family, direction):
    if peer is None:
        return ()
    if peer == LOOPBACK:
        key = "oif" if direction == "egress" else "iif"
        return (("meta", key), ("cmp", "eq", LOOPBACK_IFINDEX))
    net = ipaddress.ip_network(peer)
    length = 4 if family == 4 else 16
    exprs = (("meta", "nfproto"), ("cmp", "eq", NFPROTO[family]),
             ("payload", "network", ADDR_OFFSET[(direction, family)], length))
    if net.prefixlen != net.max_prefixlen:
        exprs += (("bitwise", net.netmask.packed.hex(), "00" * length),)
    return exprs + (("cmp", "eq", net.network_address.packed.hex()),)


def _proto_match(l4):
    if l4 is None:
        return ()
    return (("meta", "l4proto"), ("cmp", "eq", L4PROTO[l4]))


def _port_match(port):
    if port is None:
        return ()
    low, high = port
    load = ("payload", "transport", 2, 2)          # destination port
    low, high = (number.to_bytes(2, NETWORK_ORDER).hex() for number in (low, high))
    if low == high:
        return (load, ("cmp", "eq", low))
    return (load, ("range", "eq", low, high))


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
