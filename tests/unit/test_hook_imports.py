"""The login path stays light: no pyroute2 (≈170 ms), no json/re/enum/ipaddress.

Runs the modules the hook loads for an open and a close in a fresh `python3 -I -S`
interpreter, as the hook runs, and lists what they imported.
"""

import os
import subprocess
import sys

import pytest

import netfence

HEAVY = ("pyroute2", "json", "re", "enum", "ipaddress", "socket", "dataclasses",
         "asyncio", "tomllib", "argparse")

SCRIPT = """
import sys
sys.path.insert(0, {path!r})
from netfence import (hook, accounts, hooklog, pamitems, matcher, sessions, records, cgroups,
                      fastpath, fastpath_py, records_closed, counters)
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


# The netfence modules each kind of hook run loads. Every module costs a file read and
# an unmarshal (~0.1 ms) on every login: a new one on these paths must be a decision,
# so the lists are exact (docs/benchmarks.md has the hook's import cost). timed is on
# every path that touches records (which timed keys a close may destroy depends on
# the clock); it needs no matcher, so a logout does not load it.
PATHS = {
    "open, nothing matches": ("hook, matcher, accounts",
                              {"hook", "errors", "fsutil", "formats", "pamitems", "hooklog",
                               "matcher", "accounts"}),
    "open that sends": ("hook, matcher, accounts, sessions, fastpath",
                        {"hook", "errors", "fsutil", "formats", "pamitems", "hooklog",
                         "matcher", "accounts", "sessions", "plan", "records", "liveness",
                         "cgroups", "fastpath", "fastpath_py", "nfencode", "nfconst",
                         "setkinds", "timed"}),
    "close": ("hook, sessions, records, fastpath",
              {"hook", "errors", "fsutil", "formats", "pamitems", "hooklog", "sessions",
               "plan", "records", "liveness", "cgroups", "fastpath", "fastpath_py",
               "nfencode", "nfconst", "setkinds", "timed"}),
    # every close keeps its closed record; one that counted reads its totals
    "close that counts": ("hook, sessions, records, fastpath, records_closed, counters",
                          {"hook", "errors", "fsutil", "formats", "pamitems", "hooklog",
                           "sessions", "plan", "records", "liveness", "cgroups",
                           "fastpath", "fastpath_py", "nfencode", "nfconst", "setkinds",
                           "timed", "records_closed", "counters"}),
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_each_hook_path_loads_exactly_its_modules(path):
    names, expected = PATHS[path]
    package_parent = os.path.dirname(os.path.dirname(netfence.__file__))
    script = (f"import sys\nsys.path.insert(0, {package_parent!r})\n"
              f"from netfence import {names}\n"
              f"print(' '.join(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", script],
                         capture_output=True, text=True, check=True, env={})
    loaded = {name.split(".", 1)[1] for name in out.stdout.split()
              if name.startswith("netfence.") and name != "netfence._fastpath"}
    assert loaded == expected, (f"the hook's {path} path now loads "
                                f"{sorted(loaded - expected)} more and "
                                f"{sorted(expected - loaded)} fewer modules")
