"""A fixture that pins local time to UTC for tests of time windows (timed.py reads
time.localtime), and puts the process's zone back afterwards."""

import time

import pytest

MONDAY = 1795996800                     # 2026-11-30 00:00 UTC, a Monday


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
