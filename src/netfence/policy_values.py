"""Single values of a policy file, checked one at a time.

Each check (`peer`, `port_range`, `account_name` …) validates one value and returns
it normalised, or raises ItemError with a message for the admin; policy.py attaches
the file and line.
"""

import ipaddress
import re

from .model import LOOPBACK


class ItemError(ValueError):
    """One value is invalid; str() is the message for the admin."""


PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_.@][A-Za-z0-9_.@-]{0,255}")
SERVICE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,256}")
TTY_GLOB = re.compile(r"[A-Za-z0-9_/:.*?-]{1,256}")
HOST_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})"
                       r"(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,62})*\.?")
LOCAL = "local"


def shown(value):
    """A value as the admin wrote it, shortened for messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _whole(pattern, text, what, allowed):
    """text when pattern matches all of it, else ItemError "bad WHAT 'text': ALLOWED"."""
    if not pattern.fullmatch(text):
        raise ItemError(f"bad {what} {shown(text)}: {allowed}")
    return text


def check_profile_name(name):
    return _whole(PROFILE_NAME, name, "profile name",
                  "use 1 to 40 of A-Z a-z 0-9 _ -, starting with a letter or digit")


def network(text):
    """An address or CIDR → its normalized network string (bare address → /32, /128)."""
    if "%" in text:
        raise ItemError(f"{shown(text)}: IPv6 zone indexes are not supported")
    try:
        return str(ipaddress.ip_network(text, strict=True))
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ItemError(f"{shown(text)} is not an IP address or network") from None
    raise ItemError(f"{text} has host bits set; did you mean {loose}?")


def peer(text):
    if text == LOOPBACK:
        return LOOPBACK
    if not any(c in text for c in ".:/") or HOST_NAME.fullmatch(text) and _has_letters(text):
        raise ItemError(f"{shown(text)} is not an IP address, a network or \"{LOOPBACK}\" "
                        "(host names are not resolved)")
    return network(text)


def _has_letters(text):
    return any(c.isalpha() for c in text)


def port_range(value):
    """80 or "80" → (80, 80); "8000-8099" → (8000, 8099)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ItemError(f"bad port {shown(value)}: use a number or a \"LOW-HIGH\" string")
    if isinstance(value, int):
        return _port(value, value), _port(value, value)
    low, dash, high = value.partition("-")
    if not (_digits(low) and (_digits(high) if dash else True)):
        raise ItemError(f"bad port {shown(value)}: use a number or a \"LOW-HIGH\" string")
    low_port = _port(int(low), value)
    high_port = _port(int(high), value) if dash else low_port
    if low_port > high_port:
        raise ItemError(f"bad port range {shown(value)}: {low_port} is above {high_port}")
    return low_port, high_port


def _digits(text):
    return 0 < len(text) <= 5 and all(c in "0123456789" for c in text)


def _number(text):
    return 0 < len(text) <= 10 and all(c in "0123456789" for c in text)


def _port(number, shown_as):
    if not 1 <= number <= 65535:
        raise ItemError(f"bad port {shown(shown_as)}: ports are 1..65535")
    return number


def uid_range(value, max_id):
    """1234 or "1234" → (1234, 1234); "1000-59999" → (1000, 59999)."""
    bad = f"bad uid {shown(value)}: use a number or a \"LOW-HIGH\" string"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ItemError(bad)
    low, dash, high = (str(value), "", "") if isinstance(value, int) else value.partition("-")
    if not (_number(low) and (_number(high) if dash else True)):
        raise ItemError(bad)
    low, high = int(low), int(high) if dash else int(low)
    if not 0 <= low <= high <= max_id:
        raise ItemError(f"bad uid range {shown(value)}: ids run from 0 to {max_id}, "
                        f"low first")
    return low, high


def account_name(text, kind):
    """A user or group name (no "!" here)."""
    return _whole(ACCOUNT_NAME, text, f"{kind} name",
                  "use up to 256 of A-Z a-z 0-9 _ . @ -, not starting with '-'")


def user_pattern(name, negated):
    """A users item (name without its "!"): an account name, or "*" for every user."""
    if name != "*":
        return account_name(name, "user")
    if negated:
        raise ItemError('"!*" excludes every user: remove the rule instead')
    return name


def group_pattern(name, negated):
    """A groups item (name without its "!"): an account name; "*" is for users only."""
    if name == "*":
        raise ItemError('"*" is for users only: write users = ["*"]')
    return account_name(name, "group")


def service_name(text):
    return _whole(SERVICE_NAME, text, "service name", "use up to 256 of A-Z a-z 0-9 _ . -")


def tty_glob(text):
    return _whole(TTY_GLOB, text, "tty pattern",
                  "use up to 256 of A-Z a-z 0-9 _ / : . - and the wildcards * ?")


def rhost(text):
    """"local", an address/CIDR (normalized), a host name or a ".domain" suffix (lower case)."""
    if text == LOCAL:
        return LOCAL
    if any(c in text for c in ":/") or not _has_letters(text):
        return network(text)
    name = text[1:] if text.startswith(".") else text
    if not HOST_NAME.fullmatch(name) or name.endswith("."):
        raise ItemError(f"bad remote host {shown(text)}: use \"local\", an address or "
                        "network, a host name or a \".domain\" suffix")
    return text.lower()


# ---- values of keys --------------------------------------------------------------------

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "a table"}


def kind(value):
    return _TYPE_NAMES.get(type(value), "a date/time")


def string(value, key):
    if not isinstance(value, str):
        raise ItemError(f"{key} must be a string, not {kind(value)}")
    return value


def choice(value, key, choices):
    if string(value, key) not in choices:
        raise ItemError(f"{key} must be one of {', '.join(choices)}, not {shown(value)}")
    return value


def integer(value, key, low, high):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ItemError(f"{key} must be an integer, not {kind(value)}")
    if not low <= value <= high:
        raise ItemError(f"{key} must be from {low} to {high}, not {value}")
    return value


def boolean(value, key):
    if not isinstance(value, bool):
        raise ItemError(f"{key} must be true or false, not {kind(value)}")
    return value


def items_of(value, key, kinds=(str,), empty="leave the key out to match any"):
    """One value or a non-empty array of them → list."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ItemError(f"{key} is empty; {empty}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, kinds):
            raise ItemError(f"{key} items must be {' or '.join(_TYPE_NAMES[k] for k in kinds)}"
                            f", not {kind(item)}")
    return items


def unique(values):
    return tuple(dict.fromkeys(values))


def path_component(value, key):
    text = string(value, key)
    if text in (".", "..") or not SERVICE_NAME.fullmatch(text) or len(text) > 255:
        raise ItemError(f"{key} must be one directory name of A-Z a-z 0-9 _ . -, "
                        f"not {shown(text)}")
    return text
