"""load_policy: which files are read, in which order, and the security checks.

Most tests use check_ownership=False on pytest's temp dirs (no root needed). The
ownership tests need root (to chown files) and a directory chain that is root-owned and
not group/other writable; they skip with a reason otherwise.
"""

import os
import shutil
import stat
import tempfile

import pytest

from netfence.errors import PolicyError
from netfence.model import Policy, Settings
from netfence.policy import load_policy
from netfence.policy_files import MAX_FILE_BYTES

PROFILE = '[profile.{name}]\negress = [ {{ action = "deny", proto = "tcp", ports = [25] }} ]\n'
RULE = '[[rule]]\nusers = ["{user}"]\nprofiles = ["{profile}"]\n'
NOBODY = 65534

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown files")


def write(path, text, mode=0o644):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def refusal(config_dir, check_ownership=False):
    with pytest.raises(PolicyError) as info:
        load_policy(str(config_dir), check_ownership=check_ownership)
    return info.value.problems


def _chain_is_safe(path):
    while True:
        st = os.lstat(path)
        if (stat.S_ISLNK(st.st_mode) or st.st_uid != 0
                or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


@pytest.fixture
def secure_dir():
    """A fresh root-owned 0755 directory whose parents are all safe (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: ownership checks want root-owned files")
    for base in ("/root", "/var/lib", "/srv", "/opt", "/run"):
        if os.path.isdir(base) and _chain_is_safe(base):
            break
    else:
        pytest.skip("no root-owned, non-writable directory chain to test in")
    path = tempfile.mkdtemp(prefix="netfence-policy-test-", dir=base)
    os.chmod(path, 0o755)
    try:
        yield __import__("pathlib").Path(path)
    finally:
        shutil.rmtree(path)


# ---- which files, in which order -----------------------------------------------------

def test_missing_config_dir_is_an_error(tmp_path):
    missing = tmp_path / "nope"
    assert refusal(missing) == [(str(missing), 0, "no such directory")]


def test_config_dir_that_is_a_file(tmp_path):
    write(tmp_path / "file", "")
    assert refusal(tmp_path / "file") == [(str(tmp_path / "file"), 0, "not a directory")]


def test_empty_dir_is_an_empty_policy(tmp_path):
    assert load_policy(str(tmp_path), check_ownership=False) == Policy(Settings(), {}, (), ())


def test_main_file_then_dropins_in_bytewise_order(tmp_path):
    write(tmp_path / "netfence.toml", PROFILE.format(name="base"))
    dropins = tmp_path / "netfence.d"
    for name, user in [("a.toml", "lower"), ("B.toml", "upper"), ("10-x.toml", "digit"),
                       ("_u.toml", "underscore")]:
        write(dropins / name, RULE.format(user=user, profile="base"))
    policy = load_policy(str(tmp_path), check_ownership=False)
    assert [os.path.basename(f) for f in policy.files] == [
        "netfence.toml", "10-x.toml", "B.toml", "_u.toml", "a.toml"]
    assert [(r.index, r.users.include) for r in policy.rules] == [
        (0, ("digit",)), (1, ("upper",)), (2, ("underscore",)), (3, ("lower",))]
    assert policy.rules[1].where.path == str(dropins / "B.toml")
    assert policy.files[0] == str(tmp_path / "netfence.toml")


def test_editor_and_other_files_are_ignored(tmp_path):
    dropins = tmp_path / "netfence.d"
    write(dropins / "ok.toml", PROFILE.format(name="ok"))
    for name in (".foo.toml", "x.toml~", ".#x.toml", "x.toml.swp", "README", "x.toml.dpkg-old",
                 "x.TOML"):
        write(dropins / name, "this is not TOML [[[")
    policy = load_policy(str(tmp_path), check_ownership=False)
    assert policy.files == (str(dropins / "ok.toml"),)


def test_dropins_without_main_file(tmp_path):
    write(tmp_path / "netfence.d" / "p.toml", PROFILE.format(name="p"))
    assert list(load_policy(str(tmp_path), check_ownership=False).profiles) == ["p"]


def test_problems_in_several_files_are_all_reported(tmp_path):
    write(tmp_path / "netfence.toml", "broken =\n")
    write(tmp_path / "netfence.d" / "a.toml", PROFILE.format(name="p") + "\nlogg = true\n")
    write(tmp_path / "netfence.d" / "b.toml", RULE.format(user="-x", profile="missing"))
    found = refusal(tmp_path)
    assert [(os.path.basename(path), line) for path, line, _ in found] == [
        ("netfence.toml", 1), ("a.toml", 4), ("b.toml", 2), ("b.toml", 3)]
    assert "did you mean 'log'?" in found[1][2]


def test_duplicate_profile_in_two_files(tmp_path):
    write(tmp_path / "netfence.toml", PROFILE.format(name="web"))
    write(tmp_path / "netfence.d" / "x.toml", "\n" + PROFILE.format(name="web"))
    assert refusal(tmp_path) == [(
        str(tmp_path / "netfence.d" / "x.toml"), 2,
        f"profile 'web' is already defined at {tmp_path / 'netfence.toml'}:1")]


def test_invalid_utf8_names_the_line(tmp_path):
    (tmp_path / "netfence.toml").write_bytes(b"[profile.p]\n# caf\xe9\n")
    assert refusal(tmp_path) == [
        (str(tmp_path / "netfence.toml"), 2, "not valid UTF-8 (byte 0xe9)")]


def test_byte_order_mark_is_ignored(tmp_path):
    (tmp_path / "netfence.toml").write_bytes(b"\xef\xbb\xbf[profile.p]\n")
    assert list(load_policy(str(tmp_path), check_ownership=False).profiles) == ["p"]


def test_oversized_file_is_refused(tmp_path):
    (tmp_path / "netfence.toml").write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    assert refusal(tmp_path) == [(str(tmp_path / "netfence.toml"), 0,
                                  f"refusing: larger than {MAX_FILE_BYTES} bytes")]


def test_a_file_of_exactly_the_limit_is_read(tmp_path):
    (tmp_path / "netfence.toml").write_bytes(b"#" * MAX_FILE_BYTES)
    assert load_policy(str(tmp_path), check_ownership=False).profiles == {}


def test_relative_config_dir_gives_absolute_paths(tmp_path, monkeypatch):
    write(tmp_path / "netfence.toml", PROFILE.format(name="p"))
    monkeypatch.chdir(tmp_path.parent)
    policy = load_policy(tmp_path.name, check_ownership=False)
    assert policy.files == (str(tmp_path / "netfence.toml"),)


# ---- refusals that hold without the ownership checks ---------------------------------

def test_symlinked_policy_file_is_refused(tmp_path):
    real = write(tmp_path / "real.toml", PROFILE.format(name="p"))
    (tmp_path / "netfence.d").mkdir()
    os.symlink(real, tmp_path / "netfence.d" / "10-x.toml")
    assert refusal(tmp_path) == [
        (str(tmp_path / "netfence.d" / "10-x.toml"), 0, "refusing: is a symbolic link")]


def test_symlinked_main_file_and_dangling_link_are_refused(tmp_path):
    os.symlink(tmp_path / "nowhere.toml", tmp_path / "netfence.toml")
    assert refusal(tmp_path) == [
        (str(tmp_path / "netfence.toml"), 0, "refusing: is a symbolic link")]


def test_symlinked_dropin_dir_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write(elsewhere / "x.toml", PROFILE.format(name="p"))
    write(tmp_path / "netfence.toml", PROFILE.format(name="main"))
    os.symlink(elsewhere, tmp_path / "netfence.d")
    assert refusal(tmp_path) == [
        (str(tmp_path / "netfence.d"), 0, "refusing: is a symbolic link")]


def test_fifo_and_directory_are_not_regular_files(tmp_path):
    dropins = tmp_path / "netfence.d"
    dropins.mkdir()
    os.mkfifo(dropins / "fifo.toml")              # must not block the reader
    (dropins / "dir.toml").mkdir()
    assert refusal(tmp_path) == [
        (str(dropins / "dir.toml"), 0, "refusing: not a regular file"),
        (str(dropins / "fifo.toml"), 0, "refusing: not a regular file")]


def test_dropin_path_that_is_a_file(tmp_path):
    write(tmp_path / "netfence.d", "")
    assert refusal(tmp_path) == [(str(tmp_path / "netfence.d"), 0, "not a directory")]


# ---- ownership and modes (root) ------------------------------------------------------

def test_insecure_parent_directory_is_refused_by_name(tmp_path):
    write(tmp_path / "netfence.toml", PROFILE.format(name="p"))
    path, insecure = str(tmp_path), None
    parents = []
    while True:
        parents.append(path)
        if path == "/":
            break
        path = os.path.dirname(path)
    for path in reversed(parents):
        st = os.lstat(path)
        if (stat.S_ISLNK(st.st_mode) or st.st_uid != 0
                or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            insecure = path
            break
    if insecure is None:
        pytest.skip("the temp directory chain is secure; nothing to refuse")
    found = refusal(tmp_path, check_ownership=True)
    assert len(found) == 1
    assert found[0][0] == insecure and found[0][2].startswith("refusing: ")


def test_secure_tree_loads(secure_dir):
    write(secure_dir / "netfence.toml", PROFILE.format(name="p"))
    write(secure_dir / "netfence.d" / "r.toml", RULE.format(user="alice", profile="p"))
    policy = load_policy(str(secure_dir))
    assert list(policy.profiles) == ["p"] and len(policy.rules) == 1


@pytest.mark.parametrize("mode, message", [
    (0o646, "refusing: writable by others (mode 0646)"),
    (0o664, "refusing: writable by group (mode 0664)"),
    (0o666, "refusing: writable by group and others (mode 0666)"),
])
def test_writable_policy_file_is_refused(secure_dir, mode, message):
    path = write(secure_dir / "netfence.d" / "10-x.toml", PROFILE.format(name="p"), mode)
    assert refusal(secure_dir, check_ownership=True) == [(str(path), 0, message)]
    with pytest.raises(PolicyError) as info:
        load_policy(str(secure_dir))
    assert str(info.value) == f"{path}: {message}"
    assert load_policy(str(secure_dir), check_ownership=False).profiles


def test_policy_file_not_owned_by_root_is_refused(secure_dir):
    path = write(secure_dir / "netfence.toml", PROFILE.format(name="p"))
    os.chown(path, NOBODY, NOBODY)
    assert refusal(secure_dir, check_ownership=True) == [
        (str(path), 0, f"refusing: not owned by root (owner uid {NOBODY})")]


def test_refused_file_does_not_hide_other_problems(secure_dir):
    bad = write(secure_dir / "netfence.d" / "a.toml", PROFILE.format(name="p"), 0o646)
    write(secure_dir / "netfence.d" / "b.toml", "oops\n")
    found = refusal(secure_dir, check_ownership=True)
    assert [(path, line) for path, line, _ in found] == [
        (str(bad), 0), (str(secure_dir / "netfence.d" / "b.toml"), 1)]


def test_insecure_dropin_dir_is_refused(secure_dir):
    write(secure_dir / "netfence.toml", PROFILE.format(name="p"))
    dropins = secure_dir / "netfence.d"
    write(dropins / "x.toml", PROFILE.format(name="q"))
    os.chown(dropins, NOBODY, NOBODY)
    assert refusal(secure_dir, check_ownership=True) == [
        (str(dropins), 0, f"refusing: not owned by root (owner uid {NOBODY})")]
    os.chown(dropins, 0, 0)
    os.chmod(dropins, 0o777)
    assert refusal(secure_dir, check_ownership=True) == [
        (str(dropins), 0, "refusing: writable by group and others (mode 0777)")]


def test_insecure_config_dir_is_refused(secure_dir):
    write(secure_dir / "netfence.toml", PROFILE.format(name="p"))
    os.chmod(secure_dir, 0o757)
    assert refusal(secure_dir, check_ownership=True) == [
        (str(secure_dir), 0, "refusing: writable by others (mode 0757)")]


def test_symlinked_config_dir_component_is_refused(secure_dir):
    real = secure_dir / "real"
    write(real / "netfence.toml", PROFILE.format(name="p"))
    os.symlink(real, secure_dir / "link")
    assert refusal(secure_dir / "link", check_ownership=True) == [
        (str(secure_dir / "link"), 0, "refusing: is a symbolic link")]
    assert load_policy(str(real)).profiles


def test_missing_config_dir_with_checks(secure_dir):
    assert refusal(secure_dir / "nope", check_ownership=True) == [
        (str(secure_dir / "nope"), 0, "no such directory")]
