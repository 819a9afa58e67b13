"""The Debian package's source (packaging/debian): what can be checked without building.

The build itself, lintian and the install/upgrade/remove/purge test are
packaging/build-deb.sh and packaging/test-deb.sh (root, in CI)."""

import os
import re
import shutil
import subprocess
import tomllib

import pytest

import netfence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEBIAN = os.path.join(ROOT, "packaging", "debian")
SCRIPTS = ["netfence.preinst", "netfence.postinst", "netfence.prerm", "netfence.postrm"]
PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+-]+)$")

pytestmark = pytest.mark.skipif(not os.path.isdir(DEBIAN), reason="no source tree")


def read(*parts):
    with open(os.path.join(*parts)) as handle:
        return handle.read()


def requirement_pins():
    lines = [line.split("#", 1)[0].strip()
             for line in read(DEBIAN, "requirements.txt").splitlines()]
    return [line for line in lines if line]


def test_every_venv_requirement_is_an_exact_pin():
    pins = requirement_pins()
    assert pins
    for line in pins:
        assert PIN.match(line), f"not an exact pin: {line!r}"


def test_the_exact_pins_of_pyproject_are_the_packages():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    exact = {dep.split("==")[0].lower(): dep for dep in dependencies if "==" in dep}
    pinned = {PIN.match(line).group(1).lower(): line for line in requirement_pins()}
    for name, dep in exact.items():
        assert pinned.get(name) == dep.replace(" ", ""), f"{dep} vs {pinned.get(name)}"


def test_the_changelog_version_is_netfences():
    first = read(DEBIAN, "changelog").splitlines()[0]
    version = re.match(r"^netfence \(([^)]+)\) ", first).group(1)
    assert re.match(re.escape(netfence.__version__) + r"($|[+~-])", version), version


@pytest.mark.parametrize("script", SCRIPTS)
def test_maintainer_scripts_are_valid_dash(script):
    dash = shutil.which("dash")
    if not dash:
        pytest.skip("no dash")
    path = os.path.join(DEBIAN, script)
    subprocess.run([dash, "-n", path], check=True)
    text = read(path)
    assert text.startswith("#!/bin/sh\n") and "set -e\n" in text
    assert text.count("#DEBHELPER#") == 1
    # dash's kill takes "--" for a pid: a process group must be `kill -SIG -PGID`
    assert not re.search(r"\bkill\b[^\n]*\s--\s", text), "kill -- in a /bin/sh script"


def test_postinst_wires_pam_last():
    """The hook is written and the table loaded before PAM names the hook."""
    text = read(DEBIAN, "netfence.postinst")
    configure = text.index("    configure)\n")
    order = [text.index("write_hook\n", configure), text.index("load_table\n", configure),
             text.index("#DEBHELPER#"), text.index('enable_pam "$2"')]
    assert order == sorted(order)


def test_prerm_unwires_pam_before_the_table_goes():
    text = read(DEBIAN, "netfence.prerm")
    remove = text.index("    remove|deconfigure)\n")
    order = [text.index("unwire_pam\n", remove), text.index("stop_watch\n", remove),
             text.index("flush", remove)]
    assert order == sorted(order)
    # an upgrade leaves PAM and the table alone
    assert "upgrade)" not in text.split("#DEBHELPER#")[0]


def test_the_pam_profile_is_not_shipped_where_pam_auth_update_finds_it():
    """Another package's pam-auth-update run before our postinst must not wire the
    hook: the profile reaches /usr/share/pam-configs only in postinst."""
    commands = [line for line in read(DEBIAN, "rules").splitlines()
                if not line.strip().startswith("#")]
    assert not [line for line in commands if "pam-configs" in line]
    assert [line for line in commands if "usr/share/netfence/pam-config" in line]
