"""The text level of policy files: TOML syntax errors and line numbers.

tomllib returns plain data without positions, so `Locator` scans the (already valid)
TOML text once and maps every key, table and array element to the line where it
starts: ("profile", "web", "egress", 1, "proto") -> 12. Lookups fall back to the
nearest enclosing item, so a problem always gets the best line known. The values
themselves are checked in policy_values.py.
"""

import re
import tomllib

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
