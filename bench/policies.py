"""The benchmark's policies, as data, and their three renderings: netfence TOML, the
blog post's `iptables -A ... -m owner --uid-owner` commands, and a blog-style linear nft
chain.

The login benchmark's user gets three profiles with 20 net rules (25 nftables rules
once protocols, ports and peers are expanded, 28 with the defaults):
  - no-servers (user scope, ingress): 3 rules, default deny;
  - no-mail    (user scope, egress):  7 rules, default allow;
  - web-only   (session scope, egress, logged): 10 rules, default reject. A TCP
    connection to 127.0.0.1:8080 passes at its 6th rule ("after a few rules"); the
    per-packet benchmark uses exactly that connection.
"""

import ipaddress

# (action, protos, ports, peers): one netfence net rule
PROFILES = {
    "no-servers": {
        "ingress": [
            ("allow", (), (), ("loopback",)),
            ("allow", ("tcp",), (22,), ("10.0.0.0/8",)),
            ("allow", ("tcp",), ("8000-8099",), ("192.168.0.0/16", "fd00::/8")),
        ],
        "ingress_default": "deny",
    },
    "no-mail": {
        "egress": [
            ("reject", ("tcp",), (25,), ()),
            ("reject", ("tcp",), (465, 587), ()),
            ("deny", ("udp",), (137, 138), ()),
            ("deny", ("tcp",), (6667,), ()),
            ("deny", (), (), ("169.254.169.254",)),
            ("deny", (), (), ("fd00:ec2::254",)),
            ("reject", ("tcp",), (3389,), ("10.0.0.0/8",)),
        ],
    },
    "web-only": {
        "egress": [
            ("allow", ("udp",), (53,), ("10.0.0.53",)),
            ("allow", ("udp",), (53,), ("2001:db8::53",)),
            ("allow", ("tcp",), (443,), ("203.0.113.0/24",)),
            ("allow", ("tcp",), (80, 443), ("198.51.100.0/24",)),
            ("allow", ("icmp",), (), ()),
            ("allow", ("tcp",), ("8000-8099",), ()),
            ("allow", ("tcp",), (22,), ("10.0.0.0/8",)),
            ("allow", ("udp",), (), ("loopback",)),
            ("deny", ("tcp",), (25,), ()),
            ("allow", ("tcp",), (), ("loopback",)),
        ],
        "egress_default": "reject",
        "log": True,
    },
}
USER_PROFILES = ("no-servers", "no-mail")
SESSION_PROFILES = ("web-only",)
ALLOWED_PORT = 8080            # web-only rule 6
SERVICE = "sshd"
RHOST = "203.0.113.7"


# Section 3's netfence200 variant: a session profile of BIG_RULES net rules (one
# nftables rule each in the linear compile) where a TCP connection to 127.0.0.1:8080
# matches only the last one: 199 rules that miss it (other ports, other v4 and v6
# networks, udp and icmp, a loopback rule of another protocol), then the allow.
BIG_PROFILE = "big200"
BIG_RULES = 200


def big_profile(rules=BIG_RULES):
    egress = []
    for i in range(rules - 1):
        kind = i % 5
        if kind == 0:
            egress.append(("reject", ("tcp",), (9000 + i,), ()))
        elif kind == 1:
            egress.append(("deny", ("tcp",), (8080,), (f"10.{i}.0.0/16",)))
        elif kind == 2:
            egress.append(("deny", ("udp",), (f"{20000 + 10 * i}-{20000 + 10 * i + 5}",),
                           (f"2001:db8:{i:x}::/48",)))
        elif kind == 3:
            egress.append(("allow", ("tcp",), (443,), (f"198.51.{i}.0/24",)))
        else:
            egress.append(("reject", ("udp",), (8080,), ("loopback",)))
    egress.append(("allow", ("tcp",), ("8000-8099",), ()))
    return {"egress": egress, "egress_default": "reject"}


def all_profiles():
    return {**PROFILES, BIG_PROFILE: big_profile()}


