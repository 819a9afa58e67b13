"""`netfence metrics`: the accounting and the per-rule counters in the Prometheus text
exposition format (version 0.0.4), for node_exporter's textfile collector:

    netfence metrics > /var/lib/node_exporter/netfence.prom.tmp \
        && mv /var/lib/node_exporter/netfence.prom.tmp /var/lib/node_exporter/netfence.prom

(docs/accounting.md lists every metric and gives a systemd timer). collect() reads (the
kernel, the records, the applied snapshot); render() is pure.

A session's series exist while its record does: once it closes they are gone from the
next file (Prometheus marks them stale), which is normal for per-session series; its
final totals are in the close's log line and in run_dir/closed/KEY for a day. The
kernel's counters are exact and only grow while the element lives, so they are
Prometheus counters; a reload carries them over (apply.py).

Every label value is escaped as the format requires (backslash, double quote, line
feed): an rhost or a user name from NSS must not be able to end a label, forge a
sample or start a line of its own.
"""

from . import accounting, records
from .errors import NetfenceError
from .snapshot import read_snapshot

SESSION_LABELS = ("user", "uid", "session", "service", "rhost")
USER_LABELS = ("user", "uid", "user_cgroup")
TRAFFIC_METRICS = (("sent_bytes", "sent_bytes", "Bytes sent (IP packet lengths)"),
                   ("received_bytes", "recv_bytes", "Bytes received (IP packet lengths)"),
                   ("sent_packets", "sent_packets", "Packets sent"),
                   ("received_packets", "recv_packets", "Packets received"))


# ---- reading ------------------------------------------------------------------------

def collect(paths):
    """What render() shows: {"up", "problem", "table", "rules", "modes", "sessions",
    "accounting"}. A read that fails makes "up" False (with the reason in "problem")
    and leaves what it would have read empty; the records are read whatever the
    kernel says."""
    data = {"up": True, "problem": None, "table": False, "rules": [], "modes": {}}
    counted = {}
    try:
        applied = read_snapshot(paths.state_dir) or {}
        data["modes"] = accounting.profile_modes(applied)
        data["table"], data["rules"], counted = _read_kernel(applied)
    except NetfenceError as err:
        data["up"], data["problem"] = False, str(err)
    try:
        sessions, runs, users = (records.list_sessions(paths.run_dir),
                                 records.list_runs(paths.run_dir),
                                 records.list_users(paths.run_dir))
    except (NetfenceError, OSError) as err:     # not root, a damaged run dir
        sessions, runs, users = [], [], []
        data["up"] = False
        data["problem"] = data["problem"] or f"records in {paths.run_dir}: {err}"
    data["sessions"] = sum(1 for r in sessions if not r.get("closing"))
    data["accounting"] = accounting.join(sessions, runs, users, counted)
    return data


def _read_kernel(applied):
    """(table present, [(chain, comment, packets, bytes)] rule counters, the accounting
    sets' counters)."""
    from .nftnl import Ruleset
    with Ruleset() as ruleset:
        present = ruleset.table_exists()
        rules = ruleset.read_counters() if present else []
    counted = {}
    if present and (applied.get("login") or {}).get("account"):
        from .counters import read_counters
        counted = read_counters()
    return present, rules, counted


# ---- the exposition format (pure) -----------------------------------------------------

def escape_label(value):
    """A label value as the text format quotes it: \\ " and line feed escaped; a
    string that is not valid UTF-8 (a lone surrogate) is shown, not crashed on."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def escape_help(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class Exposition:
    """Metric families, each HELP and TYPE line then its samples."""

    def __init__(self):
        self.lines = []

    def family(self, name, kind, help_text, samples):
        """samples: [(labels {name: value}, number)]."""
        self.lines.append(f"# HELP {name} {escape_help(help_text)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            shown = ",".join(f'{key}="{escape_label(val)}"' for key, val in labels.items())
            self.lines.append(f"{name}{{{shown}}} {value}" if shown else f"{name} {value}")

    def text(self):
        return "\n".join(self.lines) + "\n"


def _labels(row, names, extra=()):
    values = {"user": row.get("user", ""), "uid": row.get("uid"),
              "session": row.get("key", ""), "service": row.get("service", ""),
              "rhost": row.get("rhost", ""), "user_cgroup": row.get("cgroup_id")}
    labels = {name: "" if values[name] is None else values[name] for name in names}
    labels.update(extra)
    return labels


def _traffic(out, scope, rows, names):
    noun = "session" if scope == "session" else "user cgroup"
    for metric, field, what in TRAFFIC_METRICS:
        out.family(f"netfence_{scope}_{metric}_total", "counter",
                   f"{what} by the sockets of a counted {noun}",
                   [(_labels(row, names), row[field]) for row in rows
                    if row[field] is not None])
    denied = [(_labels(row, names[:3] if scope == "session" else names,
                       {"profile": profile}), count)
              for row in rows for profile, count in sorted((row["denied"] or {}).items())
              if count is not None]
    out.family(f"netfence_{scope}_denied_total", "counter",
               f"Packets of a counted {noun} that a profile denied or rejected (in "
               f"monitor mode: would have)", denied)


def rule_totals(rule_counters):
    """{(profile, direction, rule number or "default"): [packets, bytes]} from the
    kernel's per-rule counters (chain, comment, packets, bytes): a policy rule may be
    several kernel rules (one per address family or port set), summed under its
    comment "P egress rule N" / "P egress default"; rules without one are skipped."""
    totals = {}
    for _chain, comment, packets, octets in rule_counters:
        parts = (comment or "").split(" ")
        if len(parts) == 4 and parts[2] == "rule":
            key = (parts[0], parts[1], parts[3])
        elif len(parts) == 3 and parts[2] == "default":
            key = tuple(parts)
        else:
            continue
        total = totals.setdefault(key, [0, 0])
        total[0] += packets
        total[1] += octets
    return totals


def render(data):
    """The exposition text of collect()'s data."""
    out = Exposition()
    out.family("netfence_up", "gauge", "1 when the kernel, the snapshot and the records "
               "were read; 0 when something failed (the reason goes to stderr)",
               [({}, int(data["up"]))])
    out.family("netfence_table_present", "gauge", "1 when table inet netfence exists",
               [({}, int(data["table"]))])
    out.family("netfence_sessions", "gauge", "Live login sessions netfence recorded",
               [({}, data["sessions"])])
    rows = data["accounting"]
    _traffic(out, "session", rows["sessions"], SESSION_LABELS)
    _traffic(out, "user", rows["users"], USER_LABELS)
    totals = sorted(rule_totals(data["rules"]).items())
    for index, noun in ((0, "packets"), (1, "bytes")):
        out.family(f"netfence_rule_{noun}_total", "counter",
                   f"{noun.capitalize()} a profile's rule matched (every login on the "
                   f"profile together)",
                   [({"profile": p, "direction": d, "rule": r}, values[index])
                    for (p, d, r), values in totals])
    modes = sorted(data["modes"].items())
    out.family("netfence_profile_monitor", "gauge", "1 when the profile is in monitor "
               "mode (its deny and reject rules only log and count)",
               [({"profile": p}, int(info["mode"] == "monitor")) for p, info in modes])
    out.family("netfence_profile_accounting", "gauge", "1 when logins that get the "
               "profile are counted", [({"profile": p}, int(info["account"]))
                                       for p, info in modes])
    return out.text()
