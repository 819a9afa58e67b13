"""Grants and restrictions without root: arguments, grants.json, the checks, the
transactions (timed_apply.reconcile replaced by a recorder) and the command's exits."""

import json
import os
import pwd
import stat
import time

import pytest

from netfence import cli, formats, grants, grants_cli, records, timed_apply
from netfence.apply import Paths
from netfence.errors import StateError, UsageError
from netfence.liveness import proc_starttime

PROFILES = {"web": {"egress": True, "ingress": True},
            "quiet": {"egress": False, "ingress": True},
            "empty": {"egress": False, "ingress": False}}
NOW = 1_800_000_000.0


def entry(**kw):
    base = {"id": "g-0000abcd", "kind": "grant", "profile": "web", "uid": 1000,
            "user": "alice", "created": NOW - 10, "expires": NOW + 3600,
            "reason": "ticket 7", "by": "admin"}
    return {**base, **kw}


def session_entry(**kw):
    base = entry(id="g-0000beef", **kw)
    del base["user"]
    return {**base, "session": "100-200", "cgroup_id": 77, **kw}


@pytest.fixture
def paths(tmp_path):
    state, run = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    run.mkdir(mode=0o700)
    (state / "compiled.json").write_text(json.dumps(
        {"format": formats.SNAPSHOT, "login": {"profiles": PROFILES}}))
    return Paths(str(tmp_path / "etc"), str(state), str(run))


class Kernel:
    """timed_apply as a recorder: what grants.json said at each reconcile."""

    def __init__(self, fail=None):
        self.seen, self.fail = [], fail

    def reconcile(self, run_dir, state_dir, **kw):
        self.seen.append(grants.active(state_dir, time.time()))
        if self.fail:
            raise self.fail
        return {"added": 1, "refreshed": 0, "removed": 0, "next_change": None}


@pytest.fixture
def kernel(monkeypatch):
    kernel = Kernel()
    monkeypatch.setattr("netfence.timed_apply.reconcile", kernel.reconcile)
    logged = []
    monkeypatch.setattr("netfence.apply.log_event", logged.append)
    kernel.logged = logged
    return kernel


# ---- DURATION ---------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1h30m", 5400),
    ("1d2h3m4s", 93784), ("30d", 30 * 86400), ("3s", 3), ("120m", 7200),
])
def test_durations(text, seconds):
    assert grants_cli.parse_duration(text) == seconds


@pytest.mark.parametrize("text", [
    "", "90", "1.5h", "1m1h", "1h1h", "-5m", "1h 30m", " 1h", "1H", "1w", "h", "2hours",
    "1h\n", "1h\x1b[2J", "١h",
])
def test_bad_durations_say_the_syntax(text):
    with pytest.raises(UsageError, match="duration|unprintable"):
        grants_cli.parse_duration(text)


@pytest.mark.parametrize("text", ["0s", "0d0h", "31d", "30d1s", "999999d"])
def test_durations_out_of_range_say_the_bound(text):
    with pytest.raises(UsageError, match="at most 30d"):
        grants_cli.parse_duration(text)


@pytest.mark.parametrize("seconds, text", [
    (90, "1m30s"), (5400, "1h30m"), (86400, "1d"), (0, "0s"), (-3, "0s"), (2.2, "3s"),
])
def test_format_duration(seconds, text):
    assert grants_cli.format_duration(seconds) == text


# ---- text arguments -----------------------------------------------------------------

@pytest.mark.parametrize("reason", [
    "", "   ", "x" * 201, "a\nb", "bell\x07", "esc\x1b[31m", "rtl\u202eoverride", "tab\t",
    "nul\x00",
])
def test_bad_reasons(reason):
    with pytest.raises(UsageError, match="reason"):
        grants_cli.check_reason(reason)


def test_good_reasons_are_kept_as_they_are():
    for reason in ("INC-42: exfiltration", "x" * 200, "Zoë's \"quoted\" = test"):
        assert grants_cli.check_reason(reason) == reason


