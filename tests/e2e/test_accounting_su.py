"""Accounting through real `su` logins and the real hook (root, private netns).

A session that gets a counting profile has its session cgroup id and its user cgroup
id in acct-out, acct-in and denied-P (docs/hook.md, "Accounting"). Its user sends N
bytes to a sink on 127.0.0.1 (root, outside every session) and reads M back; the
counters read from the kernel (counters.read_counters, in the test's netns) must match.

Why "within the headers": a counter adds the length of each IP packet the rule sees,
headers included (IPv4: 20 bytes, no options here; TCP: 20 bytes plus options, at
most 40 more). So for a direction with P packets carrying D payload bytes:
    D + 40 * P  <=  bytes  <=  D + 60 * P
(lo's MTU is 64 KiB, so P stays small). Egress sees the session's own packets once
(their copy arriving on lo is looked up in ingress and belongs to the sink's socket,
outside the session); ingress sees the sink's packets as they reach the session's
socket. A packet that arrives after the socket closed (the last ACK to a TIME_WAIT
socket) has no full socket: the socket expression finds none and nothing counts it.
"""

import os
import sys
import time

import pytest

from conftest import PORT_C, parse_view
from netfence import records, setkinds
from support.pamsvc import wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: users, netns, su")

SINK_PORT = 7011
REPLY = 300_000                   # M: what the sink sends back on every connection
MIN_HEADERS, MAX_HEADERS = 40, 60  # IPv4 (20) + TCP (20 .. 60) per packet

POLICY = """
[profile.counted]
egress = [ {{ action = "reject", proto = "tcp", ports = [{port}] }} ]
account = true

[[rule]]
users = ["{user}"]
profiles = ["counted"]
scope = "session"
"""

# the accounting-only profile: no rule at all, only counting
ONLY_COUNTS = """
[profile.watched]
account = true

[[rule]]
users = ["{user}"]
profiles = ["watched"]
scope = "user"
"""

SINK = """\
import socket, sys
reply = int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(8)
print("ready", flush=True)
while True:
    conn, _ = srv.accept()
    while conn.recv(65536):        # everything the client sends, until its FIN
        pass
    conn.sendall(b"r" * reply)
    conn.close()
"""

CLIENT = """\
import socket, sys
n = int(sys.argv[3])
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    s.sendall(b"s" * n)
    s.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += len(chunk)
print(f"sent={n} recv={got}")
"""


def _script(fence, name, text):
    path = f"{fence.nf.root}/{name}"
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


def start_sink(fence):
    proc = fence.nf.spawn([sys.executable, _script(fence, "sink.py", SINK),
                           str(SINK_PORT), str(REPLY)])
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return _script(fence, "client.py", CLIENT)


def send(shell, client, n):
    out = parse_view(shell.out(f"/usr/bin/python3 -I -S {client} 127.0.0.1 "
                               f"{SINK_PORT} {n} | tr ' ' '\\n'"))
    assert (int(out["sent"]), int(out["recv"])) == (n, REPLY), out
    return out


def read_counters(fence, keys):
    """counters.read_counters in the test's netns (the table lives there)."""
    code = ("import json, sys; from netfence.counters import read_counters; "
            "print(json.dumps(read_counters(keys=json.loads(sys.argv[1]))))")
    import json
    out = fence.netns.run([sys.executable, "-c", code, json.dumps(keys)]).stdout
    return json.loads(out)


def counted(fence, cgroup_id, sets=("acct-out", "acct-in", "denied-counted")):
    """{set: (packets, bytes)} of one cgroup's elements, after the traffic settled."""
    key = setkinds.SCG.key(cgroup_id)
    time.sleep(0.3)                 # the last ACKs and FINs of the connection
    got = read_counters(fence, {s: [key] for s in sets})
    return {s: tuple(got[s][key]) for s in sets if key in got.get(s, {})}


def within_headers(payload, packets_bytes):
    packets, size = packets_bytes
    assert packets > 0
    assert payload + MIN_HEADERS * packets <= size <= payload + MAX_HEADERS * packets, (
        payload, packets, size)


def record_of(fence, shell):
    shell.out("true")                   # the login is through: its record is written
    pid = shell.proc.pid
    for record in records.list_sessions(fence.nf.run_dir):
        if record["ppid"] == pid:
            return record
    raise AssertionError(f"no session record of su {pid}")


def close_line(fence, key):
    lines = [l for l in fence.events("close") if f" session={key} " in l]
    assert len(lines) == 1, fence.log()
    return dict(w.split("=", 1) for w in lines[0].split()[1:] if "=" in w)


