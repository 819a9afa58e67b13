"""Property tests: no input makes the parser fail other than with PolicyError."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netfence.errors import PolicyError
from netfence.policy import parse_policy_text
from netfence.policy_text import Locator

from test_policy import PRODUCT_EXAMPLE

FRAGMENTS = [line for line in PRODUCT_EXAMPLE.splitlines() if line.strip()] + [
    "[profile.p]", "[profile.q]", '[profile."we b"]', "[[profile.p.egress]]",
    "[[profile.p.ingress]]", "[[rule]]", "[settings]", "[rules]", "",
    'action = "deny"', 'action = "drop"', 'proto = "icmp"', 'proto = ["tcp", "any"]',
    "ports = [0, 65536, \"9-1\", 22]", 'to = ["10.0.0.1/8", "::1", "loopback"]',
    'from = ["example.org"]', 'egress = [ { action = "allow", prot = "tcp" } ]',
    'ingress = { action = "deny" }', 'users = ["-rf", "a;b", "!*"]', 'users = "!bob"',
    'groups = ["*"]', 'profiles = ["p", "nope"]', 'profiles = []', 'time = "Mo 08:00-08:00"',
    'time = ["Fr-Mo 22:00-06:00", 5]', 'rhosts = ["local", ".x.org", "10.0.0"]',
    'ttys = ["pts/*", "tty[1]"]', 'scope = "global"', "log = 1", "hook_timeout_ms = 1e3",
    'rule = [ { users = "a", profiles = "p" } ]', 'x = """', "'''", "[", "{", "]]", "=",
    'x = [\n  1,\n  [2, 3],\n]', "a.b.c = 1", '"quoted" = 2', "# comment [x]",
]

texts = st.text(max_size=300)
toml_ish = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=12)),
                    max_size=25).map("\n".join)
fast = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def outcome(files):
    """A comparable result: (policy, every location) or the problems."""
    try:
        policy = parse_policy_text(files)
    except PolicyError as err:
        return "error", err.problems
    wheres = [p.where for p in policy.profiles.values()]
    wheres += [r.where for p in policy.profiles.values() for r in p.egress + p.ingress]
    wheres += [r.where for r in policy.rules]
    return "ok", (policy, wheres)


def check_problems(result, texts_by_path):
    kind, value = result
    if kind != "error":
        return
    assert value, "a PolicyError must carry problems"
    for path, line, message in value:
        assert path in texts_by_path
        assert isinstance(line, int) and 0 <= line <= texts_by_path[path].count("\n") + 1
        assert message and "\n" not in message and "\r" not in message


@fast
@given(texts)
def test_random_text_only_raises_policy_error(text):
    check_problems(outcome([("r.toml", text)]), {"r.toml": text})


@fast
@given(st.lists(toml_ish, min_size=1, max_size=3))
def test_policy_like_text_only_raises_policy_error_and_is_deterministic(documents):
    files = [(f"/etc/netfence/netfence.d/{n}.toml", text) for n, text in enumerate(documents)]
    first = outcome(files)
    assert outcome(files) == first
    check_problems(first, dict(files))


@fast
@given(toml_ish)
def test_locator_never_fails_and_stays_inside_the_text(text):
    locator = Locator(text)
    limit = text.count("\n") + 1
    assert all(1 <= line <= limit for line in locator.lines.values())


# ---- both spellings of net rules give the same profile, with right lines -------------

def _toml(value):
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return f'"{value}"' if isinstance(value, str) else str(value)


net_rules = st.lists(st.fixed_dictionaries(
    {"action": st.sampled_from(["allow", "deny", "reject"])},
    optional={"proto": st.sampled_from(["tcp", "udp", ["tcp", "udp"]]),
              "to": st.lists(st.sampled_from(["loopback", "10.0.0.0/8", "::1", "192.0.2.7"]),
                             min_size=1, max_size=3)}),
    max_size=6)


def _with_ports(rule, ports):
    if "proto" in rule and ports:
        return {**rule, "ports": ports}
    return rule


@fast
@given(net_rules, st.lists(st.one_of(st.integers(1, 65535), st.just("1000-2000")),
                           max_size=3))
def test_inline_and_array_of_tables_spellings_agree(rules, ports):
    rules = [_with_ports(rule, ports) for rule in rules]
    inline = "[profile.p]\negress = [\n" + "".join(
        "  { " + ", ".join(f"{k} = {_toml(v)}" for k, v in rule.items()) + " },\n"
        for rule in rules) + "]\n"
    tables = "[profile.p]\n" + "".join(
        "\n[[profile.p.egress]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in rule.items())
        for rule in rules)
    first = parse_policy_text([("p.toml", inline)])
    second = parse_policy_text([("p.toml", tables)])
    assert first == second
    inline_lines, table_lines = inline.splitlines(), tables.splitlines()
    for a, b in zip(first.profiles["p"].egress, second.profiles["p"].egress):
        assert inline_lines[a.where.line - 1].startswith("  { ")
        assert table_lines[b.where.line - 1] == "[[profile.p.egress]]"