def fake_nss():
    accounts = {"alice": 1000, "root": 0}
    def getpwnam(name):
        return pwd.struct_passwd((name, "x", accounts[name], 100, "", "/", "/bin/sh"))
    def getpwuid(uid):
        name = {v: k for k, v in accounts.items()}[uid]
        return getpwnam(name)
    return {"getpwnam": getpwnam, "getpwuid": getpwuid}


def test_users_by_name_or_number():
    nss = fake_nss()
    assert grants_cli.resolve_user("alice", **nss) == ("alice", 1000)
    assert grants_cli.resolve_user("1000", **nss) == ("alice", 1000)
    assert grants_cli.resolve_user("61001", **nss) == ("61001", 61001)   # no account
    assert grants_cli.resolve_user("0", **nss) == ("root", 0)


def test_names_nss_gives_with_control_characters_go_no_further():
    """An LDAP name with a newline would make grants.json unreadable for everyone
    (and forge log lines): the uid stands in for it, or the name is refused."""
    def getpwuid(uid):
        return pwd.struct_passwd(("ev\nil", "x", uid, 100, "", "/", "/bin/sh"))
    def getpwnam(name):
        return getpwuid(1000)
    assert grants_cli.resolve_user("1000", getpwnam, getpwuid) == ("1000", 1000)
    with pytest.raises(UsageError, match="give its uid instead"):
        grants_cli.resolve_user("evil", getpwnam, getpwuid)


def test_an_entry_that_could_not_be_read_back_is_never_written(paths, kernel):
    with pytest.raises(StateError, match="refusing to record.*invalid 'by'"):
        grants.add(paths, entry(), 3600, "x\ny")
    assert not os.path.exists(grants.path_of(paths.state_dir)) and kernel.seen == []


@pytest.mark.parametrize("text, message", [
    ("mallory", "unknown user 'mallory'"), ("4294967295", "out of range"),
    ("alice\n", "unprintable"), ("99999999999", "out of range"),
    ("\u0661\u0660\u0660\u0660", "unknown user"),          # Arabic-Indic digits are no uid
])
def test_bad_users(text, message):
    with pytest.raises(UsageError, match=message):
        grants_cli.resolve_user(text, **fake_nss())


def test_profiles_come_from_the_applied_snapshot(paths):
    assert grants_cli.applied_profile(paths.state_dir, "web", True)["egress"]
    with pytest.raises(UsageError, match="unknown profile 'nope'.*empty, quiet, web"):
        grants_cli.applied_profile(paths.state_dir, "nope", False)
    with pytest.raises(UsageError, match="no egress rules"):
        grants_cli.applied_profile(paths.state_dir, "quiet", True)
    assert grants_cli.applied_profile(paths.state_dir, "quiet", False)   # a grant may
    with pytest.raises(UsageError, match="no rules"):
        grants_cli.applied_profile(paths.state_dir, "empty", False)
    os.unlink(os.path.join(paths.state_dir, "compiled.json"))
    with pytest.raises(UsageError, match="has none"):
        grants_cli.applied_profile(paths.state_dir, "web", False)


def test_who_ran(tmp_path):
    loginuid = tmp_path / "loginuid"
    nss = {"getpwuid": fake_nss()["getpwuid"]}
    loginuid.write_text("1000")
    assert grants_cli.who_ran({}, str(loginuid), **nss) == "alice"
    assert grants_cli.who_ran({"SUDO_USER": "alice"}, str(loginuid), **nss) == "alice"
    assert (grants_cli.who_ran({"SUDO_USER": "root"}, str(loginuid), **nss)
            == "alice (SUDO_USER root)")
    assert "\n" not in grants_cli.who_ran({"SUDO_USER": "x\ny"}, str(loginuid), **nss)
    loginuid.write_text("4294967295")
    assert grants_cli.who_ran({}, str(loginuid), **nss) == "no-login"
    loginuid.write_text("4242")
    assert grants_cli.who_ran({}, str(loginuid), **nss) == "uid 4242"
    loginuid.write_text("7")
    evil = {"getpwuid": lambda uid: pwd.struct_passwd(("a\x1bb", "x", 7, 7, "", "/", ""))}
    assert grants_cli.who_ran({}, str(loginuid), **evil) == "uid 7"


