"""Section 3: per-packet cost, as new TCP connections per second over loopback.

Seven namespaces, each with a C accept-and-close server on 127.0.0.1:8080:
  empty     no ruleset at all;
  empty_again  another empty one: its ratio to `empty` shows the noise floor (A/A);
  conntrack one input rule `ct state new`: connection tracking on, nothing else (the
            part of netfence's cost that is conntrack's: its ingress chain uses ct);
  netfence  the login policy, N live sessions loaded (N fake elements in each of
            scg-web-only, uid-no-mail, ucg-no-servers), and one real session of the
            restricted user opened by the hook;
  netfence200  the same with the 200-rule session profile big200 (bench/policies.py)
            in place of web-only: the restricted client's connection matches its last
            rule (in the linear compile: walks all 200);
  accounting  the same with `[settings] account = true`: every packet's socket
            cgroup looked up at two levels in acct-out (egress) or acct-in (ingress),
            whose elements count it; N fake sessions' session and user cgroup ids in
            both sets, and the real session's elements added by the hook;
  floor     the cheapest table that enforces the restricted user's two egress
            profiles on every packet, written by hand for its uid
            (policies.floor_ruleset): one `meta skuid` test, then the rules in
            first-match order as plain matches, no sets, no sessions, no grants, no
            per-rule counters, and the conntrack variant's input rule. What any
            nftables ruleset checking these rules per packet costs at least: the
            nearest figure netfence's own table could reach;
  linear    the blog's way: one `meta skuid <other uid> counter drop` rule per live
            session (N of them), then the restricted user's own owner rules, in one
            output chain of its own table, loaded with `nft -f`.
Clients (bench/c/netbench.c, a C connect/close loop) run as
  unrestricted  nobody (65534), in no profile;
  restricted    the benchmark user, inside its session cgroup: its connection to
                port 8080 passes out-no-mail (9 rules and the default allow) and is
                allowed by out-web-only's net rule 6 (netfence200: big200's rule
                200); each namespace's counter of that rule is checked to count it.
Every (variant, client) pair is measured once per round, the order reversed every other
round; ratios are taken within a round (variant / empty) and their median reported.
Client and server are pinned to CPUs 0 and 1 (taskset).
"""

import json
import os
import subprocess
import sys

import policies
from common import log, median, rnd
from login import HeldLogin, setup_env
from netfence.setkinds import ACCT_IN, ACCT_OUT
from scale import FAKE_SESSION_CG, FAKE_UID, FAKE_USER_CG, fill_sessions

PORT = policies.ALLOWED_PORT
BLOCKED_PORT = 25              # no-mail rule 1 (uid set): rejected with a TCP reset
# the rule that allows the restricted client's connection, per variant
ALLOW_RULE = {"netfence": ("web-only", 6), "accounting": ("web-only", 6),
              "netfence200": (policies.BIG_PROFILE, policies.BIG_RULES)}
NOBODY = 65534


def _pin(cpu):
    """taskset prefix: server and client on CPUs of their own (less scheduler noise)."""
    cpus = os.cpu_count() or 1
    return ["taskset", "-c", str(cpu % cpus)] if cpus > 1 else []


def start_server(ws, ns, port):
    proc = ws.popen(ns.wrap(_pin(1) + [ws.netbench, "serve", str(port)]),
                    stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"server on port {port} did not start")
    return proc


def client_argv(ws, who, port, seconds):
    uid, gid, cgroup = who
    argv = _pin(0) + ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                      ws.netbench, "connect", str(port), str(seconds)]
    if cgroup:
        argv = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', f"{cgroup}/cgroup.procs", *argv]
    return argv


def connect_rate(ws, ns, who, seconds, port=PORT):
    out = ns.run(client_argv(ws, who, port, seconds), timeout=seconds + 30).stdout.split()
    ok, failed, elapsed = int(out[0]), int(out[1]), float(out[2])
    return ok / elapsed, ok, failed


def allow_counter(ns, profile="web-only", number=6):
    """Packets counted by `profile`'s egress rule `number` (the one with the comment
    "<profile> egress rule <number>"): in the rule chain out-P.N when the profile is
    compiled to lookups, else in out-P's linear rules."""
    comment = f'comment "{profile} egress rule {number}"'
    for chain in (f"out-{profile}.{number}", f"out-{profile}"):
        listed = ns.nft("list", "chain", "inet", "netfence", chain, check=False)
        for line in listed.stdout.splitlines() if listed.returncode == 0 else ():
            if comment in line:
                words = line.split()
                return int(words[words.index("packets") + 1])
    raise RuntimeError(f"no rule with {comment} in out-{profile}.{number} or out-{profile}")


