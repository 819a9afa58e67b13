"""cgroup v2 helpers fed with fake /proc text, like psutil's tests (no root needed)."""

import pytest

from netfence import cgroups
from netfence.errors import CgroupError

HYBRID = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE_V2 = """\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
35 25 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""


def test_mountinfo_hybrid():
    assert cgroups.parse_mountinfo(HYBRID) == "/sys/fs/cgroup/unified"


def test_mountinfo_pure_v2_with_optional_fields():
    assert cgroups.parse_mountinfo(PURE_V2) == "/sys/fs/cgroup"


def test_mountinfo_escaped_mount_point():
    text = "50 31 0:40 / /mnt/my\\040cg rw - cgroup2 none rw\n"
    assert cgroups.parse_mountinfo(text) == "/mnt/my cg"


def test_mountinfo_without_cgroup2():
    assert cgroups.parse_mountinfo(HYBRID.replace("cgroup2", "cgroup")) is None
    assert cgroups.parse_mountinfo("") is None


def test_mountinfo_not_fooled_by_a_path_named_cgroup2():
    text = "60 31 0:41 / /cgroup2 rw - ext4 /dev/sda1 rw\n"
    assert cgroups.parse_mountinfo(text) is None


def test_real_mountinfo_parses():
    try:
        mount = cgroups.cgroup2_mount()
    except CgroupError:
        pytest.skip("no cgroup2 here")
    assert mount.startswith("/")


@pytest.mark.parametrize("text,path", [
    ("9:name=systemd:/\n4:memory:/x\n0::/\n", "/"),
    ("0::/user.slice/user-1000.slice/session-3.scope\n",
     "/user.slice/user-1000.slice/session-3.scope"),
    ("1:name=systemd:/a\n", None),
    ("0::/with space/and:colon\n", "/with space/and:colon"),
])
def test_proc_cgroup(text, path):
    assert cgroups.parse_proc_cgroup(text) == path


@pytest.mark.parametrize("path,expected", [
    ("/user.slice/user-1000.slice/session-3.scope", True),
    ("/user.slice/user-1000.slice/session-c12.scope", True),
    ("/user.slice/user-1000.slice/user@1000.service", False),
    ("/user.slice/user-1000.slice", False),
    ("/user.slice/user-x.slice/session-3.scope", False),
    ("/system.slice/ssh.service", False),
    ("/user.slice/user-1000.slice/session-3.scope/sub", False),
])
def test_logind_scope(path, expected):
    assert cgroups.is_logind_scope(path) is expected


def test_own_session_needs_the_same_uid_and_base():
    assert cgroups.is_own_session("/netfence/user-1001/session-5-6", "netfence", 1001)
    assert not cgroups.is_own_session("/netfence/user-1002/session-5-6", "netfence", 1001)
    assert not cgroups.is_own_session("/other/user-1001/session-5-6", "netfence", 1001)
    assert not cgroups.is_own_session("/netfence/user-1001", "netfence", 1001)


@pytest.mark.parametrize("base", ["", ".", "..", "a/b", "a b", "x" * 65, "a\n"])
def test_bad_bases(base):
    with pytest.raises(CgroupError):
        cgroups.check_base(base)


def test_good_base():
    assert cgroups.check_base("nftest-0af3") == "nftest-0af3"


def test_parent_path():
    assert cgroups.parent_path("/a/b/c") == "/a/b"
    assert cgroups.parent_path("/a") == "/"
