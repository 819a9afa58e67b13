"""compile_snapshot: what reload takes from the compiler without a JSON round trip (the
table as built, its JSON text encoded once) is what the snapshot's JSON says."""

import json

from netfence import compiler, ir, snapshot
from netfence.policy import parse_policy_text

POLICY = """
[settings]
account = true
[profile.web]
egress = [
  { action = "allow", proto = "tcp", ports = [80, 443], to = ["10.0.0.0/8", "2001:db8::/32"] },
  { action = "reject", proto = ["tcp", "udp"], ports = ["1000-2000"] },
  { action = "deny", to = ["loopback"] },
  { action = "deny", proto = "icmp" },
]
egress_default = "deny"
ingress = [{ action = "allow", proto = "tcp", ports = [22], from = ["192.0.2.0/24"] }]
ingress_default = "deny"
log = true
[profile.quiet]
egress = [{ action = "deny", proto = "udp", ports = [53] }]
mode = "monitor"
[[rule]]
users = ["*"]
profiles = ["web"]
time = ["Mo-Fr 08:00-18:00"]
[[rule]]
groups = ["staff"]
profiles = ["quiet"]
scope = "always"
"""


def compiled():
    return compiler.compile_snapshot(parse_policy_text([("/etc/netfence/a.toml", POLICY)]))


def test_the_table_as_built_is_the_table_of_the_json():
    result = compiled()
    assert result.table == ir.TableDef.from_json(result.snapshot["table"])
    assert result.table == ir.TableDef.from_json(json.loads(result.table_text))
    assert any(s.elements for s in result.table.sets)        # maps with elements
    assert any(s.counter for s in result.table.sets)


def test_the_table_text_is_the_sorted_json_of_the_table():
    """to_json writes sorted keys: its plain json.dumps is sort_keys' text."""
    result = compiled()
    assert result.table_text == json.dumps(result.snapshot["table"], sort_keys=True)
    data = result.table.to_json()
    assert json.dumps(data) == json.dumps(data, sort_keys=True)


def test_compile_policy_is_compile_snapshots_snapshot():
    pol = parse_policy_text([("/etc/netfence/a.toml", POLICY)])
    first, second = compiler.compile_policy(pol), compiler.compile_snapshot(pol).snapshot
    assert first.keys() == second.keys() and first["policy_id"] == second["policy_id"]
    assert {k: v for k, v in first.items() if k != "login"} == {
        k: v for k, v in second.items() if k != "login"}


def test_json_text_with_encoded_values_is_json_dumps():
    result = compiled()
    snap = dict(result.snapshot, resolved={"sets": {"auid-quiet": [[1000, 1000]]},
                                            "unknown": ["nobody-here"]})
    snap["login"] = {k: v for k, v in snap["login"].items() if k != "templates"}
    plain = json.dumps(snap, sort_keys=True)
    assert snapshot.json_text(snap) == plain
    assert snapshot.json_text(snap, {"table": result.table_text}) == plain
    staged = dict(result.snapshot, resolved=snap["resolved"])
    assert (snapshot._compiled_bytes(staged, {"table": result.table_text})
            == snapshot._compiled_bytes(staged))