def linear_table(ws, ns, user, sessions):
    path = ws.path("linear.nft")
    other = range(FAKE_UID, FAKE_UID + sessions)       # the same uids as netfence's
    with open(path, "w") as handle:
        handle.write(policies.linear_ruleset(other, user.uid))
    ns.nft("-f", path)
    text = ns.nft("list", "chain", "inet", "linear", "output").stdout
    return sum(1 for line in text.splitlines() if " counter " in f" {line.strip()} ")


def conntrack_table(ws, ns):
    """Only what turns connection tracking on (netfence's ingress chain matches
    `ct state new`): one input rule, to split netfence's cost into conntrack's and its
    own rules'."""
    path = ws.path("conntrack.nft")
    with open(path, "w") as handle:
        handle.write("table inet tracking {\n  chain input {\n"
                     "    type filter hook input priority filter; policy accept;\n"
                     "    ct state new\n  }\n}\n")
    ns.nft("-f", path)


def conntrack_setup(ns):
    """A TCP connection closed by RST sits in conntrack for 10 s (CLOSE); at tens of
    thousands of connections per second that would fill the table (drops): shorten
    it in this namespace only (netfence's ingress chain uses `ct state`)."""
    ns.run(["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_timeout_close=1"],
           check=False)


def packet_section(ws, user, sessions, rounds, seconds):
    envs, logins, variants, linear_rules = _variants(ws, user, sessions)
    clients = {"unrestricted": (NOBODY, NOBODY, None),
               "restricted": (user.uid, user.gid, logins["netfence"].cgroup_dir)}

    def who(variant, client):
        """The restricted client of a netfence namespace runs in that namespace's own
        session (elsewhere in netfence's: no ruleset looks at it)."""
        if variant in logins and client == "restricted":
            return (user.uid, user.gid, logins[variant].cgroup_dir)
        return clients[client]

    for name, env in envs.items():
        _check_enforced(ws, env, lambda client, n=name: who(n, client), name == "accounting",
                        ALLOW_RULE[name])
    _check_floor(ws, variants["floor"], lambda client: who("floor", client))
    pairs = [(v, c) for v in variants for c in clients]
    rates = {pair: [] for pair in pairs}
    failures = 0
    log(f"  {rounds} rounds x {len(pairs)} runs of {seconds} s, {sessions} live sessions, "
        f"linear chain of {linear_rules} rules ...")
    for r in range(rounds):
        for variant, client in (pairs if r % 2 == 0 else pairs[::-1]):
            rate, _, failed = connect_rate(ws, variants[variant], who(variant, client), seconds)
            rates[(variant, client)].append(rate)
            failures += failed
    for held in logins.values():
        held.close()
    out = {"packet_live_sessions": sessions, "linear_chain_rules": linear_rules,
           "connect_failures": failures}
    for variant, client in pairs:
        out[f"connect_rate_{variant}_{client}"] = rnd(median(rates[(variant, client)]), 0)
    for variant, base in RATIOS:
        for client in clients:
            ratios = [a / b for a, b in zip(rates[(variant, client)], rates[(base, client)])]
            suffix = "" if client == "restricted" else "_unrestricted"
            middle = "" if base == "empty" else f"_vs_{base}"
            out[f"connect_rate_ratio_{variant}{middle}{suffix}"] = rnd(median(ratios), 3)
    out["conntrack_entries_netfence"] = _conntrack_count(envs["netfence"].netns)
    return out


# (variant, baseline) of every ratio reported; accounting / netfence is what counting
# every packet (two hash lookups per direction, per packet) costs on top of the fence
RATIOS = (("netfence", "empty"), ("linear", "empty"), ("conntrack", "empty"),
          ("netfence", "conntrack"), ("empty_again", "empty"), ("accounting", "empty"),
          ("accounting", "netfence"), ("netfence200", "empty"),
          ("netfence200", "conntrack"), ("netfence200", "netfence"),
          ("floor", "empty"), ("floor", "conntrack"), ("netfence", "floor"))


