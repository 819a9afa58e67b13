"""explain's profile modes: each profile a login would get, its mode and accounting."""

from types import SimpleNamespace

from netfence.explain import _profiles_of, mode_lines

LOGIN = {"profiles": {"web": {"mode": "enforce", "denied_set": "denied-web"},
                      "trial": {"mode": "monitor"}, "old": {}}}


def test_monitor_mode_is_said_and_enforce_too():
    lines = mode_lines(LOGIN, ["web", "trial", "old"])
    assert lines[0] == "profile modes:"
    assert lines[1].startswith("  profile web: enforce mode") and "; counted (" in lines[1]
    assert lines[2].startswith("  profile trial: MONITOR mode: its deny and reject rules "
                               "only log") and "the packets pass; not counted" in lines[2]
    assert lines[3].startswith("  profile old: enforce mode")      # an older snapshot
    assert mode_lines(LOGIN, []) == []


def test_every_profile_the_login_gets_once_in_order():
    decision = SimpleNamespace(user_profiles=["web"], session_profiles=["trial", "web"],
                               timed=[(0, "session", ["lab"], [])])
    assert _profiles_of(decision, ["web", "always"]) == ["web", "trial", "lab", "always"]
