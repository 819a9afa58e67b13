"""The text-level helpers of the policy parser: line locator, TOML errors, time windows."""

import pytest

from netfence.model import TimeWindow
from netfence.policy_text import Locator, TomlSyntaxError, load_toml
from netfence.timespec import ALL_DAYS, TimeSpecError, parse_days, parse_window


# ---- Locator -------------------------------------------------------------------------

def lines_of(text):
    load_toml(text)                     # the locator only ever sees valid TOML
    return Locator(text)


def test_headers_keys_and_arrays_of_tables():
    loc = lines_of('# top\n[settings]\nlog_rate = 5\n\n[[rule]]\nusers = "a"\n'
                   '[[rule]]\n\nusers = "b"\n[[rule]]\n')
    assert loc.line("settings") == 2
    assert loc.line("settings", "log_rate") == 3
    assert [loc.line("rule", n) for n in range(3)] == [5, 7, 10]
    assert loc.line("rule", 1, "users") == 9
    assert loc.line("rule", 2, "users") == 10          # falls back to the table header


def test_quoted_keys_and_dotted_keys():
    loc = lines_of('[profile."web-only"]\nlog = true\n[ profile . \'x y\' ]\n'
                   '"quoted key" = 1\nprofile2.a.b = 2\n'
                   '[profile."\\u0041"]\n')
    assert loc.line("profile", "web-only", "log") == 2
    assert loc.line("profile", "x y") == 3
    assert loc.line("profile", "x y", "quoted key") == 4
    assert loc.line("profile", "x y", "profile2", "a", "b") == 5
    assert loc.line("profile", "A") == 6


def test_nested_arrays_of_tables():
    loc = lines_of('[[profile.p.egress]]\naction = "a"\n[[profile.p.egress]]\n'
                   'action = "b"\n[profile.q]\n[[profile.q.ingress]]\n\naction = "c"\n')
    assert loc.line("profile", "p") == 1                # implicit: first mention
    assert loc.line("profile", "p", "egress", 1, "action") == 4
    assert loc.line("profile", "q", "ingress", 0, "action") == 8


def test_inline_arrays_and_tables_over_lines():
    loc = lines_of('egress = [\n  # [not.a.header]\n  { action = "a", to = ["x",\n'
                   '     "y"] },\n\n  { action = "b", ports = [\n      [1, 2],\n'
                   '      3,\n    ] },\n]\nafter = 1\n')
    assert loc.line("egress") == 1
    assert loc.line("egress", 0) == 3
    assert loc.line("egress", 0, "to", 1) == 4
    assert loc.line("egress", 1) == 6
    assert loc.line("egress", 1, "ports") == 6
    assert loc.line("egress", 1, "ports", 0) == 7
    assert loc.line("egress", 1, "ports", 1) == 8
    assert loc.line("after") == 11


def test_strings_that_look_like_structure():
    text = ('a = """\n[fake]\nb = 1\n"""\nc = \'\'\'\n[[x]]\n\'\'\'\n'
            'd = "[e] \\" # not a comment"\nf = \'#\' # comment ] }\n'
            'g = """ends with quotes"""""\nh = """line \\\n  continued"""\ni = 1\n')
    loc = lines_of(text)
    assert "fake" not in {k[0] for k in loc.lines}
    assert [loc.line(k) for k in "acdfghi"] == [1, 5, 8, 9, 10, 11, 13]


def test_crlf_line_endings():
    loc = lines_of('[settings]\r\nlog_rate = 5\r\n\r\n[[rule]]\r\nusers = "a"\r\n')
    assert (loc.line("settings", "log_rate"), loc.line("rule", 0, "users")) == (2, 5)


