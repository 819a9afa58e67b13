"""The pure accounting join (records x per-element counters) and the status table."""

from netfence import accounting
from netfence.setkinds import SCG, UCG

SESSION_CG, USER_CG, OTHER_CG = 9001, 9000, 7001
S_KEY, U_KEY = SCG.key(SESSION_CG), UCG.key(USER_CG)


def session(key="100-5", cgroup_id=SESSION_CG, user_cgroup_id=USER_CG, counted=True,
            rhost="203.0.113.9", user="alice", uid=1001):
    record = {"key": key, "user": user, "uid": uid, "service": "sshd", "rhost": rhost,
              "tty": "ssh", "cgroup_id": cgroup_id, "user_cgroup_id": user_cgroup_id,
              "session_elements": {"scg-web": [SCG.key(cgroup_id)]}, "user_elements": {}}
    if counted:
        mine = SCG.key(cgroup_id)
        record["session_elements"].update({"acct-out": [mine], "acct-in": [mine],
                                           "denied-web": [mine]})
        theirs = UCG.key(user_cgroup_id)
        record["user_elements"] = {"acct-out": [theirs], "acct-in": [theirs],
                                   "denied-web": [theirs]}
    return record


def user_record(uid=1001, user="alice", user_cgroup_id=USER_CG):
    key = UCG.key(user_cgroup_id)
    return {"uid": uid, "user": user, "sessions": ["100-5"],
            "elements": {"acct-out": [key], "acct-in": [key], "denied-web": [key],
                         "ucg-web": [key]}}


COUNTERS = {
    "acct-out": {S_KEY: (10, 1500), U_KEY: (30, 4000)},
    "acct-in": {S_KEY: (12, 2048), U_KEY: (40, 9000)},
    "denied-web": {S_KEY: (3, 180), U_KEY: (5, 300)},
}


def test_a_counted_session_shows_its_own_element_counters():
    (row,) = accounting.session_rows([session()], [], COUNTERS)
    assert (row["sent_bytes"], row["sent_packets"]) == (1500, 10)
    assert (row["recv_bytes"], row["recv_packets"]) == (2048, 12)
    assert row["denied"] == {"web": 3} and row["counted"] is True
    assert row["key"] == "100-5" and row["service"] == "sshd"


def test_a_session_without_accounting_is_unknown_not_zero():
    """Even when the kernel holds a counter for its cgroup (another record put it
    there), a record that holds no accounting key is not credited with it."""
    (row,) = accounting.session_rows([session(counted=False)], [], COUNTERS)
    assert row["counted"] is False
    assert row["sent_bytes"] is None and row["recv_packets"] is None
    assert row["denied"] is None
    cells = accounting._session_cells(row)
    assert cells[-3:] == ("-", "-", "-")


def test_a_key_the_kernel_lacks_is_unknown_not_zero():
    (row,) = accounting.session_rows([session()], [], {"acct-out": {S_KEY: (1, 60)}})
    assert row["sent_bytes"] == 60 and row["recv_bytes"] is None
    assert row["denied"] == {"web": None}
    assert accounting.denied_text(row["denied"]) == "-"


def test_two_sessions_of_one_user_are_counted_apart_and_share_the_user_row():
    second = session(key="200-7", cgroup_id=OTHER_CG)
    counters = dict(COUNTERS, **{"acct-out": {S_KEY: (10, 1500), SCG.key(OTHER_CG): (1, 99),
                                              U_KEY: (30, 4000)}})
    rows = accounting.join([session(), second], [], [user_record()], counters)
    assert [r["sent_bytes"] for r in rows["sessions"]] == [1500, 99]
    (user,) = rows["users"]
    assert user["cgroup_id"] == USER_CG and user["sessions"] == ["100-5", "200-7"]
    assert (user["sent_bytes"], user["recv_bytes"]) == (4000, 9000)
    assert user["denied"] == {"web": 5}


