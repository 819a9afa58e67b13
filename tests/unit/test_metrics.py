"""`netfence metrics`, the pure part: the Prometheus text format, parsed back by
prometheus_client's own parser."""

import errno

from prometheus_client.parser import text_string_to_metric_families

from netfence import accounting, metrics
from netfence.setkinds import SCG, UCG

S_KEY, U_KEY = SCG.key(9001), UCG.key(9000)
COUNTERS = {"acct-out": {S_KEY: (10, 1500), U_KEY: (30, 4000)},
            "acct-in": {S_KEY: (12, 2048), U_KEY: (40, 9000)},
            "denied-web": {S_KEY: (3, 180), U_KEY: (5, 300)}}


def session(key="100-5", rhost="203.0.113.9", user="alice", cgroup_id=9001, counted=True):
    mine, theirs = SCG.key(cgroup_id), U_KEY
    elements = {"acct-out": [mine], "acct-in": [mine], "denied-web": [mine]}
    return {"key": key, "user": user, "uid": 1001, "service": "sshd", "rhost": rhost,
            "cgroup_id": cgroup_id, "user_cgroup_id": 9000,
            "session_elements": elements if counted else {},
            "user_elements": {"acct-out": [theirs], "acct-in": [theirs],
                              "denied-web": [theirs]} if counted else {}}


RULES = [("out-web", "web egress rule 1", 4, 240), ("out-web", "web egress rule 1", 1, 80),
         ("out-web", "web egress default", 7, 700), ("egress", None, 99, 9900),
         ("in-web", "web ingress rule 2", 0, 0)]


def data(sessions, up=True, modes=None):
    return {"up": up, "problem": None, "table": up, "rules": RULES if up else [],
            "modes": modes if modes is not None else {
                "web": {"mode": "monitor", "account": True},
                "lab": {"mode": "enforce", "account": False}},
            "sessions": len(sessions),
            "accounting": accounting.join(sessions, [], [], COUNTERS if up else {})}


def parse(text):
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family):
    return {tuple(sorted(s.labels.items())): s.value for s in family.samples}


def test_every_family_parses_with_help_and_type():
    text = metrics.render(data([session()]))
    families = parse(text)
    assert set(families) == {
        "netfence_up", "netfence_table_present", "netfence_sessions",
        "netfence_session_sent_bytes", "netfence_session_received_bytes",
        "netfence_session_sent_packets", "netfence_session_received_packets",
        "netfence_session_denied", "netfence_user_sent_bytes", "netfence_user_received_bytes",
        "netfence_user_sent_packets", "netfence_user_received_packets",
        "netfence_user_denied", "netfence_rule_packets", "netfence_rule_bytes",
        "netfence_profile_monitor", "netfence_profile_accounting"}
    for family in families.values():
        assert family.documentation and family.type in ("gauge", "counter")
    assert families["netfence_session_sent_bytes"].type == "counter"
    for line in text.splitlines():       # HELP and TYPE for every name, before its samples
        if line.startswith("netfence_"):
            assert f"# TYPE {line.split('{')[0].split(' ')[0]} " in text


def test_session_user_and_rule_values():
    families = parse(metrics.render(data([session()])))
    labels = (("rhost", "203.0.113.9"), ("service", "sshd"), ("session", "100-5"),
              ("uid", "1001"), ("user", "alice"))
    assert samples(families["netfence_session_sent_bytes"]) == {labels: 1500}
    assert samples(families["netfence_session_received_packets"]) == {labels: 12}
    assert samples(families["netfence_session_denied"]) == {
        (("profile", "web"), ("session", "100-5"), ("uid", "1001"), ("user", "alice")): 3}
    user = (("uid", "1001"), ("user", "alice"), ("user_cgroup", "9000"))
    assert samples(families["netfence_user_received_bytes"]) == {user: 9000}
    assert samples(families["netfence_user_denied"]) == {
        tuple(sorted(user + (("profile", "web"),))): 5}
    rules = samples(families["netfence_rule_packets"])
    assert rules == {(("direction", "egress"), ("profile", "web"), ("rule", "1")): 5,
                     (("direction", "egress"), ("profile", "web"), ("rule", "default")): 7,
                     (("direction", "ingress"), ("profile", "web"), ("rule", "2")): 0}
    assert samples(families["netfence_rule_bytes"])[
        (("direction", "egress"), ("profile", "web"), ("rule", "1"))] == 320
    assert samples(families["netfence_profile_monitor"]) == {
        (("profile", "lab"),): 0, (("profile", "web"),): 1}
    assert samples(families["netfence_sessions"]) == {(): 1}
    assert samples(families["netfence_up"]) == {(): 1}


