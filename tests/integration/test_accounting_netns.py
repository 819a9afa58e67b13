"""Accounting, denial logging and monitor mode on the real kernel, in a private netns.

Sessions are opened with netfence.sessions (the hook's own open: records, cgroups under
/sys/fs/cgroup/unified/nftest-<tag>/, elements); processes are placed in their session
cgroups and make real connections. What the kernel counted is read back with
counters.read_counters (acct-out, acct-in, denied-P) and the rules' own counters.

Why "within the headers": a set element's counter adds the length of each IP packet
the lookup sees, headers included: IPv4 20 bytes (no options here), TCP 20 bytes plus
options (timestamps: 12 on lo; SYN options up to 40). So a direction with P packets
carrying D payload bytes counts D + 40 P <= bytes <= D + 60 P. Egress counts the
session's own packets once (their copy arriving on lo is looked up in ingress and
belongs to the sink's socket, outside the session); ingress counts the sink's packets
as they reach the session's socket. Packets a socket gets after it closed (a last ACK
to TIME_WAIT) have no full socket: nothing counts them, so the bounds hold.
"""

import json
import os
import select
import struct
import subprocess
import sys

import pytest

from netfence import records
from netfence.cgroups import cgroup2_mount
from support.livesession import login, logout

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, cgroups")

UID = 61011
MIN_HEADERS, MAX_HEADERS = 40, 60
LOG_GROUP = 5177          # not watch's default: a watch elsewhere never sees ours

POLICY = """
[settings]
cgroup_base = "{base}"
log_group = {group}

[profile.guarded]
egress = [ {{ action = "reject", proto = "tcp", ports = [7021] }},
           {{ action = "deny", proto = "udp", ports = [7022] }} ]
log = true
account = true

[profile.watched]
egress = [ {{ action = "reject", proto = "tcp", ports = [7021] }},
           {{ action = "deny", proto = "udp", ports = [7022] }} ]
mode = "monitor"
account = true

[profile.counted]
account = true
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
    while conn.recv(65536):
        pass
    conn.sendall(b"r" * reply)
    conn.close()
"""

CLIENT = """\
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as s:
    s.sendall(b"s" * int(sys.argv[2]))
    s.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        data = s.recv(65536)
        if not data:
            break
        got += len(data)
print(got)
"""

# nfnetlink_log, as small as it gets: bind the group, print (prefix, mark) per packet
LISTENER = """\
import socket, struct, sys
group = int(sys.argv[1])
nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
nl.bind((0, 0))
body = struct.pack("=BBH", 0, 0, socket.htons(group)) + struct.pack("=HHB3x", 5, 1, 1)
nl.send(struct.pack("=IHHII", 16 + len(body), (4 << 8) | 1, 5, 1, 0) + body)
nl.recv(4096)
print("ready", flush=True)
while True:
    data = nl.recv(65536)
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if kind == 4 << 8:
            attrs, at = {}, offset + 20
            while at + 4 <= offset + length:
                alen, atype = struct.unpack_from("=HH", data, at)
                attrs.setdefault(atype & 0x3FFF, data[at + 4:at + alen])
                at += (alen + 3) & ~3
            mark = struct.unpack(">I", attrs[2])[0] if 2 in attrs else None
            print(attrs.get(10, b"").rstrip(b"\\0").decode(), mark, flush=True)
        offset += (length + 3) & ~3
"""

READ_COUNTERS = ("import json; from netfence import counters; "
                 "print(json.dumps(counters.read_counters()))")
READ_RULE_COUNTERS = ("import json; from netfence.nftnl import Ruleset; "
                      "print(json.dumps(Ruleset().read_counters()))")


@pytest.fixture
def loaded(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base, group=LOG_GROUP))
    nf.cli("reload")
    return nf


def session_cgroup(nf, key):
    """(session cgroup path, session element key, user element key)."""
    path = cgroup2_mount() + records.read_session(nf.run_dir, key)["cgroup"]
    return path, _key(path), _key(os.path.dirname(path))


def _key(path):
    return struct.pack("=Q", os.stat(path).st_ino).hex()


def kernel_counters(nf):
    return json.loads(nf.netns.run([sys.executable, "-c", READ_COUNTERS]).stdout)


def rule_counters(nf):
    rows = json.loads(nf.netns.run([sys.executable, "-c", READ_RULE_COUNTERS]).stdout)
    return {comment: (packets, bytes_) for _chain, comment, packets, bytes_ in rows}