def test_deep_values_skipped_first_give_the_same_lines():
    """The first scan skips values deeper than Locator.SHALLOW keys whole; the lines
    after them, and every deeper path (the whole scan, on demand), are as before."""
    text = ('[profile.p]\negress = [\n  { action = "a", proto = ["tcp", # c ]\n'
            '    "udp"], to = ["x"] },\n  { action = "b", x = { y = [[1, "]"],\n'
            '    2] } },\n  [ "}", \'\'\'\n{\n\'\'\' ],\n  { a = """]\n}"""},\n]\n'
            'ingress = [{ action = "c" }]\n[[rule]]\nprofiles = [\n "p",\n]\n')
    loc = lines_of(text)
    assert [loc.line("profile", "p", "egress", n) for n in range(4)] == [3, 5, 7, 10]
    assert loc.line("profile", "p", "ingress", 0) == 13
    assert loc.line("rule", 0, "profiles", 0) == 16
    assert loc.line("profile", "p", "egress", 0, "proto", 1) == 4
    assert loc.line("profile", "p", "egress", 1, "x", "y", 1) == 6
    assert loc.line("profile", "p", "egress", 3, "a") == 10
    assert loc.lines[("profile", "p", "egress", 0, "to")] == 4


def test_unknown_paths_fall_back_to_zero():
    loc = lines_of("")
    assert loc.line("anything", 3) == 0


def test_locator_survives_invalid_text():
    for text in ('[a\n', 'x = [1, 2\n', 'x = "', "{", "x = {a = 1", "=", "[[a]", "a.=1"):
        Locator(text)                   # no exception


# ---- TOML syntax errors --------------------------------------------------------------

def test_toml_errors_get_a_line():
    with pytest.raises(TomlSyntaxError) as info:
        load_toml("a = 1\n\nb = \n")
    assert (info.value.line, info.value.message) == (3, "syntax error: Invalid value (column 5)")


def test_toml_error_at_end_of_document_points_at_the_last_line():
    with pytest.raises(TomlSyntaxError) as info:
        load_toml('a = 1\nb = "unterminated')
    assert info.value.line == 2 and info.value.message.startswith("syntax error: ")


# ---- time windows --------------------------------------------------------------------

@pytest.mark.parametrize("text, days, start, end", [
    ("Mo-Fr 08:00-20:00", 0b0011111, 480, 1200),
    ("Mo 00:00-24:00", 0b0000001, 0, 1440),
    ("Su 23:59-24:00", 0b1000000, 1439, 1440),
    ("Sa,Su 22:00-06:00", 0b1100000, 1320, 360),
    ("Mo,We,Fr 8:05-9:30", 0b0010101, 485, 570),
    ("Fr-Mo 10:00-11:00", 0b1110001, 600, 660),
    ("Mo-We,Sa 10:00-11:00", 0b0100111, 600, 660),
    ("Mo-Mo 10:00-11:00", 0b0000001, 600, 660),
    ("* 06:00-00:00", ALL_DAYS, 360, 0),
    ("Al 06:00-07:00", ALL_DAYS, 360, 420),
    ("  Tu\t01:00-02:00 ", 0b0000010, 60, 120),
])
def test_windows(text, days, start, end):
    assert parse_window(text) == TimeWindow(days, start, end)


@pytest.mark.parametrize("text", [
    "", "Mo", "Mo 08:00-08:00", "Mo 8:00", "Mo 08:00-", "Mo -09:00", "Mo 08-09",
    "Mo 008:00-09:00", "Mo 08:0-09:00", "Mo 24:00-09:00", "Mo 08:00-24:30",
    "Mo 23:60-24:00", "MO 08:00-09:00", "Mon 08:00-09:00", "Mo- 08:00-09:00",
    "Mo,,Fr 08:00-09:00", "Mo-Fr-Sa 08:00-09:00", "Wk 08:00-09:00", "** 08:00-09:00",
    "Mo 08:00-09:00-10:00", "Mo ０８:00-09:00",
])
def test_bad_windows(text):
    with pytest.raises(TimeSpecError):
        parse_window(text)


def test_days_wrap_over_the_weekend():
    assert parse_days("Su-Sa") == ALL_DAYS
    assert parse_days("Sa-Tu") == 0b1100011