def net_rule_count(profiles=PROFILES):
    return sum(len(p.get(d, ())) for p in profiles.values() for d in ("egress", "ingress"))


# ---- TOML ---------------------------------------------------------------------------

def _toml_list(items):
    return "[" + ", ".join(_toml_value(i) for i in items) + "]"


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return '"' + value + '"'


def _toml_rule(direction, rule):
    action, protos, ports, peers = rule
    parts = [f'action = "{action}"']
    if protos:
        parts.append(f"proto = {_toml_list(protos)}")
    if ports:
        parts.append(f"ports = {_toml_list(ports)}")
    if peers:
        parts.append(f"{'to' if direction == 'egress' else 'from'} = {_toml_list(peers)}")
    return "{ " + ", ".join(parts) + " }"


def profile_toml(name, profile):
    lines = [f"[profile.{name}]"]
    for direction in ("egress", "ingress"):
        if profile.get(direction):
            lines.append(f"{direction} = [")
            lines += [f"  {_toml_rule(direction, r)}," for r in profile[direction]]
            lines.append("]")
        if f"{direction}_default" in profile:
            lines.append(f'{direction}_default = "{profile[direction + "_default"]}"')
    if profile.get("log"):
        lines.append("log = true")
    return "\n".join(lines) + "\n"


def login_policy(user, group, cgroup_base, uid_only=False, account=False,
                 service=SERVICE, session_profile="web-only"):
    """The login benchmark's policy for `user` (member of `group`).

    uid_only: the same profiles (hence the same table), but the user gets only the two
    egress profiles, at user scope: a login then adds two uid elements and needs no
    cgroup (what a login costs without the cgroup migration). account: every profile
    counts (`[settings] account = true`: acct-out, acct-in, denied-P). service: the PAM
    service of the session rule (sshd's program name in the sshd section).
    session_profile: the session-scope profile (web-only, or BIG_PROFILE for section
    3's netfence200 variant: only then is that profile in the policy, so that the
    other sections' tables stay what they were).
    """
    counting = "account = true\n" if account else ""
    parts = [f'[settings]\non_error = "deny"\ncgroup_base = "{cgroup_base}"\n{counting}']
    profiles = all_profiles() if session_profile == BIG_PROFILE else PROFILES
    parts += [profile_toml(name, profile) for name, profile in profiles.items()]
    if uid_only:
        parts.append(f"""[[rule]]
users = ["{user}"]
profiles = ["no-mail", "web-only"]
scope = "user"
""")
        return "\n".join(parts)
    parts.append(f"""[[rule]]                      # everyone's baseline
users = ["{user}"]
profiles = {_toml_list(USER_PROFILES)}
scope = "user"

[[rule]]                      # a rule that does not match this login (other service)
users = ["{user}"]
services = ["cron"]
profiles = ["web-only"]

# students over ssh from outside 10/8 (no `time`: a rule with one puts its keys in
# time-window sets, issue 9, which the sections' checks and fake sessions do not use)
[[rule]]
groups = ["{group}"]
services = ["{service}"]
rhosts = ["!10.0.0.0/8"]
profiles = ["{session_profile}"]
scope = "session"
""")
    return "\n".join(parts)


