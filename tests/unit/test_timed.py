"""timed.py: when a time window's elements expire and open again, from the clock
(no root). Local time is UTC here; daylight saving time runs in a subprocess with TZ."""

import os
import subprocess
import sys
import time

import pytest

from netfence import timed
from support.clock import MONDAY, utc  # noqa: F401  (a fixture)

WORKDAYS = 0b0011111
EVERY_DAY = 0b1111111
FRI, SAT, SUN = 1 << 4, 1 << 5, 1 << 6


def at(day, hour, minute=0):
    """Epoch of Monday 2026-11-30 + day days, hour:minute UTC."""
    return MONDAY + day * 86400 + hour * 3600 + minute * 60


@pytest.fixture(autouse=True)
def local_time_is_utc(utc):
    yield


def test_the_epoch_helper_is_a_monday_midnight():
    lt = time.localtime(at(0, 0))
    assert (lt.tm_wday, lt.tm_hour, lt.tm_min) == (0, 0, 0)


def test_open_until_the_end_of_the_window():
    windows = [[WORKDAYS, 8 * 60, 20 * 60]]
    assert timed.open_until(windows, at(0, 19, 55)) == at(0, 20)
    assert timed.open_until(windows, at(0, 8)) == at(0, 20)        # the first minute
    assert timed.open_until(windows, at(0, 20)) is None            # the end is out
    assert timed.open_until(windows, at(0, 7, 59)) is None
    assert timed.open_until(windows, at(5, 12)) is None            # Saturday


def test_a_window_crossing_midnight_runs_into_the_next_day():
    windows = [[FRI, 22 * 60, 6 * 60]]                                # Fr 22:00-06:00
    assert timed.open_until(windows, at(4, 23)) == at(5, 6)
    assert timed.open_until(windows, at(5, 5, 59)) == at(5, 6)      # Saturday morning
    assert timed.open_until(windows, at(6, 5)) is None              # not Sunday's


def test_adjacent_windows_run_on():
    windows = [[EVERY_DAY, 8 * 60, 12 * 60], [EVERY_DAY, 12 * 60, 20 * 60]]
    assert timed.open_until(windows, at(0, 9)) == at(0, 20)
    night = [[EVERY_DAY, 22 * 60, 0], [EVERY_DAY, 0, 6 * 60]]        # 22:00-24:00, 0-6
    assert timed.open_until(night, at(0, 23)) == at(1, 6)


def test_a_window_that_never_closes_is_cut_at_the_horizon():
    windows = [[EVERY_DAY, 0, 1440]]                                 # all day, every day
    now = at(0, 10)
    assert timed.open_until(windows, now) == now + timed.HORIZON_DAYS * 86400


def test_next_opening():
    windows = [[WORKDAYS, 8 * 60, 20 * 60]]
    assert timed.next_opening(windows, at(0, 7, 55)) == at(0, 8)
    assert timed.next_opening(windows, at(0, 9)) == at(1, 8)        # open now: the next
    assert timed.next_opening(windows, at(4, 20, 30)) == at(7, 8)   # Friday evening
    assert timed.next_opening([[SUN, 22 * 60, 2 * 60]], at(6, 12)) == at(6, 22)


def entry(scope, windows, elements):
    return {"rule": 0, "scope": scope, "profiles": ["lab"], "windows": windows,
            "elements": elements}


def test_record_elements_and_keys():
    record = {"timed": [entry("user", [[WORKDAYS, 8 * 60, 20 * 60]], {"tuid-lab": ["aa"]}),
                        entry("session", [[WORKDAYS, 8 * 60, 12 * 60]],
                              {"tscg-lab": ["bb"], "any-tscg": ["bb"]}),
                        entry("session", [[SAT, 8 * 60, 12 * 60]], {"tscg-x": ["cc"]})]}
    assert timed.record_elements(record, at(0, 9)) == {
        "tuid-lab": {"aa": at(0, 20)}, "tscg-lab": {"bb": at(0, 12)},
        "any-tscg": {"bb": at(0, 12)}}
    assert timed.record_elements(record, at(0, 9), "user") == {"tuid-lab": {"aa": at(0, 20)}}
    assert timed.record_elements(record, at(0, 21)) == {}
    assert timed.record_elements(dict(record, closing=True), at(0, 9)) == {}
    assert timed.record_keys(record, "session") == {"tscg-lab": ["bb"], "any-tscg": ["bb"],
                                                    "tscg-x": ["cc"]}


def test_a_key_expires_with_its_last_source():
    merged = timed.merge_max({"s": {"k": 10}}, {"s": {"k": 30, "j": 5}})
    assert timed.merge_max(merged, {"s": {"k": 20}}) == {"s": {"k": 30, "j": 5}}
    assert timed.timeouts_ms({"s": {"k": 100.5}}, 100.0) == {"s": {"k": 500}}
    assert timed.timeouts_ms({"s": {"k": 99.0}}, 100.0) == {"s": {"k": 1}}


