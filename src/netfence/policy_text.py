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


# The scanner's tokens, each matched at a position (a policy of 1,000 rules is ~100,000
# characters: one regex match per token instead of a method call per character).
_BLANK = re.compile(r"(?:[ \t\r\n]|#[^\n]*)*+")            # spaces, newlines, comments
_SPACES = re.compile(r"[ \t]*+")
_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}#\n]*+")                   # up to , ] } # newline or the end
_STRINGS = {                                             # (opening, whole string)
    ('"', False): re.compile(r'"(?:[^"\\]|\\[\s\S])*+"'),
    ("'", False): re.compile(r"'[^']*+'"),
    # a run of three or more quotes ends a multi-line string (the extra ones are its
    # content: TOML allows two), a shorter run is content
    ('"', True): re.compile(r'"""(?:[^"\\]|\\[\s\S]|""?(?!"))*+"{3,}'),
    ("'", True): re.compile(r"'''(?:[^']|''?(?!'))*+'{3,}"),
}


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
            if self.text[self.pos] == "[":
                table = self._header()
            else:
                self._keyval(table)

    def _char(self):
        return self.text[self.pos:self.pos + 1]             # "" at the end of the text

    def _expect(self, char):
        if self.text[self.pos:self.pos + 1] != char:
            raise _ScanError(f"expected {char!r} at line {self.lineno}")
        self.pos += 1

    def _skip_blank(self):
        """Skip spaces, newlines and comments; False at the end of the text."""
        start = self.pos
        end = self.pos = _BLANK.match(self.text, start).end()
        if end > start:
            self.lineno += self.text.count("\n", start, end)
        return end < len(self.text)

    def _skip_spaces(self):
        self.pos = _SPACES.match(self.text, self.pos).end()

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
        text, keys = self.text, []
        while True:
            self.pos = _SPACES.match(text, self.pos).end()
            bare = _BARE.match(text, self.pos)
            if bare:
                keys.append(bare.group())
                self.pos = bare.end()
            else:
                keys.append(self._quoted_key())
            self.pos = _SPACES.match(text, self.pos).end()
            if text.startswith(".", self.pos):
                self.pos += 1
            else:
                return tuple(keys)

    def _quoted_key(self):
        start = self.pos
        if self._char() not in ("'", '"'):
            raise _ScanError(f"expected a key at line {self.lineno}")
        self._string()
        raw = self.text[start:self.pos]
        try:
            return tomllib.loads(f"k = {raw}")["k"]
        except tomllib.TOMLDecodeError as err:
            raise _ScanError(str(err)) from None

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
            self.pos = _SCALAR.match(self.text, start).end()
            if self.pos == start:
                raise _ScanError(f"expected a value at line {self.lineno}")

    def _array(self, path):
        self.pos += 1
        index = 0
        while self._skip_blank():
            if self.text[self.pos] == "]":
                self.pos += 1
                return
            self.lines[path + (index,)] = self.lineno
            self._value(path + (index,))
            self._skip_blank()
            char = self._char()
            if char == ",":
                self.pos += 1
                index += 1
            elif char != "]":
                raise _ScanError(f"expected ',' or ']' at line {self.lineno}")
        raise _ScanError("unterminated array")

    def _inline_table(self, path):
        self.pos += 1
        while self._skip_blank():
            if self.text[self.pos] == "}":
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
        quote = self.text[self.pos]
        multiline = self.text.startswith(quote * 3, self.pos)
        found = _STRINGS[quote, multiline].match(self.text, self.pos)
        if not found:
            raise _ScanError("unterminated string")
        self.lineno += self.text.count("\n", self.pos, found.end())
        self.pos = found.end()
