"""The login path stays light: no pyroute2 (≈170 ms), no json/re/enum/ipaddress.

Runs the modules the hook loads for an open and a close in a fresh `python3 -I -S`
interpreter, as the hook runs, and lists what they imported.
"""

import os
import subprocess
import sys

import netfence

HEAVY = ("pyroute2", "json", "re", "enum", "ipaddress", "socket", "dataclasses",
         "asyncio", "tomllib", "argparse")

SCRIPT = """
import sys
sys.path.insert(0, {path!r})
from netfence import (hook, accounts, hooklog, pamitems, matcher, sessions, records, cgroups,
                      fastpath, fastpath_py)
print(" ".join(sorted(sys.modules)))
"""


def test_login_path_imports_nothing_heavy():
    package_parent = os.path.dirname(os.path.dirname(netfence.__file__))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", SCRIPT.format(path=package_parent)],
                         capture_output=True, text=True, check=True, env={})
    loaded = set(out.stdout.split())
    assert "netfence.sessions" in loaded
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert not any(name.startswith("pyroute2") for name in loaded)