DST_SCRIPT = """
import sys, time
sys.path.insert(0, {path!r})
from netfence import timed
for now, windows in {cases!r}:
    until = timed.open_until(windows, now)
    print(until - now if until is not None else None,
          timed.next_opening(windows, now) - now)
"""


def test_daylight_saving_time_changes_the_length_not_the_wall_clock():
    """Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST (a 23 h day), 2026-10-25
    03:00 CEST -> 02:00 CET (25 h). A window ends at its wall-clock minute."""
    sunday = [[SUN, 60, 4 * 60]]                           # Sunday 01:00-04:00
    spring = 1774744200                                    # 2026-03-29 01:30 CET
    autumn_window = [[SUN, 0, 5 * 60]]                     # Sunday 00:00-05:00
    autumn = 1792881000                                    # 2026-10-25 00:30 CEST
    cases = [(spring, sunday), (autumn, autumn_window)]
    import netfence
    path = os.path.dirname(os.path.dirname(netfence.__file__))
    out = subprocess.run([sys.executable, "-I", "-c",
                          DST_SCRIPT.format(path=path, cases=cases)],
                         capture_output=True, text=True, check=True,
                         env={"TZ": "Europe/Berlin"}).stdout.split()
    # 01:30 CET -> 04:00 CEST is 1.5 h of real time (02:00-03:00 does not exist)
    assert int(float(out[0])) == 5400
    assert int(float(out[1])) == 7 * 86400 - 5400         # next Sunday 01:00 CEST
    # 00:30 CEST -> 05:00 CET is 5.5 h (02:00-03:00 happens twice)
    assert int(float(out[2])) == 19800
    assert int(float(out[3])) == 7 * 86400 + 1800         # next Sunday 00:00 CET


def test_adjacent_windows_of_two_rules_sharing_a_key_run_on():
    """Bug: expiry per entry, max'ed: 08:00-12:00 + 12:00-20:00 gave 12:00."""
    morning = entry("user", [[WORKDAYS, 8 * 60, 12 * 60]], {"tuid-lab": ["aa"]})
    afternoon = entry("user", [[WORKDAYS, 12 * 60, 20 * 60]], {"tuid-lab": ["aa"]})
    assert timed.record_elements({"timed": [morning, afternoon]}, at(0, 9)) == \
        {"tuid-lab": {"aa": at(0, 20)}}
    two_records = timed.desired([{"timed": [morning]}], [], [], at(0, 9),
                                users=[{"timed": [afternoon]}])
    assert two_records == {"tuid-lab": {"aa": at(0, 20)}}
    closing = timed.desired([{"timed": [morning]}], [], [], at(0, 9),
                            users=[{"timed": [afternoon], "closing": True}])
    assert closing == {"tuid-lab": {"aa": at(0, 12)}}


def test_a_boundary_inside_the_skipped_or_the_repeated_hour():
    """Europe/Berlin. 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC); a window
    boundary at 02:30 never shows on the clock: it is crossed at the jump (mktime
    read it as 03:30 CEST: a window opening then came 30 min late). 2026-10-25:
    03:00 CEST falls back to 02:00 CET (01:00 UTC); 02:30 shows twice: a window
    opens at the first (mktime took the second: an hour late) and closes at the
    last (never shorter than the wall clock says)."""
    spring_opens = [[SUN, 150, 300]]          # Sunday 02:30-05:00
    spring_closes = [[SUN, 60, 150]]          # Sunday 01:00-02:30
    spring = 1774744200                       # 2026-03-29 01:30 CET (00:30 UTC)
    jump = 1774746000                         # 01:00 UTC
    autumn = 1792881000                       # 2026-10-25 00:30 CEST (22:30 UTC Sat)
    first, second = 1792888200, 1792891800    # 02:30 CEST (00:30 UTC), 02:30 CET
    cases = [(spring, spring_opens), (spring, spring_closes),
             (autumn, [[SUN, 150, 300]]), (autumn + 3600, [[SUN, 60, 150]])]
    import netfence
    path = os.path.dirname(os.path.dirname(netfence.__file__))
    script = ("import sys\nsys.path.insert(0, %r)\nfrom netfence import timed\n"
              "for now, w in %r:\n    print(timed.next_opening(w, now), "
              "timed.open_until(w, now))\n" % (path, cases))
    out = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True,
                         text=True, check=True, env={"TZ": "Europe/Berlin"}).stdout
    rows = [line.split() for line in out.splitlines()]
    assert float(rows[0][0]) == jump                  # opens when 02:30 is passed
    assert float(rows[1][1]) == jump                  # closes then too
    assert float(rows[2][0]) == first                 # the first 02:30
    assert float(rows[3][1]) == second                # the last 02:30
