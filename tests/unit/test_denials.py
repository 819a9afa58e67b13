"""denials.py: a parsed nflog packet + the snapshot + the session record -> the entry;
what a user controls (PAM items, the packet) cannot forge a line."""

import json
import struct
import time

from netfence import compiler, denials
from netfence.model import (Location, MatchRule, NetRule, Patterns, Policy, Profile,
                            Settings)

from test_evaluate import ipv4, ports


def snapshot(mode="enforce"):
    web = Profile("web", egress=(
        NetRule("allow", ("tcp",), ((443, 443),), where=Location("/etc/netfence/a.toml", 7)),
        NetRule("reject", ("udp",), ((1000, 2000),), where=Location("/etc/netfence/a.toml", 9)),
    ), egress_default="deny", log=True, mode=mode)
    policy = Policy(Settings(), {"web": web},
                    (MatchRule(0, users=Patterns(("*",)), profiles=("web",)),),
                    files=("/etc/netfence/a.toml",))
    snap = compiler.compile_policy(policy)
    del snap["login"]["templates"]             # bytes, for the hook: compiled.json has none
    return json.loads(json.dumps(snap))


RECORD = {"key": "4242-99", "user": "alice", "uid": 1001, "service": "su",
          "rhost": "host.example", "tty": "pts/3", "cgroup_id": (7 << 32) | 0xABCD}


def packet(prefix="netfence web", dport=1500, uid=1001, mark=0xABCD):
    return {"family": 2, "hook": 3, "direction": "egress", "mark": mark, "time": time.time(),
            "indev": None, "outdev": 2, "uid": uid, "gid": 100, "prefix": prefix,
            "payload": ipv4("10.0.0.5", "198.51.100.1", 17, ports(40000, dport))}


def test_a_denial_names_the_session_the_rule_and_the_ports():
    sent = packet()
    entry = denials.build_entry(sent, snapshot(), RECORD)
    assert entry == {
        "time": sent["time"], "user": "alice", "uid": 1001, "session": "4242-99",
        "service": "su", "rhost": "host.example", "tty": "pts/3", "profile": "web",
        "rule": "/etc/netfence/a.toml:9", "rule_number": 2, "direction": "egress",
        "proto": "udp", "src": "10.0.0.5", "dst": "198.51.100.1", "sport": 40000,
        "dport": 1500, "verdict": "reject", "mode": "enforce", "cgroup_id_low32": 0xABCD,
        "shared_cgroup": None}


def test_the_default_and_monitor_mode():
    entry = denials.build_entry(packet(dport=5000), snapshot("monitor"), RECORD)
    assert (entry["rule"], entry["rule_number"], entry["verdict"], entry["mode"]) == \
        ("default", None, "would deny", "monitor")
    entry = denials.build_entry(packet(), snapshot("monitor"), RECORD)
    assert entry["verdict"] == "would reject"


def test_nocg_names_no_session_but_the_socket_uid():
    entry = denials.build_entry(packet("netfence web nocg", mark=0x1234), snapshot(), RECORD,
                                name_of_uid={1001: "alice"}.get)
    assert (entry["session"], entry["user"], entry["uid"]) == (None, "alice", 1001)
    assert entry["cgroup_id_low32"] is None and entry["service"] is None
    entry = denials.build_entry(packet("netfence web nocg", uid=None), snapshot(), None)
    assert entry["uid"] is None and entry["user"] is None


def test_a_foreign_prefix_is_no_entry():
    for prefix in ("", "other web", "netfence", "netfence web nocg extra", "netfence  web"):
        assert denials.build_entry(packet(prefix), snapshot(), RECORD) is None, prefix


def test_an_unknown_rule_is_said_not_guessed():
    # the table allows it: not this snapshot's denial
    allowed = dict(packet(), payload=ipv4("10.0.0.5", "198.51.100.1", 6, ports(4, 443)))
    entry = denials.build_entry(allowed, snapshot(), RECORD)
    assert entry["rule"] == "unknown" and entry["rule_number"] is None
    garbage = dict(packet(), payload=b"\x00" * 8)
    entry = denials.build_entry(garbage, snapshot(), RECORD)
    assert entry["rule"] == "unknown" and entry["proto"] is None


def test_a_snapshot_without_locations_names_the_rule_by_its_comment():
    old = snapshot()
    del old["locations"]
    assert denials.build_entry(packet(), old, RECORD)["rule"] == "web egress rule 2"


def test_text_line_shows_everything_on_one_line():
    entry = denials.build_entry(packet(), snapshot(), RECORD)
    line = denials.text_line(entry)
    for part in ("alice(1001)", "session=4242-99", "service=su", "rhost=host.example",
                 "tty=pts/3", "profile=web", "rule=/etc/netfence/a.toml:9", "egress udp",
                 "10.0.0.5:40000 -> 198.51.100.1:1500", "reject"):
        assert part in line, (part, line)
    v6 = dict(entry, src="2001:db8::1", dst="2001:db8::2", verdict="would deny")
    assert "[2001:db8::1]:40000 -> [2001:db8::2]:1500 would deny" in denials.text_line(v6)


def test_user_controlled_strings_cannot_forge_a_line():
    evil = dict(RECORD, rhost="x\nJan 1 00:00:00 root(0) forged", tty="\x1b[2Jpts/1",
                user="bob rule=default")
    entry = denials.build_entry(packet(), snapshot(), evil)
    line = denials.text_line(entry)
    assert "\n" not in line and "\x1b" not in line
    assert "'bob rule=default'(1001)" in line
    stored = json.dumps(entry)
    assert "\n" not in stored and json.loads(stored)["rhost"] == evil["rhost"]
    assert denials.text_line(dict(entry, verdict="deny\nforged")).count("\n") == 0


def test_a_zero_mark_is_cgroup_low_bits_zero_and_an_odd_timestamp_is_not_trusted():
    entry = denials.build_entry(dict(packet(), mark=None), snapshot(), RECORD)
    assert entry["cgroup_id_low32"] == 0
    before = time.time()
    entry = denials.build_entry(dict(packet(), time=12345.0), snapshot(), RECORD)
    assert entry["time"] >= before            # a monotonic-looking stamp: now instead
    assert denials.copy_time(None, now=7.0) == 7.0
    assert denials.copy_time(1000.0, now=1010.0) == 1000.0


def test_an_entry_missing_fields_still_shows():
    line = denials.text_line({"time": 1764500000.0, "profile": "web"})
    assert "?(?) session=- service=- rhost=- tty=- profile=web rule=- ? ? ? -> ?" in line
