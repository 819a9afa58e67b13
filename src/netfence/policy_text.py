"""The text level of policy files: TOML syntax errors, line numbers, single items.

tomllib returns plain data without positions, so `Locator` scans the (already valid)
TOML text once and maps every key, table and array element to the line where it
starts: ("profile", "web", "egress", 1, "proto") -> 12. Lookups fall back to the
nearest enclosing item, so a problem always gets the best line known.

The item checks (`peer`, `port_range`, `name_item` …) validate one value each and raise
ItemError with a message for the admin; policy.py attaches the file and line.
"""

import ipaddress
import re
import tomllib

from .model import LOOPBACK

_TOML_POSITION = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)$")
_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}#\n") | {""}          # "" is the end of the text


class TomlSyntaxError(Exception):
    def __init__(self, line, message):
        super().__init__(message)
        self.line = line
        self.message = message


def load_toml(text):
    """tomllib.loads, with its errors turned into TomlSyntaxError(line, message)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise _syntax_error(str(err), text) from None
    except RecursionError:
        raise TomlSyntaxError(0, "syntax error: arrays or tables nested too deeply") from None


def _syntax_error(text, document):
    match = _TOML_POSITION.search(text)
    if not match:
        return TomlSyntaxError(0, f"syntax error: {text}")
    message = text[:match.start()]
    if match.group(1):
        return TomlSyntaxError(int(match.group(1)),
                               f"syntax error: {message} (column {match.group(2)})")
    last_line = document.count("\n") + (0 if document.endswith("\n") else 1)
    return TomlSyntaxError(max(last_line, 1), f"syntax error: {message} (at end of file)")


# ---- line numbers --------------------------------------------------------------------

class Locator:
    """Maps a key path (keys and array indices) to the 1-based line where it starts."""

    def __init__(self, text):
        self.lines = {}
        scanner = _Scanner(text, self.lines)
        try:
            scanner.run()
        except (_ScanError, RecursionError):
            pass                  # keep what was mapped so far; lookups fall back

    def line(self, *path):
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return 0


class _ScanError(Exception):
    """The scanner met text it does not understand (tomllib accepted it, though)."""


class _Scanner:
    def __init__(self, text, lines):
        self.text = text
        self.pos = 0
        self.lineno = 1
        self.lines = lines
        self.last_index = {}             # array-of-tables path -> index of its last element

    def run(self):
        table = ()
        while self._skip_blank():
            if self._char() == "[":
                table = self._header()
            else:
                self._keyval(table)

    def _char(self, ahead=0):
        index = self.pos + ahead
        return self.text[index] if index < len(self.text) else ""

    def _expect(self, char):
        if self._char() != char:
            raise _ScanError(f"expected {char!r} at line {self.lineno}")
        self.pos += 1

    def _skip_blank(self):
        """Skip spaces, newlines and comments; False at the end of the text."""
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\n":
                self.lineno += 1
            elif char == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
                continue
            elif char not in " \t\r":
                return True
            self.pos += 1
        return False

    def _skip_spaces(self):
        while self._char() in (" ", "\t"):
            self.pos += 1

    def _record(self, path, line, implicit_from=0):
        for size in range(max(implicit_from, 1), len(path)):
            self.lines.setdefault(path[:size], line)
        self.lines[path] = line

    def _header(self):
        line = self.lineno
        double = self.text.startswith("[[", self.pos)
        self.pos += 2 if double else 1
        keys = self._key()
        self._skip_spaces()
        for _ in range(2 if double else 1):
            self._expect("]")
        path = self._resolve(keys[:-1]) + keys[-1:]
        if double:
            index = self.last_index.get(path, -1) + 1
            self.last_index[path] = index
            self.lines.setdefault(path, line)
            path += (index,)
        self._record(path, line)
        return path

    def _resolve(self, keys):
        """Keys of a header → path, entering the last element of arrays of tables."""
        path = ()
        for key in keys:
            path += (key,)
            if path in self.last_index:
                path += (self.last_index[path],)
        return path

    def _keyval(self, table):
        line = self.lineno
        path = table + self._key()
        self._record(path, line, implicit_from=len(table) + 1)
        self._skip_spaces()
        self._expect("=")
        self._skip_spaces()
        self._value(path)

    def _key(self):
        keys = []
        while True:
            self._skip_spaces()
            keys.append(self._simple_key())
            self._skip_spaces()
            if self._char() != ".":
                return tuple(keys)
            self.pos += 1

    def _simple_key(self):
        start = self.pos
        if self._char() in ("'", '"'):
            self._string()
            raw = self.text[start:self.pos]
            try:
                return tomllib.loads(f"k = {raw}")["k"]
            except tomllib.TOMLDecodeError as err:
                raise _ScanError(str(err)) from None
        while self._char() in _BARE_KEY:
            self.pos += 1
        if self.pos == start:
            raise _ScanError(f"expected a key at line {self.lineno}")
        return self.text[start:self.pos]

    def _value(self, path):
        char = self._char()
        if char == "[":
            self._array(path)
        elif char == "{":
            self._inline_table(path)
        elif char in ("'", '"'):
            self._string()
        else:
            start = self.pos
            while self._char() not in _SCALAR_END:
                self.pos += 1
            if self.pos == start:
                raise _ScanError(f"expected a value at line {self.lineno}")

    def _array(self, path):
        self.pos += 1
        index = 0
        while self._skip_blank():
            if self._char() == "]":
                self.pos += 1
                return
            self.lines[path + (index,)] = self.lineno
            self._value(path + (index,))
            self._skip_blank()
            if self._char() == ",":
                self.pos += 1
                index += 1
            elif self._char() != "]":
                raise _ScanError(f"expected ',' or ']' at line {self.lineno}")
        raise _ScanError("unterminated array")

    def _inline_table(self, path):
        self.pos += 1
        while self._skip_blank():
            if self._char() == "}":
                self.pos += 1
                return
            line = self.lineno
            keys = self._key()
            self._record(path + keys, line, implicit_from=len(path) + 1)
            self._skip_spaces()
            self._expect("=")
            self._skip_spaces()
            self._value(path + keys)
            self._skip_blank()
            if self._char() == ",":
                self.pos += 1
        raise _ScanError("unterminated inline table")

    def _string(self):
        quote = self._char()
        if self.text.startswith(quote * 3, self.pos):
            self.pos += 3
            self._string_body(quote, multiline=True)
        else:
            self.pos += 1
            self._string_body(quote, multiline=False)

    def _string_body(self, quote, multiline):
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and quote == '"':
                if self._char(1) == "\n":
                    self.lineno += 1
                self.pos += 2
                continue
            if char == "\n":
                self.lineno += 1
            if char != quote:
                self.pos += 1
                continue
            run = 1
            while self._char(run) == quote:
                run += 1
            self.pos += run if multiline else 1
            if not multiline or run >= 3:
                return
        raise _ScanError("unterminated string")


# ---- single items --------------------------------------------------------------------

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


def check_profile_name(name):
    if not PROFILE_NAME.fullmatch(name):
        raise ItemError(f"bad profile name {shown(name)}: use 1 to 40 of A-Z a-z 0-9 _ -, "
                        "starting with a letter or digit")
    return name


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


def _port(number, shown_as):
    if not 1 <= number <= 65535:
        raise ItemError(f"bad port {shown(shown_as)}: ports are 1..65535")
    return number


def account_name(text, kind):
    """A user or group name (no "!" here)."""
    if not ACCOUNT_NAME.fullmatch(text):
        raise ItemError(f"bad {kind} name {shown(text)}: use up to 256 of A-Z a-z 0-9 "
                        "_ . @ -, not starting with '-'")
    return text


def service_name(text):
    if not SERVICE_NAME.fullmatch(text):
        raise ItemError(f"bad service name {shown(text)}: use up to 256 of A-Z a-z 0-9 _ . -")
    return text


def tty_glob(text):
    if not TTY_GLOB.fullmatch(text):
        raise ItemError(f"bad tty pattern {shown(text)}: use up to 256 of A-Z a-z 0-9 "
                        "_ / : . - and the wildcards * ?")
    return text


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
