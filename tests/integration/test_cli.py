"""The netfence command as an admin uses it: check, explain, status, pam-line, errors."""

import json

POLICY = """
[settings]
cgroup_base = "{base}"

[profile.no-plain-http]
egress = [ {{ action = "reject", proto = "tcp", ports = [80] }} ]

[profile.evening]
egress = [ {{ action = "deny", proto = "udp" }} ]

[[rule]]
users = ["*"]
profiles = ["no-plain-http"]
scope = "user"

[[rule]]
users = ["nobody"]
services = ["sshd"]
rhosts = ["!10.0.0.0/8"]
time = "Mo-Fr 18:00-23:00"
profiles = ["evening"]
"""


def test_check_reports_ok_and_counts(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    out = nf.cli("check")
    assert out.stdout.startswith(f"{nf.config_dir}: OK: 1 files, 2 profiles, 2 rules")


def test_check_reports_every_problem_as_file_line(nf):
    nf.write_policy('[profile.a]\negress = [ { action = "allow", prot = "tcp" } ]\n')
    nf.write_policy('[[rule]]\nusers = ["*"]\nprofiles = ["missing"]\n', name="netfence.d/x.toml")
    out = nf.cli("check", check=False)
    assert out.returncode == 1
    assert f"{nf.config_dir}/netfence.toml:2:" in out.stderr
    assert f"{nf.config_dir}/netfence.d/x.toml:3:" in out.stderr
    assert nf.netns.nft("list", "ruleset").stdout == ""


def test_explain_shows_rules_scopes_and_nft_rules(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    out = nf.cli("explain", "nobody", "--service", "sshd", "--rhost", "203.0.113.9",
                 "--at", "Tu 19:30").stdout
    assert "rule 1 (" in out and "rule 2 (" in out
    assert "user scope (every socket of uid 65534" in out and "no-plain-http" in out
    assert "scope session, profiles evening, Mo,Tu,We,Th,Fr 18:00-23:00: " in out
    assert "window open at that time, until Tu " in out and " 23:00\n" in out
    assert "chain out-evening" in out          # its rules, whether open or not
    closed = nf.cli("explain", "nobody", "--service", "sshd", "--rhost", "203.0.113.9",
                    "--at", "2026-12-05 12:00").stdout             # a Saturday
    assert "window closed at that time, next opens Mo 2026-12-07 18:00" in closed, closed
    early = nf.cli("explain", "nobody", "--service", "sshd", "--at", "2026-12-01 17:59")
    assert "next opens Tu 2026-12-01 18:00" in early.stdout, early.stdout
    # the profile's map, its element going to the rule's chain, and that chain's rule
    assert "80 . tcp . 0-2147483647 : goto out-no-plain-http.1" in out
    assert "th dport . meta l4proto . oif vmap @out-no-plain-http.any" in out
    assert ('counter reject with tcp reset comment "no-plain-http egress rule 1"'
            in out), out
    assert "not yet applied" in out
    quiet = nf.cli("explain", "nobody", "--service", "sshd", "--rhost", "10.1.1.1",
                   "--at", "2026-12-01 19:30").stdout
    assert "evening" not in quiet
    root = nf.cli("explain", "root").stdout
    assert "none: this login gets no restrictions" in root


def test_explain_rejects_bad_arguments(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    out = nf.cli("explain", "no-such-user-xyz", check=False)
    assert out.returncode == 1 and "no such user: 'no-such-user-xyz'" in out.stderr
    out = nf.cli("explain", "nobody", "--at", "someday", check=False)
    assert out.returncode == 1 and "--at 'someday'" in out.stderr


def test_status_after_reload(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    nf.cli("reload")
    nf.netns.nft("add", "element", "inet", "netfence", "uid-no-plain-http", "{ 60001 }")
    state = json.loads(nf.cli("status", "--json").stdout)
    assert state["table"] is True
    assert state["profiles"]["no-plain-http"]["uids"] == [60001]
    text = nf.cli("status").stdout
    assert "profile no-plain-http: uids 60001" in text


def test_pam_line_names_the_hook_and_private_dirs(nf):
    out = nf.cli("pam-line", "--hook", "/usr/lib/netfence/netfence-hook").stdout.strip()
    assert out == ("session required pam_exec.so seteuid quiet /usr/lib/netfence/netfence-hook "
                   f"state_dir={nf.state_dir} run_dir={nf.run_dir}")
