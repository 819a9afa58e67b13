"""`netfence run`'s pure parts: arguments, the tree's record, its records (no root)."""

import errno
import pwd

import pytest

from netfence import cgroups, cli, plan, records, runtree, setkinds
from netfence.apply import Paths
from netfence.errors import UsageError

PROFILES = {"web": {"egress": True, "ingress": False, "uid_set": "uid-web",
                    "ucg_set": "ucg-web", "scg_set": "scg-web"},
            "quiet": {"egress": False, "ingress": True, "uid_set": "uid-quiet",
                      "ucg_set": "ucg-quiet", "scg_set": "scg-quiet"}}
LOGIN = {"profiles": PROFILES, "settings": {"cgroup_base": "nf"}, "policy_id": "p1",
         "guards": setkinds.guards()}
RUN = {"key": "40-50", "pid": 40, "starttime": 50, "name": "site", "user": "www",
       "uid": 33, "argv": ["/usr/sbin/nginx"], "origin": "/system.slice/x.service"}
CGROUP = {"path": "/nf/run/site-40-50", "id": 0x99, "created": True}
SCG_KEY = setkinds.SCG.key(0x99)


# ---- arguments -------------------------------------------------------------------

@pytest.mark.parametrize("name, argv, expected", [
    (None, ["/usr/sbin/nginx", "-g"], "nginx"),
    (None, ["backup.sh"], "backup.sh"),
    ("site", ["/usr/sbin/nginx"], "site"),
    (None, ["/opt/tool/"], "tool"),
    ("a" * 64, ["x"], "a" * 64),
])
def test_tree_name(name, argv, expected):
    assert runtree.tree_name(name, argv) == expected


@pytest.mark.parametrize("name, argv", [
    ("a/b", ["x"]), ("..", ["x"]), ("a" * 65, ["x"]), ("sp ace", ["x"]), ("", ["x"]),
    (None, ["/"]), (None, []), (None, [""]), ("é", ["x"]),
])
def test_tree_name_refused(name, argv):
    with pytest.raises(UsageError):
        runtree.tree_name(name, argv)


def test_profiles_must_be_in_the_applied_snapshot():
    assert runtree.check_profiles(LOGIN, ["web", "quiet", "web"]) == ["web", "quiet"]
    with pytest.raises(UsageError) as err:
        runtree.check_profiles(LOGIN, ["web", "nope"])
    assert "'nope'" in str(err.value) and "quiet, web" in str(err.value)
    with pytest.raises(UsageError, match="none"):
        runtree.check_profiles({"profiles": {}}, ["web"])
    with pytest.raises(UsageError):
        runtree.check_profiles(LOGIN, [])


def test_user_environment_is_runusers():
    account = pwd.struct_passwd(("www", "x", 33, 33, "", "/var/www", "/usr/sbin/nologin"))
    env = runtree.user_environment({"PATH": "/bin", "HOME": "/root", "USER": "root"},
                                   account)
    assert env == {"PATH": "/bin", "HOME": "/var/www", "USER": "www", "LOGNAME": "www",
                   "SHELL": "/usr/sbin/nologin"}


def test_command_is_looked_up_as_execvp_does():
    assert runtree.candidates("ls", "/a::/b") == ["/a/ls", "./ls", "/b/ls"]
    assert runtree.candidates("./x", "/a") == ["./x"]
    found = {"/b/ls": 0, "/a/ls": errno.EACCES}
    check = lambda path: found.get(path, errno.ENOENT)                # noqa: E731
    assert runtree.pick_command("ls", "/a:/b", check) == "/b/ls"
    with pytest.raises(runtree.CommandError) as err:
        runtree.pick_command("ls", "/a:/c", check)
    assert err.value.status == 126
    with pytest.raises(runtree.CommandError) as err:
        runtree.pick_command("nope", "/a:/b", check)
    assert err.value.status == 127 and "nope" in str(err.value)


