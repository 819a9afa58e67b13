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
    assert ('counter goto out-no-plain-http.reset comment "no-plain-http egress rule 1"'
            in out), out
    # the denial chain: the grants first, then the reset
    assert "chain out-no-plain-http.reset {" in out and "reject with tcp reset" in out
    assert "not yet applied" in out
    quiet = nf.cli("explain", "nobody", "--service", "sshd", "--rhost", "10.1.1.1",
                   "--at", "2026-12-01 19:30").stdout
    assert "evening" not in quiet
    root = nf.cli("explain", "root").stdout
    assert "none: this login gets no restrictions" in root


def test_explain_rejects_bad_arguments(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    out = nf.cli("explain", "no-such-user-xyz", check=False)
    assert out.returncode == 2 and "no such user: 'no-such-user-xyz'" in out.stderr
    out = nf.cli("explain", "nobody", "--at", "someday", check=False)
    assert out.returncode == 2 and "--at 'someday'" in out.stderr


def test_status_after_reload(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    nf.cli("reload")
    assert nf.cli("status").returncode == 0            # no problem: exit 0
    nf.netns.nft("add", "element", "inet", "netfence", "uid-no-plain-http", "{ 60001 }")
    shown = nf.cli("status", "--json", check=False)
    state = json.loads(shown.stdout)
    assert state["table"] is True
    assert state["profiles"]["no-plain-http"]["uids"] == [60001]
    # an element without a session record is drift: a PROBLEM, exit 1, text and JSON
    assert shown.returncode == 1 and state["drift"]["problems"]
    text = nf.cli("status", check=False)
    assert "profile no-plain-http: uids 60001" in text.stdout
    assert text.returncode == 1 and "PROBLEM: entries without a session record" in text.stdout


def test_pam_line_names_the_hook_and_private_dirs(nf):
    out = nf.cli("pam-line", "--hook", "/usr/lib/netfence/netfence-hook").stdout.strip()
    assert out == ("session required pam_exec.so seteuid quiet /usr/lib/netfence/netfence-hook "
                   f"state_dir={nf.state_dir} run_dir={nf.run_dir}")


def test_check_json_lists_profiles_and_problems(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    good = json.loads(nf.cli("check", "--json").stdout)
    assert good["ok"] is True and good["problems"] == []
    assert good["profiles"] == ["evening", "no-plain-http"] and good["rules"] == 2
    assert good["files"] == [f"{nf.config_dir}/netfence.toml"]
    nf.write_policy('[[rule]]\nusers = ["*"]\nprofiles = ["missing"]\n',
                    name="netfence.d/x.toml")
    bad = nf.cli("check", "--json", check=False)
    assert bad.returncode == 1 and bad.stderr == ""
    shown = json.loads(bad.stdout)
    assert shown["ok"] is False and "profiles" not in shown
    (problem,) = shown["problems"]
    assert problem["file"] == f"{nf.config_dir}/netfence.d/x.toml" and problem["line"] == 3
    assert "missing" in problem["message"]


def test_explain_json_says_what_the_text_says(nf):
    nf.write_policy(POLICY.format(base=nf.cgroup_base))
    argv = ["explain", "nobody", "--service", "sshd", "--rhost", "203.0.113.9",
            "--at", "2026-12-01 19:30", "--json"]
    shown = json.loads(nf.cli(*argv).stdout)
    assert shown["login"]["user"] == "nobody" and shown["login"]["uid"] == 65534
    assert [r["rule"] for r in shown["matched_rules"]] == [1]
    assert shown["user_profiles"] == ["no-plain-http"] and shown["session_profiles"] == []
    (window,) = shown["timed"]
    assert window["profiles"] == ["evening"] and window["scope"] == "session"
    assert window["open_until"] is not None and window["next_opens"] is None
    assert shown["modes"] == {"no-plain-http": "enforce", "evening": "enforce"}
    assert shown["applied"] is False
    saturday = json.loads(nf.cli(*argv[:-3], "--at", "2026-12-05 12:00", "--json").stdout)
    (closed,) = saturday["timed"]
    assert closed["open_until"] is None and closed["next_opens"] > saturday["login"]["at"]
    nf.cli("reload")
    assert json.loads(nf.cli(*argv).stdout)["applied"] is True
    unknown = nf.cli("explain", "no-such-user-xyz", "--json", check=False)
    assert unknown.returncode == 2 and unknown.stdout == ""
