"""`netfence status` and `netfence metrics` on a real table with counting sets, in a
private network namespace: a fake session (its records written as the hook writes
them, its elements added as the hook adds them), real traffic from its cgroup, then
the counters as status --json, the text table and the Prometheus text show them."""

import json
import os
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netfence import plan, records
from netfence.setkinds import SCG
from netfence.snapshot import read_snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, cgroups")

UID, USER = 65534, "nobody"
ECHO_PORT, DENIED_PORT = 8090, 9
PAYLOAD = 100_000
KEY = "4242-77"

POLICY = """
[settings]
cgroup_base = "{base}"
account = true

[profile.web]
egress = [ {{ action = "deny", proto = "tcp", ports = [{denied}] }} ]

[profile.trial]
mode = "monitor"
egress = [ {{ action = "deny", proto = "tcp", ports = [{echo}] }} ]

[[rule]]
users = ["{user}"]
profiles = ["web", "trial"]
scope = "session"
"""

CLIENT = r"""
import socket, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
sock = socket.create_connection(("127.0.0.1", port), timeout=2)
sock.sendall(b"x" * size)
got = 0
while got < size:
    chunk = sock.recv(65536)
    if not chunk:
        break
    got += len(chunk)
sock.close()
print(got)
"""


def in_cgroup(cgroup, argv):
    return ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh",
            "setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", *argv]


def fake_session(nf):
    """Records and kernel elements of one session of `nobody` that got web and trial
    (session scope), both counted: what the hook's open leaves behind, planned by the
    hook's own code (plan.session_record, plan.open_plan), so that status joins the
    records the hook really writes."""
    user_path, user_id = nf.make_cgroup(f"user-{UID}")
    session_path, session_id = nf.make_cgroup(f"user-{UID}/session-{KEY}")
    login = read_snapshot(nf.state_dir)["login"]
    cgroup = {"path": session_path, "id": session_id, "user_path": user_path,
              "user_id": user_id, "created": True, "origin": "test"}
    info = {"user": USER, "uid": UID, "service": "sshd", "rhost": "198.51.100.7",
            "tty": "ssh"}
    record = plan.session_record(login, info, {"key": KEY, "ppid": 1, "starttime": 1},
                                 [], ["web", "trial"], cgroup, time.time())
    todo = plan.open_plan(record, None, None, [], [], (), time.time())
    for counted in ("acct-out", "acct-in", "denied-web", "denied-trial"):
        assert todo["record"]["session_elements"][counted] == [SCG.key(session_id)]
        assert todo["user"]["elements"][counted] == [SCG.key(user_id)]
    records.ensure_dirs(nf.run_dir)
    records.write(records.session_path(nf.run_dir, KEY), todo["record"])
    records.write(records.user_path(nf.run_dir, UID), todo["user"])
    add = ("import json, sys; from netfence.nftnl import Ruleset\n"
           "with Ruleset() as r: r.add_elements(json.loads(sys.argv[1]))")
    nf.netns.run([sys.executable, "-c", add, json.dumps(todo["send"])])
    return session_path, session_id, user_id