def generated_policy(n_rules, cgroup_base, per_profile=25):
    """A policy of n_rules net rules (each one nftables rule: one protocol, one port,
    at most one peer) in ceil(n/25) profiles, and one [[rule]] per profile."""
    n_profiles = max(1, -(-n_rules // per_profile))
    parts = [f'[settings]\ncgroup_base = "{cgroup_base}"\n']
    made = 0
    for p in range(n_profiles):
        count = min(per_profile, n_rules - made)
        egress, ingress = [], []
        for i in range(count):
            k = made + i
            port = 1024 + k
            if k % 4 == 3:
                ingress.append(("allow", ("tcp",), (port,), (f"10.{k % 250}.{k // 250}.0/24",)))
            elif k % 4 == 2:
                egress.append(("deny", ("udp",), (port,), (f"2001:db8:{k:x}::/48",)))
            else:
                egress.append(("reject", ("tcp",), (port,), ()))
        made += count
        profile = {"egress": egress, "ingress": ingress, "log": p % 2 == 1}
        if egress:
            profile["egress_default"] = "allow"
        if ingress:
            profile["ingress_default"] = "deny"
        parts.append(profile_toml(f"gen{p}", profile))
        parts.append(f'[[rule]]\ngroups = ["gen-group-{p}"]\nprofiles = ["gen{p}"]\n'
                     f'scope = "{"user" if p % 2 else "session"}"\n')
    return "\n".join(parts)


# ---- blog style: one iptables process per rule ---------------------------------------

def _expand(direction, rule):
    """(family, l4 proto or None, port or None, peer or None) per kernel rule."""
    action, protos, ports, peers = rule
    out = []
    for peer in peers or (None,):
        if peer == "loopback" or peer is None:
            families = (4, 6)
        else:
            families = (ipaddress.ip_network(peer).version,)
        for family in families:
            for proto in protos or (None,):
                if direction == "ingress" and proto not in ("tcp", None):
                    continue              # the SYN,ACK trick only exists for TCP
                if direction == "ingress":
                    proto = "tcp"
                for port in ports or (None,):
                    out.append((family, proto, port, peer))
    return out


IPT_VERDICT = {"allow": ["-j", "ACCEPT"], "deny": ["-j", "DROP"], "reject": ["-j", "REJECT"]}


def iptables_rules(uid, profiles=PROFILES, names=USER_PROFILES + SESSION_PROFILES):
    """[(family, [iptables args after -A/-D])] for the user's restrictions, blog style:
    egress as OUTPUT owner rules, ingress as the SYN,ACK trick, the profile defaults as
    a final owner rule per family. Session scope cannot be expressed (--sid-owner is
    gone) and becomes --uid-owner too."""
    out = []
    for name in names:
        profile = profiles[name]
        for direction in ("egress", "ingress"):
            rules = profile.get(direction, ())
            default = profile.get(f"{direction}_default", "allow")
            for rule in rules:
                for family, proto, port, peer in _expand(direction, rule):
                    args = ["OUTPUT"]
                    if direction == "ingress":
                        args += ["-p", "tcp", "--tcp-flags", "ALL", "SYN,ACK"]
                    elif proto:
                        args += ["-p", {"icmp": "icmp" if family == 4 else "ipv6-icmp"}
                                 .get(proto, proto)]
                    if port is not None:
                        flag = "--sport" if direction == "ingress" else "--dport"
                        args += [flag, str(port).replace("-", ":")]
                    if peer == "loopback":
                        args += ["-o", "lo"]
                    elif peer:
                        args += ["-d", peer]
                    args += ["-m", "owner", "--uid-owner", str(uid)] + IPT_VERDICT[rule[0]]
                    out.append((family, args))
            if default != "allow" and (rules or default):
                for family in (4, 6):
                    args = ["OUTPUT"]
                    if direction == "ingress":
                        args += ["-p", "tcp", "--tcp-flags", "ALL", "SYN,ACK"]
                    args += ["-m", "owner", "--uid-owner", str(uid)] + IPT_VERDICT[default]
                    out.append((family, args))
    return out


def iptables_commands(uid, op, iptables="/usr/sbin/iptables", ip6tables="/usr/sbin/ip6tables"):
    """argv lists: one process per rule (op "-A" to add, "-D" to remove)."""
    return [[iptables if family == 4 else ip6tables, op, *args]
            for family, args in iptables_rules(uid)]


# ---- blog style as one linear nft chain ----------------------------------------------

NFT_VERDICT = {"allow": "accept", "deny": "drop", "reject": "reject"}
SYN_ACK = "tcp flags & (fin | syn | rst | psh | ack | urg) == syn | ack"


def linear_ruleset(other_uids, uid, table="linear"):
    """nft -f text: one `meta skuid X counter drop` per other session, then the user's
    own rules (the blog's per-user owner rules, appended at login)."""
    lines = [f"table inet {table} {{", "  chain output {",
             "    type filter hook output priority filter; policy accept;"]
    lines += [f"    meta skuid {u} counter drop" for u in other_uids]
    for family, args in iptables_rules(uid):
        lines.append("    " + _nft_from_ipt(family, args))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def _nft_from_ipt(family, args):
    """The nft twin of one iptables_rules() entry."""
    opts = dict(zip(args[1::1], args[2::1]))
    words = ["meta nfproto", "ipv4" if family == 4 else "ipv6"]
    uid = opts["--uid-owner"]
    words += ["meta skuid", uid]
    if "--tcp-flags" in args:
        words += [SYN_ACK]
    proto = opts.get("-p")
    if proto:
        words += ["meta l4proto", {"ipv6-icmp": "ipv6-icmp"}.get(proto, proto)]
    if "--dport" in opts:
        words += ["th dport", opts["--dport"].replace(":", "-")]
    if "--sport" in opts:
        words += ["th sport", opts["--sport"].replace(":", "-")]
    if opts.get("-o") == "lo":
        words += ['oifname "lo"']
    if "-d" in opts:
        words += ["ip daddr" if family == 4 else "ip6 daddr", opts["-d"]]
    verdict = {"ACCEPT": "accept", "DROP": "drop", "REJECT": "reject"}[opts["-j"]]
    return " ".join(words + ["counter", verdict])


# ---- section 3's floor: the fewest expressions nftables can enforce this with -------

def floor_ruleset(uid, names=USER_PROFILES + SESSION_PROFILES, table="floor"):
    """nft -f text: the egress rules of the user's profiles written by hand for this one
    uid, as cheaply as nftables can check them on every packet with netfence's meaning
    (every profile must allow): one `meta skuid` compare per profile jumping to its
    chain, the rules in first-match order as plain matches (no sets, no sessions, no
    grants, no per-rule counters), allow as `return` (the next profile is asked), the
    default (allow: nothing); plus the input rule that turns connection tracking on, as
    the conntrack baseline has."""
    lines = [f"table inet {table} {{", "  chain output {",
             "    type filter hook output priority filter; policy accept;"]
    lines += [f"    meta skuid {uid} jump {name}" for name in names
              if PROFILES[name].get("egress")]
    lines.append("  }")
    for name in names:
        profile = PROFILES[name]
        if not profile.get("egress"):
            continue
        lines.append(f"  chain {name} {{")
        for action, protos, ports, peers in profile["egress"]:
            lines += [f"    {text}" for text in _floor_rules(action, protos, ports, peers)]
        default = profile.get("egress_default", "allow")
        if default != "allow":
            lines.append("    " + {"deny": "drop", "reject": "reject"}[default])
        lines.append("  }")
    lines += ["  chain input {", "    type filter hook input priority filter; policy accept;",
              "    ct state new", "  }", "}"]
    return "\n".join(lines) + "\n"


def _floor_rules(action, protos, ports, peers):
    verdict = {"allow": "return", "deny": "drop",
               "reject": "reject with tcp reset" if tuple(protos) == ("tcp",) else "reject"}
    out = []
    for peer in list(peers) or [None]:
        if peer == "loopback":
            where, family = 'oif "lo" ', None
        elif peer is not None:
            family = ipaddress.ip_network(peer).version
            where = f"{'ip' if family == 4 else 'ip6'} daddr {peer} "
        else:
            where, family = "", None
        names = [{4: "icmp", 6: "ipv6-icmp"}.get(family, "icmp") if p == "icmp" else p
                 for p in protos]
        if "icmp" in protos and family is None:
            names.append("ipv6-icmp")
        what = ""
        if names:
            what = f"meta l4proto {_floor_set(names)} "
        if ports:
            what += f"th dport {_floor_set([str(p) for p in ports])} "
        out.append(f"{where}{what}{verdict[action]}")
    return out


def _floor_set(items):
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"