def test_a_session_without_accounting_has_no_series_not_zero():
    families = parse(metrics.render(data([session(counted=False)])))
    assert samples(families["netfence_session_sent_bytes"]) == {}
    assert samples(families["netfence_session_denied"]) == {}
    assert samples(families["netfence_sessions"]) == {(): 1}


def test_down_when_nothing_could_be_read():
    families = parse(metrics.render(data([session()], up=False, modes={})))
    assert samples(families["netfence_up"]) == {(): 0}
    assert samples(families["netfence_table_present"]) == {(): 0}
    assert samples(families["netfence_session_sent_bytes"]) == {}


def test_attack_label_values_are_escaped():
    """A value with a backslash, a double quote and a line feed (an rhost, a user name
    from NSS) stays one label value: no forged sample, no broken file."""
    evil = 'x\\"} 1\nnetfence_up 0\n'
    text = metrics.render(data([session(rhost=evil, user='a"b\\c')]))
    assert "\nnetfence_up 0\n" not in text
    families = parse(text)
    (sample,) = families["netfence_session_sent_bytes"].samples
    assert sample.labels["rhost"] == evil and sample.labels["user"] == 'a"b\\c'
    assert samples(families["netfence_up"]) == {(): 1}


def test_escape_rules_and_invalid_utf8():
    assert metrics.escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'
    assert metrics.escape_help("x\\y\nz") == "x\\\\y\\nz"
    shown = metrics.escape_label("bad\udcff")          # a lone surrogate: no crash
    shown.encode("utf-8")
    assert shown == "bad\\\\udcff"


def test_rule_totals_skip_comments_of_other_shapes():
    totals = metrics.rule_totals([("c", "web egress rule 1", 1, 2), ("c", "", 5, 5),
                                  ("c", "something else entirely here", 5, 5)])
    assert totals == {("web", "egress", "1"): [1, 2]}


def test_a_kernel_read_that_fails_is_up_0_and_the_file_is_still_whole(tmp_path, monkeypatch):
    """A failure to read counters never hides the records, never leaves a cut file."""
    from netfence.apply import Paths
    from netfence.errors import KernelError

    def broken(applied):
        raise KernelError("netlink: Operation not permitted", errno.EPERM)
    monkeypatch.setattr(metrics, "_read_kernel", broken)
    paths = Paths(str(tmp_path / "etc"), str(tmp_path / "state"), str(tmp_path / "run"))
    data = metrics.collect(paths)
    assert data["up"] is False and "Operation not permitted" in data["problem"]
    families = parse(metrics.render(data))
    assert samples(families["netfence_up"]) == {(): 0}
    assert samples(families["netfence_sessions"]) == {(): 0}


def test_status_survives_unreadable_counters(monkeypatch):
    from netfence import counters, status
    from netfence.errors import KernelError

    def broken(*args, **kwargs):
        raise KernelError("dump acct-out: No buffer space available", errno.ENOBUFS)
    monkeypatch.setattr(counters, "read_counters", broken)
    got, problem = status.read_accounting(True, {"login": {"account": {"out": "acct-out"}}})
    assert got == {} and "No buffer space" in problem
    assert status.read_accounting(False, {"login": {"account": {"out": "x"}}}) == ({}, None)
    assert status.read_accounting(True, {"login": {"account": {}}}) == ({}, None)


def test_unreadable_records_are_up_0_not_a_traceback(tmp_path, monkeypatch):
    """(Not root, or a run dir someone broke): the file is still whole, and says so."""
    from netfence.apply import Paths
    monkeypatch.setattr(metrics, "_read_kernel", lambda applied: (True, [], {}))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "sessions").write_text("not a directory")
    paths = Paths(str(tmp_path / "etc"), str(tmp_path / "state"), str(run_dir))
    data = metrics.collect(paths)
    assert data["up"] is False and "records in" in data["problem"]
    families = parse(metrics.render(data))
    assert samples(families["netfence_up"]) == {(): 0}
    assert samples(families["netfence_table_present"]) == {(): 1}
