"""watch_sources.event_kind: which nf_tables event messages concern table inet netfence,
and how (no root: messages built by nfencode as the kernel sends them)."""

import os
import struct

import pytest

from netfence import nfconst
from netfence.liveness import proc_starttime
from netfence.nfencode import attr, cstring, element_list_message, message, nft_message
from netfence import cli
from netfence.hooklog import field
from netfence.watch import Watch
from netfence.watch_sources import event_kind, open_pidfd

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NFPROTO_IPV4 = 2


def _object(msg_type, table, family=nfconst.NFPROTO_INET):
    body = attr(1, cstring(table)) + attr(3, cstring("egress"))
    return nft_message(msg_type, 0, body, family=family)


def test_a_deleted_table_or_a_new_rule_of_ours_is_a_table_event():
    assert event_kind(_object(nfconst.NFT_MSG_DELTABLE, "netfence"), b"netfence") == "table"
    assert event_kind(_object(nfconst.NFT_MSG_NEWRULE, "netfence"), b"netfence") == "table"


def test_element_changes_are_element_events_and_table_wins():
    elements = element_list_message(nfconst.NFT_MSG_NEWSETELEM, 0, 0, "netfence", "uid-web",
                                    [bytes(4)])
    assert event_kind(elements, b"other") is None
    assert event_kind(elements, b"netfence") == "elements"
    both = elements + _object(nfconst.NFT_MSG_NEWCHAIN, "netfence")
    assert event_kind(both, b"netfence") == "table"


def test_other_tables_families_and_generation_messages_are_not_ours():
    assert event_kind(_object(nfconst.NFT_MSG_DELTABLE, "filter"), b"netfence") is None
    assert event_kind(_object(nfconst.NFT_MSG_DELTABLE, "netfence", NFPROTO_IPV4),
                      b"netfence") is None
    gen = nft_message(nfconst.NFT_MSG_NEWGEN, 0, attr(1, struct.pack(">I", 7)))
    assert event_kind(gen, b"netfence") is None


def test_a_truncated_or_foreign_message_is_not_misread():
    assert event_kind(b"\x00" * 10, b"netfence") is None
    route = message(16, 0, 0, 0, b"")            # RTM_NEWLINK-like, not nfnetlink
    assert event_kind(route, b"netfence") is None


def test_a_pidfd_is_only_given_for_the_recorded_start_time():
    """A pid the kernel reused names another process: never watched in its place."""
    start = proc_starttime(os.getpid())
    assert open_pidfd(os.getpid(), start + 1) == (None, False)
    fd, hidden = open_pidfd(os.getpid(), start)
    assert fd is not None and not hidden
    os.close(fd)
    assert open_pidfd(2 ** 22 + 1, 0) == (None, False)     # no such process


def test_log_fields_cannot_forge_a_line():
    """A user-chosen name (a session key, a cgroup path) with a newline or a control
    character is quoted: one event, one line."""
    assert field("a\nevent=closed") == repr("a\nevent=closed")
    assert field("x\x1b[2J") == repr("x\x1b[2J")
    assert field("") == "-" and field("plain") == "plain"
    assert field("a b") == "'a b'"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "x"])
def test_gc_interval_must_be_finite_and_positive(value):
    """nan or inf made the loop spin (every timeout computed as nan or 0)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["watch", "--gc-interval", value])
    assert exit_info.value.code == 2


def test_the_unit_never_stops_restarting_and_has_descriptors_for_sessions():
    unit = open(os.path.join(REPO, "packaging/systemd/netfence-watch.service")).read()
    head = unit.split("[Service]")[0]
    assert "\nStartLimitIntervalSec=0\n" in head
    assert "\nLimitNOFILE=524288\n" in unit
    assert "\nCapabilityBoundingSet=CAP_NET_ADMIN\n" in unit


def test_a_bad_input_never_ends_the_loop():
    """Any exception in an action (a malformed record, a bug) is logged; the loop
    goes on (it used to catch only NetfenceError and OSError)."""
    watch = Watch.__new__(Watch)
    lines = []
    watch.log = lambda **fields: lines.append(fields)

    def broken():
        return {}["ppid"]

    watch._guarded(broken)
    assert lines and lines[0]["event"] == "error" and "KeyError" in lines[0]["error"]


def test_event_driven_repairs_never_resolve_nss(monkeypatch):
    """A stuck NSS directory must not hold the state lock in a repair an event
    started: only the periodic gc widens the always rules."""
    from types import SimpleNamespace
    from netfence import watch_actions
    calls = []
    drift = SimpleNamespace(ok=False, problems=lambda: ["table missing"])
    monkeypatch.setattr(watch_actions, "read_snapshot", lambda state_dir: {"x": 1})
    monkeypatch.setattr(watch_actions, "check_steadily", lambda applied, paths: drift)
    monkeypatch.setattr(watch_actions, "repair_table", lambda paths, **kw: calls.append(kw)
                        or SimpleNamespace(action="restored", error=None))
    fields, repaired = watch_actions.check_and_repair(SimpleNamespace(state_dir="/x"))
    assert repaired and calls == [{"widen": False}]


def test_the_zone_is_read_again_before_each_window_computation(monkeypatch):
    """`timedatectl set-timezone` while watch runs: localtime must follow."""
    from types import SimpleNamespace
    from netfence import watch_actions
    zones = []
    monkeypatch.setattr("time.tzset", lambda: zones.append(1))
    monkeypatch.setattr(watch_actions, "reconcile_windows", lambda paths: (None, None))
    watch = Watch.__new__(Watch)
    watch.paths, watch.counts = None, {"reconciles": 0}
    watch.wall = SimpleNamespace(at=None, arm=lambda epoch: None)
    watch._reconcile()
    assert zones and watch.counts["reconciles"] == 1


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one():
    """One pidfd per live session: the default soft 1024 ended watch near 1,000
    sessions (every action then failed with EMFILE)."""
    import subprocess
    import sys
    code = ("import resource; from netfence.watch_actions import raise_fd_limit; "
            "cap = raise_fd_limit(); print(cap, *resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run(["prlimit", "--nofile=100:2000", "--", sys.executable, "-c", code],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1968", "2000", "2000"]