# ---- sessions -------------------------------------------------------------------------

def write_session(run_dir, key, **kw):
    records.ensure_dirs(run_dir)
    rec = {"key": key, "ppid": os.getpid(), "starttime": proc_starttime(os.getpid()),
           "uid": 1000, "user": "alice", "cgroup_id": 77, **kw}
    records.write(records.session_path(run_dir, key), rec)


def test_a_live_session_is_found(paths):
    key = f"{os.getpid()}-{proc_starttime(os.getpid())}"
    write_session(paths.run_dir, key)
    assert grants_cli.resolve_session(paths.run_dir, key) == (key, 77, 1000)


def test_a_run_tree_is_found_while_its_cgroup_holds_a_task(paths, tmp_path):
    records.ensure_dirs(paths.run_dir)
    cgroup = tmp_path / "cg" / "nf" / "run" / "x-5-6"
    cgroup.mkdir(parents=True)
    (cgroup / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    (cgroup / "cgroup.procs").write_text("4242\n")
    records.write(records.run_path(paths.run_dir, "5-6"),
                  {"key": "5-6", "kind": "run", "uid": 33, "cgroup": "/nf/run/x-5-6",
                   "cgroup_id": 99})
    mount = str(tmp_path / "cg")
    assert grants_cli.resolve_session(paths.run_dir, "5-6", mount) == ("5-6", 99, 33)
    (cgroup / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    with pytest.raises(UsageError, match="closing or has ended"):
        grants_cli.resolve_session(paths.run_dir, "5-6", mount)


@pytest.mark.parametrize("key, record, message", [
    ("1-2", None, "unknown session '1-2'"),
    ("../x", None, "invalid session key"),
    ("", None, "invalid session key"),
    ("1-2\n", None, "unprintable"),
    ("7-8", {"closing": True}, "closing or has ended"),
    ("7-8", {"starttime": -1}, "closing or has ended"),        # its application died
])
def test_bad_sessions(paths, key, record, message):
    if record is not None:
        write_session(paths.run_dir, key, **record)
    with pytest.raises(UsageError, match=message):
        grants_cli.resolve_session(paths.run_dir, key)


# ---- grants.json ---------------------------------------------------------------------

def test_write_then_read_prunes_the_expired(paths):
    live, old = entry(), entry(id="g-00000001", expires=NOW - 1)
    grants.write(paths.state_dir, [live, old], NOW)
    path = grants.path_of(paths.state_dir)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    data = json.loads(open(path).read())
    assert data == {"format": 1, "grants": [live]}
    assert grants.read_all(paths.state_dir, NOW) == [live]
    assert grants.active(paths.state_dir, NOW) == [live]
    assert grants.active(paths.state_dir, NOW + 3600) == []     # expires is exclusive
    assert sorted(os.listdir(paths.state_dir)) == ["compiled.json", "grants.good.json",
                                                  "grants.json"]  # no temp


def test_no_file_no_grants(paths):
    assert grants.active(paths.state_dir, NOW) == []


@pytest.mark.parametrize("content, message", [
    (b"{not json", "damaged \\(not JSON"),
    (b"", "damaged"),
    (b"\xff\xfe", "damaged"),
    (b'{"format": 2, "grants": []}', "not a format 1 grants file"),
    (b'[]', "not a format 1"),
    (b'{"format": 1, "grants": {}}', "not a list"),
    (b'{"format": 1}', "not a list"),
    (json.dumps({"format": 1, "grants": [entry(uid="0")]}).encode(), "entry 1 .*: invalid 'uid'"),
    (json.dumps({"format": 1, "grants": [entry(uid=True)]}).encode(), "invalid 'uid'"),
    (json.dumps({"format": 1, "grants": [entry(), entry(expires=None)]}).encode(),
     "entry 2 .*: invalid 'expires'"),
    (json.dumps({"format": 1, "grants": [entry(kind="allow")]}).encode(), "invalid 'kind'"),
    (json.dumps({"format": 1, "grants": [entry(id="../x")]}).encode(), "invalid 'id'"),
    (json.dumps({"format": 1, "grants": [entry(reason="a\nb")]}).encode(), "invalid 'reason'"),
    (json.dumps({"format": 1, "grants": [session_entry(kind="restrict")]}).encode(),
     "restriction with a session target"),
    (json.dumps({"format": 1, "grants": [{**entry(), "user": None}]}).encode(), "'user'"),
    (b'{"format": 1, "grants": [{"id": "g-0000abcd"}]}', "no 'kind'"),
    (b'{"format": 1, "grants": [[]]}', "not an object"),
])
def test_a_damaged_file_is_an_error_naming_it(paths, content, message):
    path = grants.path_of(paths.state_dir)
    with open(path, "wb") as handle:
        handle.write(content)
    os.chmod(path, 0o600)
    with pytest.raises(StateError, match=message) as err:
        grants.active(paths.state_dir, NOW)
    assert path in str(err.value)


@pytest.mark.parametrize("bad, message", [
    (entry(expires=NOW + 1000 * 365 * 86400), "more than 31 days after 'created'"),
    (entry(created=NOW + 1000 * 365 * 86400, expires=NOW + 1000 * 365 * 86400 + 60),
     "'created' .* is in the future"),
    (session_entry(cgroup_id=2 ** 70), "invalid 'cgroup_id'.*64 bits"),
    (session_entry(cgroup_id=2 ** 64), "invalid 'cgroup_id'"),
    (entry(uid=2 ** 32 - 1), "invalid 'uid'"),
])
def test_values_the_kernel_cannot_take_make_the_file_untrusted(paths, bad, message):
    """Attack: an expires 1000 years out made the kernel refuse every restore
    (ERANGE); a cgroup_id of 2**70 raised OverflowError out of gc and watch."""
    path = grants.path_of(paths.state_dir)
    with open(path, "w") as handle:
        json.dump({"format": 1, "grants": [bad]}, handle)
    os.chmod(path, 0o600)
    with pytest.raises(StateError, match=message) as err:
        grants.active(paths.state_dir, NOW)
    assert path in str(err.value) and bad["id"] in str(err.value)
    grants.write(paths.state_dir, [entry(expires=NOW + 30 * 86400)], NOW)
    assert len(grants.active(paths.state_dir, NOW)) == 1      # the longest --for


def test_a_file_others_may_write_is_refused(paths):
    grants.write(paths.state_dir, [entry()], NOW)
    path = grants.path_of(paths.state_dir)
    os.chmod(path, 0o620)
    with pytest.raises(StateError, match="writable by group"):
        grants.active(paths.state_dir, NOW)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_foreign_owned_file_is_refused(paths):
    grants.write(paths.state_dir, [entry(kind="restrict")], NOW)
    os.chown(grants.path_of(paths.state_dir), 1000, 1000)
    with pytest.raises(StateError, match="owned by uid 1000"):
        grants.active(paths.state_dir, NOW)


def test_a_fifo_or_a_symlink_is_refused_without_hanging(paths, tmp_path):
    path = grants.path_of(paths.state_dir)
    os.mkfifo(path, 0o600)
    with pytest.raises(StateError, match="not a regular file"):
        grants.active(paths.state_dir, NOW)
    os.unlink(path)
    (tmp_path / "elsewhere").write_text('{"format": 1, "grants": []}')
    os.symlink(tmp_path / "elsewhere", path)
    with pytest.raises(StateError, match="unreadable"):
        grants.active(paths.state_dir, NOW)


def test_a_huge_file_is_refused(paths):
    path = grants.path_of(paths.state_dir)
    with open(path, "wb") as handle:
        handle.write(b" " * (grants.MAX_BYTES + 1))
    os.chmod(path, 0o600)
    with pytest.raises(StateError, match="unreadable"):
        grants.active(paths.state_dir, NOW)


# ---- conflicts ---------------------------------------------------------------------

@pytest.mark.parametrize("old, new, message", [
    (entry(), entry(id="g-1"), "already exempts user alice"),
    (entry(kind="restrict"), entry(kind="restrict"), "already restricts user alice"),
    (entry(), entry(kind="restrict"), "revoke g-0000abcd first"),
    (entry(kind="restrict"), entry(), "consulted before"),
    (entry(kind="restrict"), session_entry(), "revoke g-0000abcd first"),  # its uid
    (session_entry(), entry(kind="restrict"), "revoke g-0000beef first"),
])
def test_conflicts(old, new, message):
    assert message in grants.conflict([old], new, NOW)


@pytest.mark.parametrize("old, new", [
    (entry(), entry(profile="quiet")),                      # another profile
    (entry(expires=NOW), entry(kind="restrict")),           # expired
    (entry(kind="restrict"), entry(kind="restrict", uid=1001, user="bob")),
    (session_entry(), entry()),                             # user and one of its sessions
    (session_entry(), session_entry(session="300-400", cgroup_id=78)),
])
def test_no_conflicts(old, new):
    assert grants.conflict([old], new, NOW) == ""


def test_at_most_max_active(monkeypatch):
    monkeypatch.setattr(grants, "MAX_ACTIVE", 2)
    old = [entry(uid=1), entry(uid=2), entry(uid=3, expires=NOW - 1)]
    assert "2 grants and restrictions are active" in grants.conflict(old, entry(), NOW)


def test_log_lines_cannot_be_forged():
    line = grants.event_line("grant", entry(reason='x event=revoke by="root"'),
                             "alice (SUDO_USER bob)")
    assert line.startswith("event=grant id=g-0000abcd by='alice (SUDO_USER bob)' "
                           "user=alice uid=1000 profile=web until=")
    assert line.endswith("reason='x event=revoke by=\"root\"'")
    assert line.count("event=") == 2 and "\n" not in line
    line = grants.event_line("revoke", session_entry(), "root", kind="grant")
    assert "session=100-200" in line and line.endswith("kind=grant")


# ---- transactions ----------------------------------------------------------------------

def test_add_writes_the_intent_then_reconciles_and_logs(paths, kernel):
    before = time.time()
    made = grants.add(paths, entry(id=None, by=None, created=0, expires=0), 90, "root")
    assert grants.is_grant_id(made["id"]) and made["by"] == "root"
    assert before - 0.001 <= made["created"] <= time.time() + 0.001   # ms precision
    assert made["expires"] == pytest.approx(made["created"] + 90)
    assert kernel.seen == [[made]]                      # the file held it already
    assert grants.read_all(paths.state_dir) == [made]
    assert kernel.logged[0].startswith(f"event=grant id={made['id']} by=root")


def test_a_refused_reconcile_puts_the_file_back(paths, kernel):
    from netfence.errors import KernelError
    first = grants.add(paths, entry(), 3600, "root")
    before = open(grants.path_of(paths.state_dir), "rb").read()
    kernel.fail = KernelError("timed sets", 2, "no such set ruid-web")
    with pytest.raises(StateError, match="no such set ruid-web.*put back"):
        grants.add(paths, entry(kind="restrict", uid=1001, user="bob"), 3600,
                   "root")
    assert open(grants.path_of(paths.state_dir), "rb").read() == before
    assert kernel.logged[-1].endswith("result=failed error='timed sets: No such file or "
                                      "directory (errno 2): no such set ruid-web'")
    with pytest.raises(StateError, match="put back"):
        grants.revoke(paths, first["id"], "root")
    assert open(grants.path_of(paths.state_dir), "rb").read() == before


def test_a_refused_first_grant_leaves_no_file(paths, kernel):
    kernel.fail = StateError("records lock held")
    with pytest.raises(StateError):
        grants.add(paths, entry(), 3600, "root")
    assert not os.path.exists(grants.path_of(paths.state_dir))


def test_without_a_table_a_grant_fails_and_a_revoke_stands(paths, kernel):
    """The revoked entry must not come back when gc or reload rebuilds the table
    from grants.json; a grant without a table would enforce nothing."""
    one = grants.add(paths, entry(), 3600, "root")
    kernel.fail = timed_apply.NoPolicyApplied("no policy is applied")
    with pytest.raises(StateError, match="no policy is applied.*put back"):
        grants.add(paths, entry(profile="quiet"), 3600, "root")
    assert grants.read_all(paths.state_dir) == [one]
    grants.revoke(paths, one["id"], "root")
    assert grants.read_all(paths.state_dir) == []
    assert kernel.logged[-1].endswith("table=missing")


def test_revoke_removes_then_reconciles(paths, kernel):
    one = grants.add(paths, entry(), 3600, "root")
    two = grants.add(paths, entry(profile="quiet"), 3600, "root")
    assert grants.revoke(paths, one["id"], "bob")["id"] == one["id"]
    assert kernel.seen[-1] == [two]
    assert grants.read_all(paths.state_dir) == [two]
    assert kernel.logged[-1].startswith(f"event=revoke id={one['id']} by=bob")
    with pytest.raises(UsageError, match=f"no grant or restriction {one['id']} in force"):
        grants.revoke(paths, one["id"], "bob")
    with pytest.raises(UsageError, match="invalid id"):
        grants.revoke(paths, "g-../../x", "bob")


def test_a_damaged_file_stops_every_change(paths, kernel):
    """Rewriting it would lose the restrictions it holds: the next reconcile would
    destroy them in the kernel."""
    path = grants.path_of(paths.state_dir)
    with open(path, "w") as handle:
        handle.write('{"format": 1, "grants": [{"id": "g-0000abcd", "kind": "restr')
    os.chmod(path, 0o600)
    for change in (lambda: grants.add(paths, entry(), 3600, "root"),
                   lambda: grants.revoke(paths, "g-0000abcd", "root")):
        with pytest.raises(StateError, match="damaged"):
            change()
    assert kernel.seen == [] and open(path).read().endswith("restr")


# ---- the command ------------------------------------------------------------------------

def run_cli(paths, *argv):
    return cli.main(["--state-dir", paths.state_dir, "--run-dir", paths.run_dir, *argv])


@pytest.mark.parametrize("argv, message", [
    (["grant", "alice", "--profile", "web", "--for", "2x", "--reason", "r"], "invalid duration"),
    (["grant", "alice", "--profile", "web", "--for", "31d", "--reason", "r"], "at most 30d"),
    (["grant", "alice", "--profile", "web", "--for", "1h", "--reason", ""], "reason is empty"),
    (["grant", "alice", "--profile", "web", "--for", "1h", "--reason", "a\x1bb"], "unprintable"),
    (["grant", "nfnosuchuser", "--profile", "web", "--for", "1h", "--reason", "r"],
     "unknown user 'nfnosuchuser'"),
    (["grant", "root", "--profile", "nope", "--for", "1h", "--reason", "r"], "unknown profile"),
    (["restrict", "root", "--profile", "web", "--for", "1h", "--reason", "r"],
     "refusing to restrict root"),
    (["restrict", "65534", "--profile", "quiet", "--for", "1h", "--reason", "r"],
     "no egress rules"),
    (["grant", "--session", "9-9", "--profile", "web", "--for", "1h", "--reason", "r"],
     "unknown session"),
    (["revoke", "g-12345678"], "no grant or restriction g-12345678"),
    (["revoke", "x\ny"], "unprintable"),
])
def test_bad_arguments_exit_2_and_change_nothing(paths, kernel, capsys, argv, message):
    assert run_cli(paths, *argv) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(grants.path_of(paths.state_dir)) and kernel.seen == []


def test_grant_list_revoke(paths, kernel, capsys):
    assert run_cli(paths, "grant", "root", "--profile", "web", "--for", "1h30m",
                   "--reason", "INC-1 cut") == 0
    out = capsys.readouterr().out
    assert "exempts" not in out and "user root (uid 0) from profile web until" in out
    assert out.rstrip().endswith("(1h30m)")
    assert run_cli(paths, "restrict", "65534", "--profile", "web", "--for", "2h",
                   "--reason", "INC-2") == 0
    capsys.readouterr()
    assert run_cli(paths, "grants", "--json") == 0
    listed = json.loads(capsys.readouterr().out)["grants"]
    assert [(g["kind"], g["target"], g["remaining"]) for g in listed] == [
        ("grant", "user root", "1h30m"), ("restrict", f"user {pwd.getpwuid(65534).pw_name}", "2h")]
    assert run_cli(paths, "grants") == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["ID", "KIND", "TARGET", "PROFILE", "EXPIRES", "LEFT", "BY",
                               "REASON"]
    assert text[1].endswith("INC-1 cut") and listed[0]["id"] in text[1]
    assert run_cli(paths, "revoke", listed[0]["id"]) == 0
    assert capsys.readouterr().out.startswith(f"revoked {listed[0]['id']}: user root")
    assert run_cli(paths, "grants") == 0
    assert listed[0]["id"] not in capsys.readouterr().out


def test_a_damaged_file_exits_1_naming_it(paths, kernel, capsys):
    path = grants.path_of(paths.state_dir)
    with open(path, "w") as handle:
        handle.write("{")
    os.chmod(path, 0o600)
    assert run_cli(paths, "grants") == 1
    assert path in capsys.readouterr().err
    assert run_cli(paths, "grant", "root", "--profile", "web", "--for", "1h",
                   "--reason", "r") == 1
    assert path in capsys.readouterr().err


def test_the_profile_is_checked_again_under_the_state_lock(paths, kernel):
    """A reload between the argument checks and the change may remove the profile."""
    def removed():
        raise UsageError("unknown profile 'web'")
    with pytest.raises(UsageError, match="unknown profile"):
        grants.add(paths, entry(), 3600, "root", recheck=removed)
    assert not os.path.exists(grants.path_of(paths.state_dir)) and kernel.seen == []


def test_the_listing_marks_a_profile_no_longer_applied(paths, kernel, capsys):
    assert run_cli(paths, "grant", "root", "--profile", "quiet", "--for", "1h",
                   "--reason", "r") == 0
    compiled = os.path.join(paths.state_dir, "compiled.json")
    with open(compiled, "w") as handle:
        json.dump({"format": formats.SNAPSHOT, "login": {"profiles": {"web": {}}}}, handle)
    capsys.readouterr()
    assert run_cli(paths, "grants") == 0
    assert "quiet (not applied)" in capsys.readouterr().out
    assert run_cli(paths, "grants", "--json") == 0
    assert json.loads(capsys.readouterr().out)["grants"][0]["profile_applied"] is False


def test_the_last_good_copy_keeps_restrictions_never_grants(paths, kernel):
    """A damaged grants.json is never read as "no grants": restore and reconcile
    keep the restrictions of the last file written; a grant (or a revoked entry)
    never comes back from it."""
    cut = entry(id="g-0000c0de", kind="restrict", created=time.time(),
                expires=time.time() + 600)
    grant = entry(created=time.time(), expires=time.time() + 600)
    gone = dict(cut, id="g-0000dead", uid=1001, user="bob")
    grants.write(paths.state_dir, [cut, grant, gone], time.time())
    grants.write(paths.state_dir, [cut, grant], time.time())      # gone revoked
    assert grants.kept_restrictions(paths.state_dir, time.time()) == [cut]
    with open(grants.path_of(paths.state_dir), "wb") as handle:
        handle.write(b"{cut")
    assert grants.kept_restrictions(paths.state_dir, time.time()) == [cut]
    assert grants.kept_restrictions(paths.state_dir, time.time() + 601) == []
    os.chmod(grants.good_path_of(paths.state_dir), 0o666)         # untrusted too
    assert grants.kept_restrictions(paths.state_dir, time.time()) == []


def test_an_untrusted_file_destroys_nothing_in_grant_sets():
    destroy = {"guid-web": ["aa"], "ruid-web": ["bb", "cc"], "any-ruid": ["bb"],
               "tuid-web": ["dd"]}
    add = {"ruid-web": {"cc": 5000}}                          # a refresh: kept
    counts = {"added": 0, "refreshed": 1, "removed": 4}
    assert timed_apply.keep_grant_sets(destroy, add, counts) == {
        "ruid-web": ["cc"], "tuid-web": ["dd"]}
    assert counts["removed"] == 1