def metric_samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_status_and_metrics_show_a_sessions_traffic_and_denials(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base, denied=DENIED_PORT, echo=ECHO_PORT,
                                  user=USER))
    nf.cli("reload")
    session_path, session_id, user_id = fake_session(nf)
    nf.echo_server([f"tcp:127.0.0.1:{ECHO_PORT}"])
    # monitor mode: the connection its rule would deny passes, and is counted
    echoed = nf.netns.run(in_cgroup(session_path, [sys.executable, "-c", CLIENT,
                                                   str(ECHO_PORT), str(PAYLOAD)]))
    assert echoed.stdout.strip() == str(PAYLOAD)
    # enforced: dropped (one SYN within the timeout), and counted
    assert nf.netns.run(in_cgroup(session_path, [
        sys.executable, os.path.join(os.path.dirname(__file__), "..", "support",
                                     "probe.py"), "tcp", "127.0.0.1", str(DENIED_PORT),
        "0.5"])).stdout.strip() == "dropped"
    time.sleep(0.3)                        # the last ACKs of the echo connection

    state = json.loads(nf.cli("status", "--json").stdout)
    assert state["profiles"]["trial"]["mode"] == "monitor"
    assert state["profiles"]["web"] == {**state["profiles"]["web"], "mode": "enforce",
                                        "account": True}
    (row,) = state["accounting"]["sessions"]
    assert row["key"] == KEY and row["cgroup_id"] == session_id and row["counted"]
    # IP packet lengths: the payload plus 20 (IPv4) + 20..60 (TCP) bytes a packet
    assert PAYLOAD <= row["sent_bytes"] <= PAYLOAD + 80 * row["sent_packets"], row
    assert PAYLOAD <= row["recv_bytes"] <= PAYLOAD + 80 * row["recv_packets"], row
    # monitor mode counts the flow it would have stopped once, by its first packet
    assert row["denied"]["web"] >= 1 and row["denied"]["trial"] == 1, row
    (user,) = state["accounting"]["users"]
    assert user["cgroup_id"] == user_id and user["sessions"] == [KEY]
    # every socket of the session is under the user cgroup: it counted the same
    assert (user["sent_bytes"], user["recv_bytes"]) == (row["sent_bytes"], row["recv_bytes"])

    text = nf.cli("status").stdout
    assert "profile trial: " in text and "MONITOR MODE" in text, text
    line = next(l for l in text.splitlines() if f" {KEY} " in l)
    assert "sshd" in line and "198.51.100.7" in line and "KiB" in line

    out = nf.cli("metrics")
    assert out.stderr == ""
    samples = metric_samples(out.stdout)
    labels = (("rhost", "198.51.100.7"), ("service", "sshd"), ("session", KEY),
              ("uid", str(UID)), ("user", USER))
    assert samples[("netfence_session_sent_bytes_total", labels)] == row["sent_bytes"]
    assert samples[("netfence_session_received_packets_total", labels)] == row["recv_packets"]
    denied = (("profile", "web"), ("session", KEY), ("uid", str(UID)), ("user", USER))
    assert samples[("netfence_session_denied_total", denied)] == row["denied"]["web"]
    # the drop rule saw exactly what the session's denial counter saw
    rule = (("direction", "egress"), ("profile", "web"), ("rule", "1"))
    assert samples[("netfence_rule_packets_total", rule)] == row["denied"]["web"]
    assert samples[("netfence_profile_monitor", (("profile", "trial"),))] == 1
    assert samples[("netfence_profile_monitor", (("profile", "web"),))] == 0
    assert samples[("netfence_up", ())] == 1 and samples[("netfence_sessions", ())] == 1
    user_labels = (("uid", str(UID)), ("user", USER), ("user_cgroup", str(user_id)))
    assert samples[("netfence_user_sent_bytes_total", user_labels)] == user["sent_bytes"]

    # a reload keeps what was counted (apply.py carries the counters over)
    nf.cli("reload")
    (after,) = json.loads(nf.cli("status", "--json").stdout)["accounting"]["sessions"]
    assert {k: after[k] for k in ("sent_bytes", "recv_bytes", "denied")} == {
        k: row[k] for k in ("sent_bytes", "recv_bytes", "denied")}

    # closed (its record gone, the user's processes left): its series go, the user's stay
    records.delete(records.session_path(nf.run_dir, KEY))
    closed = metric_samples(nf.cli("metrics").stdout)
    assert not [k for k in closed if ("session", KEY) in k[1]], closed
    assert closed[("netfence_sessions", ())] == 0
    assert closed[("netfence_user_sent_bytes_total", user_labels)] == user["sent_bytes"]

    explained = nf.cli("explain", USER, "--service", "sshd").stdout
    assert "profile trial: MONITOR mode" in explained, explained
    assert "profile web: enforce mode" in explained and "counted (bytes" in explained


def test_metrics_without_a_table(nf):
    """Nothing applied yet: up, no table, no series; the file is still well formed."""
    out = nf.cli("metrics")
    samples = metric_samples(out.stdout)
    assert samples[("netfence_up", ())] == 1
    assert samples[("netfence_table_present", ())] == 0
    assert samples[("netfence_sessions", ())] == 0
