"""Fixtures for end-to-end tests: real users, PAM stacks, su, sshd and python-pam.

Everything here needs root, and everything is removed at teardown even when the test
fails (users with their processes and homes, /etc/pam.d files, /run/nftest-* dirs,
sshd processes; network namespaces come from tests/conftest.py's `netns`).
"""

import os

import pytest

from support.pamsvc import env_recorder
from support.users import throwaway_user

IS_ROOT = os.geteuid() == 0


@pytest.fixture
def user():
    """A throwaway local user (support.users.User)."""
    if not IS_ROOT:
        pytest.skip("needs root to create users")
    with throwaway_user() as u:
        yield u


@pytest.fixture
def recorder():
    """A pam_exec program that records the PAM environment (support.pamsvc.EnvRecorder)."""
    if not IS_ROOT:
        pytest.skip("needs root")
    with env_recorder() as rec:
        yield rec
