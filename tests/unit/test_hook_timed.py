"""The hook and rules with `time` (no root): the decision's timed rules reach the
session record, the log line says until when, and the clock is read only for them."""

import time
import types

from netfence import fastpath, hook, hooklog, sessions
from support.clock import MONDAY, utc  # noqa: F401  (a fixture)
from netfence.hooklog import Log

EVERY_DAY = 0b1111111


def entry(scope, profiles, windows):
    return {"rule": 0, "scope": scope, "profiles": profiles, "windows": windows,
            "elements": {}}


def test_the_log_says_until_when_each_timed_rule_holds(utc):
    record = {"timed": [entry("session", ["lab"], [[EVERY_DAY, 8 * 60, 20 * 60]]),
                        entry("user", ["web", "mail"], [[EVERY_DAY, 22 * 60, 6 * 60]]),
                        entry("session", ["x"], [[0, 0, 1440]])]}
    now = MONDAY + 19 * 3600 + 55 * 60
    assert hooklog.timed_field(record, now) == "session:lab@20:00;user:web,mail@-;session:x@-"
    late = MONDAY + 23 * 3600
    assert hooklog.timed_field(record, late) == "session:lab@-;user:web,mail@06:00+1d;session:x@-"


LOGIN = {"rules": [{"index": 0, "scope": "session", "profiles": ("lab",),
                    "time": ((EVERY_DAY, 0, 1440),), "users": (("*",), ()),
                    "groups": ((), ()), "services": ((), ()), "ttys": ((), ()),
                    "rhosts": ((), ())}],
         "profiles": {}, "settings": {}}
ACCOUNT = types.SimpleNamespace(pw_name="alice", pw_uid=1001, pw_gid=1001)
ITEMS = {"user": "alice", "service": "sshd", "rhost": "", "tty": "ssh"}


def test_a_login_matched_only_by_a_timed_rule_is_opened_with_it(monkeypatch):
    seen = {}

    def open_session(run_dir, login, info, user_profiles, session_profiles, **kw):
        seen.update(kw, user_profiles=user_profiles, session_profiles=session_profiles)
        return {"key": "5-6", "cgroup": "/nf/s", "timed": [
            entry("session", ["lab"], [list(w) for w in LOGIN["rules"][0]["time"]])]}

    monkeypatch.setattr(sessions, "open_session", open_session)
    monkeypatch.setattr(fastpath, "_impl", fastpath._PyImpl("test"))   # put back after
    log = Log(False, "open", time.monotonic())
    budget = hook._Budget(time.monotonic())
    hook.do_open(hook.parse_args(["fastpath=python"])[0], LOGIN, ITEMS, ACCOUNT, 1,
                 budget, log)
    assert seen["user_profiles"] == seen["session_profiles"] == ()
    ((index, scope, profiles, windows),) = seen["timed_rules"]
    assert (index, scope, profiles) == (0, "session", ("lab",))
    assert log.fields["result"] == "ok"
    assert log.fields["timed"].startswith("session:lab@")
    assert log.fields["rules"] == ""                 # no untimed rule matched


def test_login_facts_do_not_read_the_clock(monkeypatch):
    """The clock is no matching fact any more: a rule with `time` is followed by the
    kernel's timeouts (and watch), whatever the time of the login."""
    def no_clock(*args):
        raise AssertionError("time.localtime called")
    monkeypatch.setattr(time, "localtime", no_clock)
    facts = hook.login_facts(LOGIN, ITEMS, ACCOUNT)
    assert facts.user == "alice" and facts.uid == 1001