def test_a_user_record_keeps_its_row_after_its_sessions_closed():
    """A user element outlives the sessions while the user has processes left."""
    (user,) = accounting.user_rows([], [user_record()], COUNTERS)
    assert user["sessions"] == [] and user["sent_bytes"] == 4000


def test_run_trees_are_rows_too():
    run = {"key": "300-1", "kind": "run", "name": "job", "user": "bob", "uid": 1002,
           "cgroup_id": OTHER_CG,
           "session_elements": {"acct-out": [SCG.key(OTHER_CG)]}}
    (row,) = accounting.session_rows([], [run], {"acct-out": {SCG.key(OTHER_CG): (2, 120)}})
    assert row["kind"] == "run" and row["service"] == "run" and row["sent_bytes"] == 120


def test_human_bytes():
    assert accounting.human_bytes(None) == "-"
    assert accounting.human_bytes(0) == "0 B"
    assert accounting.human_bytes(1023) == "1023 B"
    assert accounting.human_bytes(1024) == "1.0 KiB"
    assert accounting.human_bytes(5 * 1024 ** 3 + 1) == "5.0 GiB"
    assert accounting.human_bytes(1 << 70) == "1048576.0 PiB"


def test_denied_text():
    assert accounting.denied_text(None) == "-"
    assert accounting.denied_text({"web": 0}) == "0"
    assert accounting.denied_text({"web": 2, "lab": 1}) == "3 (lab:1,web:2)"


def test_table_columns_and_missing_values():
    rows = accounting.join([session(), session(key="200-7", cgroup_id=OTHER_CG,
                                               counted=False, rhost="")],
                           [], [user_record()], COUNTERS)
    lines = accounting.format_table(rows)
    assert lines[0].endswith(": 1 of 2 sessions and run trees counted")
    head, first, second = lines[1:4]
    assert head.split() == ["USER", "UID", "SESSION", "SERVICE", "RHOST", "SENT",
                            "RECEIVED", "DENIED"]
    assert first.split() == ["alice", "1001", "100-5", "sshd", "203.0.113.9", "1.5", "KiB",
                             "2.0", "KiB", "3"]
    assert second.split() == ["alice", "1001", "200-7", "sshd", "-", "-", "-", "-"]
    assert first.index("1.5 KiB") == head.index("SENT")      # aligned columns
    assert lines[4] == "per user (user cgroups): 1"
    assert lines[6].split()[:4] == ["alice", "1001", str(USER_CG), "2"]


def test_attack_a_value_cannot_forge_a_status_line():
    """A user name from NSS (or a damaged record) with a line feed must not start a
    line of its own (a fake PROBLEM line, a fake session) nor shift the columns."""
    evil = session(rhost="x\nPROBLEM: all good", user="ev il\\")
    lines = accounting.format_table(accounting.join([evil], [], [], COUNTERS))
    text = "\n".join(lines)
    assert not any(line.startswith("PROBLEM") for line in text.splitlines())
    assert "x\\nPROBLEM:\\x20all\\x20good" in text and "ev\\x20il\\\\" in text
    assert len(lines[2].split()) == len(lines[1].split()) + 2    # "1.5 KiB", "2.0 KiB"


def test_profile_modes_of_the_applied_snapshot():
    applied = {"login": {"profiles": {"web": {"mode": "monitor", "denied_set": "denied-web"},
                                      "old": {}}}}
    assert accounting.profile_modes(applied) == {
        "web": {"mode": "monitor", "account": True},
        "old": {"mode": "enforce", "account": False}}
    assert accounting.profile_modes({}) == {}


def test_a_user_record_without_a_uid_does_not_break_the_rows():
    """A damaged (hand-edited) record must not take status down with a TypeError."""
    odd = {"user": "x", "elements": {"acct-out": [UCG.key(5)]}}
    rows = accounting.user_rows([], [user_record(), odd], COUNTERS)
    assert [r["uid"] for r in rows] == [1001, None]
