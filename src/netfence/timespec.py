"""Time windows of match rules: `DAYS HH:MM-HH:MM`, evaluated at login like pam_time.

DAYS is `*` or `Al` (every day), a day (`Mo` `Tu` `We` `Th` `Fr` `Sa` `Su`), a range
(`Mo-Fr`; `Fr-Mo` wraps over the weekend) or a comma list of those (`Mo,We,Fr-Su`).
Times are `H:MM` or `HH:MM`; the end may be `24:00`; a start after the end crosses
midnight; equal start and end are refused (an empty or a whole-day window is ambiguous).
"""

import re

from .model import TimeWindow

DAY_NAMES = ("Mo", "Tu", "We", "Th", "Fr", "Sa", "Su")
ALL_DAYS = (1 << len(DAY_NAMES)) - 1
MINUTES_PER_DAY = 24 * 60

_CLOCK = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_EXAMPLE = "e.g. 'Mo-Fr 08:00-20:00'"


class TimeSpecError(ValueError):
    """The text is not a valid time window; str() is the message for the admin."""


def parse_window(text):
    """One `DAYS HH:MM-HH:MM` string → TimeWindow."""
    parts = text.split()
    if len(parts) != 2:
        raise TimeSpecError(f"bad time {text!r}: expected 'DAYS HH:MM-HH:MM', {_EXAMPLE}")
    days = parse_days(parts[0])
    start, end = parse_span(parts[1])
    return TimeWindow(days=days, start=start, end=end)


def parse_days(text):
    """`Mo-Fr`, `Mo,We,Fr`, `*` … → bitmask, Monday = bit 0."""
    if text in ("*", "Al"):
        return ALL_DAYS
    mask = 0
    for item in text.split(","):
        first, dash, last = item.partition("-")
        low = _day(first, text)
        high = _day(last, text) if dash else low
        day = low
        while True:                        # walks forward, wrapping after Sunday
            mask |= 1 << day
            if day == high:
                break
            day = (day + 1) % len(DAY_NAMES)
    return mask


def _day(name, whole):
    if name in DAY_NAMES:
        return DAY_NAMES.index(name)
    raise TimeSpecError(
        f"bad days {whole!r}: {name!r} is not one of {' '.join(DAY_NAMES)} "
        f"(or '*' / 'Al' for every day), {_EXAMPLE}")


def parse_span(text):
    """`HH:MM-HH:MM` → (start, end) in minutes since midnight; end may be 1440."""
    first, dash, last = text.partition("-")
    if not dash:
        raise TimeSpecError(f"bad time range {text!r}: expected 'HH:MM-HH:MM'")
    start = _clock(first, text, allow_24=False)
    end = _clock(last, text, allow_24=True)
    if start == end:
        raise TimeSpecError(
            f"bad time range {text!r}: start equals end; use '00:00-24:00' for the whole day")
    return start, end


def _clock(value, whole, allow_24):
    match = _CLOCK.fullmatch(value)
    if not match:
        raise TimeSpecError(f"bad time range {whole!r}: {value!r} is not HH:MM")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if allow_24 and (hours, minutes) == (24, 0):
        return MINUTES_PER_DAY
    if hours > 23 or minutes > 59:
        limit = "00:00..24:00" if allow_24 else "00:00..23:59"
        raise TimeSpecError(f"bad time range {whole!r}: {value!r} is not in {limit}")
    return hours * 60 + minutes
