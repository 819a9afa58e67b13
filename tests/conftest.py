import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from support.netns import NetNS  # noqa: E402

IS_ROOT = os.geteuid() == 0

requires_root = pytest.mark.skipif(
    not IS_ROOT, reason="needs root: creates network namespaces, cgroups and users")


@pytest.fixture
def netns():
    if not IS_ROOT:
        pytest.skip("needs root to create a network namespace")
    with NetNS() as ns:
        yield ns


@pytest.fixture
def nf(netns):
    """A private netfence installation (dirs, CLI, cgroups) inside a fresh netns."""
    from support.nfenv import NfEnv
    with NfEnv(netns) as env:
        yield env