def _variants(ws, user, sessions):
    """The namespaces, each with its servers: netfence and accounting (the same login
    policy with `[settings] account = true`) with `sessions` live sessions and one
    real held session of the user."""
    envs, logins = {}, {}
    for name, account, session_profile in (("netfence", False, "web-only"),
                                           ("accounting", True, "web-only"),
                                           ("netfence200", False, policies.BIG_PROFILE)):
        env = setup_env(ws, f"packet-{name}", user, account=account,
                        session_profile=session_profile)
        fill_sessions(env, sessions)
        if account:         # the other sessions counted too: acct sets as big as theirs
            for set_name in (ACCT_OUT, ACCT_IN):
                for first in (FAKE_SESSION_CG, FAKE_USER_CG):
                    env.helper("fill", set_name, "cg", str(first), str(sessions))
        envs[name], logins[name] = env, HeldLogin(ws, env, user)
    tracked, linear = ws.netns(), ws.netns()
    conntrack_table(ws, tracked)
    linear_rules = linear_table(ws, linear, user, sessions)
    floor = ws.netns()
    floor_table(ws, floor, user)
    variants = {"empty": ws.netns(), "empty_again": ws.netns(), "conntrack": tracked,
                "floor": floor,
                "netfence": envs["netfence"].netns, "accounting": envs["accounting"].netns,
                "netfence200": envs["netfence200"].netns, "linear": linear}
    for ns in variants.values():
        conntrack_setup(ns)
        start_server(ws, ns, PORT)
    for env in envs.values():
        start_server(ws, env.netns, BLOCKED_PORT)      # root may bind port 25
    start_server(ws, floor, BLOCKED_PORT)
    return envs, logins, variants, linear_rules


def _check_enforced(ws, env, who, counted, allow_rule):
    """The policy is live for this very client: its uid is refused port 25, its
    connections to 8080 are allowed by `allow_rule` (profile, number) of its session
    profile (web-only's rule 6, big200's rule 200), whose counter counts them, and, with
    accounting, its session's acct-out element counts them."""
    _, ok_blocked, _ = connect_rate(ws, env.netns, who("restricted"), 0.2, BLOCKED_PORT)
    _, ok_free, _ = connect_rate(ws, env.netns, who("unrestricted"), 0.2, BLOCKED_PORT)
    before = allow_counter(env.netns, *allow_rule)
    sent_before = _session_sent(env.netns, who("restricted")) if counted else 0
    _, ok_allowed, _ = connect_rate(ws, env.netns, who("restricted"), 0.2, PORT)
    counted_rule = allow_counter(env.netns, *allow_rule) - before
    sent = _session_sent(env.netns, who("restricted")) - sent_before if counted else 1
    if ok_blocked or not ok_free or not ok_allowed or counted_rule < ok_allowed or not sent:
        raise RuntimeError(f"{env.tag}: the namespace does not enforce the policy: port 25 "
                           f"restricted={ok_blocked} unrestricted={ok_free}; port {PORT} "
                           f"restricted={ok_allowed}, {allow_rule[0]} rule "
                           f"{allow_rule[1]} counted "
                           f"{counted_rule}, acct-out counted {sent} packets")


def floor_table(ws, ns, user):
    path = ws.path("floor.nft")
    with open(path, "w") as handle:
        handle.write(policies.floor_ruleset(user.uid))
    ns.nft("-f", path)


def _check_floor(ws, ns, who):
    """The floor enforces what netfence does for this client: port 25 refused to it
    (and not to others), port 8080 allowed."""
    _, ok_blocked, _ = connect_rate(ws, ns, who("restricted"), 0.2, BLOCKED_PORT)
    _, ok_free, _ = connect_rate(ws, ns, who("unrestricted"), 0.2, BLOCKED_PORT)
    _, ok_allowed, _ = connect_rate(ws, ns, who("restricted"), 0.2, PORT)
    if ok_blocked or not ok_free or not ok_allowed:
        raise RuntimeError(f"floor: the namespace does not enforce the policy: port 25 "
                           f"restricted={ok_blocked} unrestricted={ok_free}; port {PORT} "
                           f"restricted={ok_allowed}")


def _session_sent(ns, who):
    """Packets acct-out counted for the session cgroup `who` runs in."""
    key = os.stat(who[2]).st_ino.to_bytes(8, sys.byteorder).hex()
    out = ns.run([sys.executable, "-c", "import json; from netfence import counters; "
                  "print(json.dumps(counters.read_counters(sets=['acct-out'])))"]).stdout
    return (json.loads(out).get(ACCT_OUT, {}).get(key) or [0])[0]


def _conntrack_count(ns):
    proc = ns.run(["cat", "/proc/sys/net/netfilter/nf_conntrack_count"], check=False)
    return int(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip() else None