def test_two_sessions_of_one_user_are_counted_apart_and_totalled_at_logout(fence, user):
    fence.echo()
    fence.load(POLICY.format(port=PORT_C, user=user.name))
    client = start_sink(fence)
    sizes = {"a": 100_000, "b": 250_000}
    with fence.su_shell(user) as a, fence.su_shell(user) as b:
        shells = {"a": a, "b": b}
        recs = {name: record_of(fence, shell) for name, shell in shells.items()}
        assert recs["a"]["cgroup_id"] != recs["b"]["cgroup_id"]
        assert recs["a"]["user_cgroup_id"] == recs["b"]["user_cgroup_id"]
        # one denial in session a: reject = one SYN counted, answered with a reset
        assert parse_view(a.out(fence.view(ports=(PORT_C,))))[str(PORT_C)] == "refused"
        for name, shell in shells.items():
            send(shell, client, sizes[name])
        per_session = {name: counted(fence, r["cgroup_id"]) for name, r in recs.items()}
        for name, seen in per_session.items():
            within_headers(sizes[name], seen["acct-out"])
            within_headers(REPLY, seen["acct-in"])
        # the probe's SYN went out (counted in acct-out too), and was denied once
        assert per_session["a"]["denied-counted"][0] == 1
        assert per_session["b"]["denied-counted"][0] == 0
        user_seen = counted(fence, recs["a"]["user_cgroup_id"])
        for set_name in ("acct-out", "acct-in", "denied-counted"):
            both = [per_session[n][set_name] for n in ("a", "b")]
            assert user_seen[set_name] == tuple(map(sum, zip(*both))), set_name
        assert a.logout() == 0
        line = close_line(fence, recs["a"]["key"])
        assert int(line["sent_bytes"]) == per_session["a"]["acct-out"][1]
        assert int(line["recv_bytes"]) == per_session["a"]["acct-in"][1]
        assert int(line["sent_packets"]) == per_session["a"]["acct-out"][0]
        assert int(line["recv_packets"]) == per_session["a"]["acct-in"][0]
        assert line["denied"] == "counted:1"
        # b still counts; a's session elements are gone, the user's stays for b
        gone = setkinds.SCG.key(recs["a"]["cgroup_id"])
        left = read_counters(fence, {"acct-out": [gone, setkinds.SCG.key(
            recs["b"]["cgroup_id"])]})["acct-out"]
        assert gone not in left and len(left) == 1
    assert b.proc.returncode == 0, b.stderr()
    line_b = close_line(fence, recs["b"]["key"])
    assert line_b["denied"] == "counted:0"
    within_headers(sizes["b"], (int(line_b["sent_packets"]), int(line_b["sent_bytes"])))
    closed = {r["key"]: r for r in records.list_closed(fence.nf.run_dir)}
    for name in ("a", "b"):
        totals = closed[recs[name]["key"]]["totals"]
        line = close_line(fence, recs[name]["key"])
        assert totals["sent_bytes"] == int(line["sent_bytes"])
        assert totals["recv_bytes"] == int(line["recv_bytes"])
        assert closed[recs[name]["key"]]["cgroup_id"] == recs[name]["cgroup_id"]
    # every accounting element is gone with the sessions and the user
    sets = fence.sets()
    assert not any(sets[s] for s in ("acct-out", "acct-in", "denied-counted")), sets
    assert fence.session_records() == []


def test_a_profile_that_only_counts_gets_a_cgroup_a_record_and_counts(fence, user):
    fence.load(ONLY_COUNTS.format(user=user.name))
    client = start_sink(fence)
    with fence.su_shell(user) as shell:
        record = record_of(fence, shell)
        assert record["cgroup"].startswith(f"/{fence.nf.cgroup_base}/user-{user.uid}/")
        send(shell, client, 50_000)
        seen = counted(fence, record["cgroup_id"], ("acct-out", "acct-in", "denied-watched"))
        within_headers(50_000, seen["acct-out"])
        within_headers(REPLY, seen["acct-in"])
        assert seen["denied-watched"] == (0, 0)
    assert shell.proc.returncode == 0, shell.stderr()
    line = close_line(fence, record["key"])
    assert int(line["sent_bytes"]) >= 50_000 and line["denied"] == "watched:0"
    wait_until(lambda: not any(fence.sets()[s] for s in ("acct-out", "acct-in")),
               what="the user's accounting elements to go")
