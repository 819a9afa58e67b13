"""The nflog listener against the kernel (root, private netns): a group has one
listener (a second bind is NflogBusy, not a crash), real copies parse (IPv6 extension
headers included), and `netfence watch` runs on without the log while another process
holds its group, then takes the group at the next gc once it is free."""

import json
import os
import signal
import sys

import pytest

from support.pamsvc import wait_until
from support.watcher import Watcher

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns")

LISTEN = r"""
import json, select, socket, sys
from netfence import evaluate, nflog
group = int(sys.argv[1])
listener = nflog.NflogSocket(group)
try:
    nflog.NflogSocket(group)
    busy = "bound twice"
except nflog.NflogBusy as err:
    busy = str(err)
v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
# a hop-by-hop header (a PadN option) before the UDP header
v6.setsockopt(socket.IPPROTO_IPV6, 54, bytes([0, 0, 1, 4, 0, 0, 0, 0]))  # IPV6_HOPOPTS
v6.sendto(b"x", ("::1", 9999))
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"y", ("127.0.0.1", 9999))
got = []
while len(got) < 2 and select.select([listener], [], [], 2)[0]:
    got += listener.read()
out = []
for packet in got:
    headers = evaluate.parse_ip(packet.pop("payload"))
    out.append({**packet, **{k: headers[k] for k in ("proto", "src", "dst", "dport")}})
print(json.dumps({"busy": busy, "packets": out}))
"""

HOLD = r"""
import sys, time
from netfence import nflog
held = nflog.NflogSocket(int(sys.argv[1]))
print("holding", flush=True)
time.sleep(600)
"""


def test_bind_busy_and_real_copies(netns):
    netns.nft("add table inet t; add chain inet t o { type filter hook output priority 0; }; "
              "add rule inet t o udp dport 9999 meta mark set 0x2a "
              'log prefix "netfence web" group 5141 snaplen 128')
    out = json.loads(netns.run([sys.executable, "-c", LISTEN, "5141"]).stdout)
    assert "another process" in out["busy"]
    v6, v4 = sorted(out["packets"], key=lambda p: p["src"])[::-1]
    for packet, address in ((v6, "::1"), (v4, "127.0.0.1")):
        assert (packet["direction"], packet["mark"], packet["prefix"], packet["outdev"]) \
            == ("egress", 0x2A, "netfence web", 1), packet
        assert (packet["proto"], packet["dst"], packet["dport"], packet["uid"]) == (
            "udp", address, 9999, 0), packet


POLICY = """
[settings]
cgroup_base = "{base}"

[profile.web]
egress = [ {{ action = "reject", proto = "tcp", ports = [80] }} ]
log = true

[[rule]]
users = ["*"]
profiles = ["web"]
"""


def test_watch_runs_without_the_log_while_the_group_is_held(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    nf.cli("reload")
    holder = nf.netns.popen([sys.executable, "-c", HOLD, "5140"], stdout=-1, text=True)
    watcher = Watcher(nf)
    try:
        assert holder.stdout.readline().strip() == "holding"
        watcher.start()
        assert "nflog group 5140: another process" in watcher.log(), watcher.log()
        assert "event=nflog" not in watcher.log()
        holder.kill()
        holder.wait()
        watcher.proc.send_signal(signal.SIGHUP)      # the next gc tries again
        wait_until(lambda: "event=nflog group=5140" in watcher.log(), timeout=5,
                   interval=0.05, what="watch to take the group")
    finally:
        holder.kill()
        holder.wait()
        code = watcher.stop()
    assert code == 0, watcher.log()
    assert "event=error" not in watcher.log(), watcher.log()