def test_command_line():
    args = cli.build_parser().parse_args(
        ["run", "--profile", "a", "--profile", "b", "--user", "www", "--name", "n", "--",
         "nginx", "-g", "daemon off;", "--profile", "c"])
    assert (args.profile, args.user, args.name) == (["a", "b"], "www", "n")
    assert args.argv == ["--", "nginx", "-g", "daemon off;", "--profile", "c"]


def test_unknown_account_is_a_usage_error():
    with pytest.raises(UsageError, match="no-such-account-nf"):
        runtree.lookup_account("no-such-account-nf")


# ---- the record ------------------------------------------------------------------

def test_the_run_record_is_session_scope_keyed_by_the_trees_cgroup():
    rec = plan.run_record(LOGIN, RUN, ["web", "quiet"], CGROUP, 7.0)
    assert rec["kind"] == "run" and rec["name"] == "site" and rec["pid"] == 40
    assert rec["cgroup"] == "/nf/run/site-40-50" and rec["cgroup_id"] == 0x99
    assert rec["profiles"] == ["web", "quiet"] and rec["started"] == 7.0
    assert rec["session_elements"] == {"scg-web": [SCG_KEY], "any-scg": [SCG_KEY],
                                       "scg-quiet": [SCG_KEY]}
    assert "user_elements" not in rec


def test_closing_a_tree_destroys_its_elements_and_releases_no_user():
    rec = plan.run_record(LOGIN, RUN, ["web"], CGROUP, 7.0)
    todo = plan.close_plan(rec, [], [], None, False, {})
    assert todo["destroy"] == rec["session_elements"]
    assert todo["ours"] and not todo["release"] and todo["user_after"] is None
    assert todo["closing"]["closing"] and todo["closing"]["destroy"] == todo["destroy"]


# ---- records ---------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path):
    path = str(tmp_path / "run")
    records.ensure_dirs(path)
    return path


def test_run_records_are_live_elements_and_listed_apart(run_dir):
    rec = plan.run_record(LOGIN, RUN, ["web"], CGROUP, 7.0)
    records.write(records.run_path(run_dir, rec["key"]), rec)
    assert records.list_sessions(run_dir) == []
    assert [r["key"] for r in records.list_runs(run_dir)] == ["40-50"]
    assert records.live_elements(run_dir) == rec["session_elements"]
    (tree,) = runtree.list_trees(run_dir)
    assert tree == {"name": "site", "pid": 40, "user": "www", "profiles": ["web"],
                    "cgroup": "/nf/run/site-40-50", "since": 7.0, "ended": None}
    records.write(records.run_path(run_dir, rec["key"]), dict(rec, closing=True))
    assert records.live_elements(run_dir) == {} and runtree.list_trees(run_dir) == []


def test_own_dirs_never_lists_run_trees(tmp_path):
    mount = str(tmp_path)
    for path in ("nf/user-5/session-1-2", "nf/run/site-40-50"):
        (tmp_path / path).mkdir(parents=True)
    (tmp_path / "nf/run/site-40-50/cgroup.procs").write_text("")
    assert cgroups.own_dirs(mount, "nf") == (["/nf/user-5"], ["/nf/user-5/session-1-2"])
    assert cgroups.run_dirs(mount, "nf") == ["/nf/run/site-40-50"]
    assert cgroups.run_dirs(mount, "other") == []


def test_run_needs_root(monkeypatch, tmp_path):
    """Without root, run says so first (before it would fail somewhere in the middle,
    leaving a records tree under a --run-dir the caller owns)."""
    monkeypatch.setattr(runtree.os, "geteuid", lambda: 1000)
    paths = Paths(str(tmp_path / "etc"), str(tmp_path / "state"), str(tmp_path / "run"))
    with pytest.raises(UsageError, match="needs root"):
        runtree.run(paths, ["web"], None, None, ["true"])
    assert not (tmp_path / "run").exists()