def in_cgroup(argv, cgroup):
    return ["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]


def exchange(nf, cgroup, port, sent):
    """A client in `cgroup` sends `sent` bytes to the sink and reads its reply."""
    out = nf.netns.run(in_cgroup([sys.executable, "-c", CLIENT, str(port), str(sent)], cgroup))
    return int(out.stdout)


def sink(nf, port, reply):
    proc = nf.spawn([sys.executable, "-c", SINK, str(port), str(reply)])
    assert proc.stdout.readline().strip() == "ready"
    return proc


def listener(nf):
    proc = nf.spawn([sys.executable, "-c", LISTENER, str(LOG_GROUP)])
    line = b""
    while not line.endswith(b"\n"):              # raw reads: no buffered reader that
        line += os.read(proc.stdout.fileno(), 1)  # would hide lines from select
    assert line == b"ready\n"
    return proc


def log_lines(proc, quiet_s=1.5):
    """The listener's lines until it stays quiet for quiet_s (nfnetlink_log sends a
    copy within a second: it batches up to its flush timeout)."""
    data = b""
    while select.select([proc.stdout], [], [], quiet_s)[0]:
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        data += chunk
    return [line.split() for line in data.decode().splitlines()]


def within_headers(counted, payload):
    packets, bytes_ = counted
    return payload + MIN_HEADERS * packets <= bytes_ <= payload + MAX_HEADERS * packets


def test_enforce_drops_and_rejects_as_before_while_logging_and_counting(loaded):
    nf = loaded
    nf.echo_server(["tcp:127.0.0.1:7021", "udp:127.0.0.1:7022", "tcp:127.0.0.1:7023"])
    key, _app = login(nf, UID, session_profiles=["guarded"])
    cgroup, session, user = session_cgroup(nf, key)
    log = listener(nf)
    assert nf.probe("tcp", "127.0.0.1", 7021, cgroup=cgroup) == "refused"
    assert nf.probe("udp", "127.0.0.1", 7022, cgroup=cgroup) == "dropped"
    assert nf.probe("tcp", "127.0.0.1", 7023, cgroup=cgroup) == "ok"
    counted = kernel_counters(nf)
    # one denial each way it was denied: the reset SYN and the dropped datagram
    assert counted["denied-guarded"][session][0] >= 2
    assert counted["denied-guarded"][user][0] >= 2
    rules = rule_counters(nf)
    assert rules["guarded egress rule 1"][0] >= 1 and rules["guarded egress rule 2"][0] >= 1
    # each denial copied to nflog once, naming the session: its cgroup id's low 32
    # bits as the mark (a second, "nocg" copy of the same packet was a bug)
    low32 = struct.unpack("=Q", bytes.fromhex(session))[0] & 0xFFFFFFFF
    assert log_lines(log) == [["netfence", "guarded", str(low32)]] * 2
    logout(nf, key)


def test_monitor_mode_lets_through_and_counts_what_it_would_deny(loaded):
    nf = loaded
    nf.echo_server(["tcp:127.0.0.1:7021", "udp:127.0.0.1:7022"])
    key, _app = login(nf, UID, session_profiles=["watched"])
    cgroup, session, user = session_cgroup(nf, key)
    log = listener(nf)
    assert nf.probe("tcp", "127.0.0.1", 7021, cgroup=cgroup) == "ok"
    assert nf.probe("udp", "127.0.0.1", 7022, cgroup=cgroup) == "ok"
    rules = rule_counters(nf)
    # only the first packet of a flow is matched by the profile (ct state new)
    assert rules["watched egress rule 1"][0] >= 1 and rules["watched egress rule 2"][0] >= 1
    counted = kernel_counters(nf)
    assert counted["denied-watched"][session][0] >= 2
    assert counted["denied-watched"][user] == counted["denied-watched"][session]
    low32 = struct.unpack("=Q", bytes.fromhex(session))[0] & 0xFFFFFFFF
    assert log_lines(log) == [["netfence", "watched", str(low32)]] * 2
    logout(nf, key)


MARKED_SEND = """\
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(sys.argv[2]))
s.sendto(b"x" * 100, ("127.0.0.1", int(sys.argv[1])))
"""

MARK_WATCH = """table inet nftest-mark {
    chain out {
        type filter hook output priority 10; policy accept;
        udp dport 7022 meta mark 0x1234 counter
        udp dport 7022 meta mark != 0x1234 counter
    }
}
"""


def test_the_packet_keeps_its_own_mark_after_the_log_lent_it(loaded):
    """emit-P puts the session cgroup id in the mark for the nflog copy: a later chain
    (another table, after ours) must see the packet's own mark again, or a policy
    routing or firewall rule keyed on marks would see our cgroup ids."""
    nf = loaded
    nf.netns.run(["nft", "-f", "-"], input=MARK_WATCH, stdin=None)
    key, _app = login(nf, UID, session_profiles=["watched"])
    cgroup, session, _user = session_cgroup(nf, key)
    log = listener(nf)
    nf.netns.run(in_cgroup([sys.executable, "-c", MARKED_SEND, "7022", str(0x1234)], cgroup))
    low32 = struct.unpack("=Q", bytes.fromhex(session))[0] & 0xFFFFFFFF
    assert log_lines(log) == [["netfence", "watched", str(low32)]]
    lines = nf.netns.nft("list", "chain", "inet", "nftest-mark", "out").stdout.splitlines()
    own, other = [line.strip() for line in lines if "counter" in line]
    assert own.endswith("counter packets 1 bytes 128"), own
    assert other.endswith("counter packets 0 bytes 0"), other
    logout(nf, key)


def test_a_packet_without_a_session_cgroup_is_logged_nocg(loaded):
    """User scope: the uid is in uid-guarded; a process of that uid outside any session
    cgroup (here at level 1) is still denied, and logged with the nocg prefix."""
    nf = loaded
    key, _app = login(nf, UID, user_profiles=["guarded"])
    log = listener(nf)
    shallow, _ = nf.make_cgroup("")
    assert nf.probe("udp", "127.0.0.1", 7022, uid=UID, cgroup=shallow) == "dropped"
    (words,) = log_lines(log)
    assert words[:3] == ["netfence", "guarded", "nocg"]
    logout(nf, key)


def test_bytes_each_way_match_what_the_client_sent_and_received(loaded):
    nf = loaded
    sent, reply = 200_000, 300_000
    sink(nf, 7031, reply)
    key, _app = login(nf, UID, session_profiles=["counted"])
    cgroup, session, user = session_cgroup(nf, key)
    assert exchange(nf, cgroup, 7031, sent) == reply
    counted = kernel_counters(nf)
    assert within_headers(counted["acct-out"][session], sent), counted["acct-out"]
    assert within_headers(counted["acct-in"][session], reply), counted["acct-in"]
    assert counted["acct-out"][user] == counted["acct-out"][session]
    logout(nf, key)


def test_two_sessions_of_one_user_are_counted_apart(loaded):
    nf = loaded
    sink(nf, 7032, 1000)
    first, _app1 = login(nf, UID, session_profiles=["counted"])
    second, _app2 = login(nf, UID, session_profiles=["counted"])
    cg1, s1, user = session_cgroup(nf, first)
    cg2, s2, user2 = session_cgroup(nf, second)
    assert user == user2 and s1 != s2
    exchange(nf, cg1, 7032, 50_000)
    exchange(nf, cg2, 7032, 150_000)
    out = kernel_counters(nf)["acct-out"]
    assert within_headers(out[s1], 50_000) and within_headers(out[s2], 150_000)
    assert out[user] == [out[s1][0] + out[s2][0], out[s1][1] + out[s2][1]]
    logout(nf, first)
    logout(nf, second)


def test_counters_survive_reload_and_gc_restore(loaded):
    nf = loaded
    sink(nf, 7033, 1000)
    key, _app = login(nf, UID, session_profiles=["counted"])
    cgroup, session, _user = session_cgroup(nf, key)
    exchange(nf, cgroup, 7033, 100_000)
    before = kernel_counters(nf)["acct-out"][session]
    assert before[1] > 100_000
    nf.cli("reload")
    assert kernel_counters(nf)["acct-out"][session] == before
    # gc finds the table altered (a rule gone) and restores it: the counters too
    nf.netns.nft("flush", "chain", "inet", "netfence", "egress-session")
    nf.cli("gc", check=False)
    assert nf.netns.nft("list", "chain", "inet", "netfence", "egress-session").stdout.count(
        "jump") >= 1
    assert kernel_counters(nf)["acct-out"][session] == before
    exchange(nf, cgroup, 7033, 10_000)
    after = kernel_counters(nf)["acct-out"][session]
    assert after[1] > before[1] + 10_000
    logout(nf, key)


def test_reload_without_the_counted_sets_still_works(loaded):
    """A policy that stops counting: the counted sets go, the reload does not fail."""
    nf = loaded
    key, _app = login(nf, UID, session_profiles=["counted"])
    nf.write_policy(POLICY.replace("account = true", "account = false").format(
        base=nf.cgroup_base, group=LOG_GROUP))
    nf.cli("reload")
    assert "acct-out" not in kernel_counters(nf)
    out = subprocess.run(nf.netns.wrap(["nft", "list", "sets", "inet"]), capture_output=True,
                         text=True)
    assert "acct-out" not in out.stdout
    logout(nf, key)
