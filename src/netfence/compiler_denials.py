"""The table's denial and accounting parts (docs/architecture.md, "Table shape"):
deny-P / reject-P / log-P / emit-P for profiles that log, count or monitor, and the
base chains' accounting rules. Pure, like compiler.py, which calls these.
"""

from . import ir
from .model import profile_accounts, profile_logs, profile_mode
from .nfconst import HOST_ORDER, IP_CT_NEW_STATE_BIT
from .setkinds import (ACCT_IN, ACCT_OUT, LOG_PREFIX, NO_CGROUP, SESSION_LEVEL, USER_LEVEL,
                       denied_set)

LOG_SNAPLEN = 128        # bytes of each denied packet copied to nflog: its headers
REG_SAVED_MARK = 2       # emit-P keeps the packet's mark here while it lends it out
TCP = "06"               # IPPROTO_TCP, as the key's meta l4proto holds it
# ct state new: the state bits (host-order u32) & IP_CT_NEW's bit != 0
CT_NEW = (("ct", "state"), ("bitwise", IP_CT_NEW_STATE_BIT.to_bytes(4, HOST_ORDER).hex(),
                            bytes(4).hex()), ("cmp", "neq", bytes(4).hex()))


def denies_through_chains(profile, settings):
    """Whether P's denial chains (out-P.deny, .reject, ...: the grants first) end by
    going to its deny-P / reject-P chains (which log, count and, in monitor mode, let
    the packet through) instead of ending in place."""
    return (profile_logs(profile, settings) or profile_accounts(profile, settings)
            or profile_mode(profile, settings) == "monitor")


def accounting_rules(counted):
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


def denial_chains(profile, settings):
    """deny-P and reject-P, where P's denial chains of both directions go (goto)
    after the grants:
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
                "reject": [(("meta", "l4proto"), ("cmp", "eq", TCP),
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
