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
    """Maps a key path (keys and array indices) to the 1-based line where it starts.

    Two scans of the text: at once, the paths of at most SHALLOW keys, every array and
    inline table deeper than that skipped whole (a valid policy asks for no more: a
    rule's ("profile", P, "egress", N), ("rule", N, "profiles", K)); the whole map only
    when a longer path is asked for (a problem inside a rule) or `lines` is read. A
    path of at most SHALLOW keys has the same line either way (its prefixes are as
    short), so which scan answers is invisible."""

    SHALLOW = 4

    def __init__(self, text):
        self._text, self._lines = text, None
        self._shallow = {}
        try:
            _Scanner(text, self._shallow, skip_from=self.SHALLOW).run()
        except (_ScanError, RecursionError):
            self._shallow = None          # the whole scan tells where it stops

    @property
    def lines(self):
        """{path: line} of every key, table and array element."""
        if self._lines is None:
            self._lines = {}
            try:
                _Scanner(self._text, self._lines).run()
            except (_ScanError, RecursionError):
                pass              # keep what was mapped so far; lookups fall back
        return self._lines

    def line(self, *path):
        lines = (self._shallow if len(path) <= self.SHALLOW and self._shallow is not None
                 else self.lines)
        while path:
            if path in lines:
                return lines[path]
            path = path[:-1]
        return 0


class _ScanError(Exception):
    """The scanner met text it does not understand (tomllib accepted it, though)."""


# The scanner's tokens, each matched at a position (a policy of 1,000 rules is ~100,000
# characters: one regex match per token instead of a method call per character).
_BLANK = re.compile(r"(?:[ \t\r\n]++|#[^\n]*+)*+")            # spaces, newlines, comments
_SPACES = re.compile(r"[ \t]*+")
_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"[^,\]}#\n]*+")                   # up to , ] } # newline or the end
_STRING_PATTERNS = {                                     # (opening, whole string)
    # a run of three or more quotes ends a multi-line string (the extra ones are its
    # content: TOML allows two), a shorter run is content
    ('"', True): r'"""(?:[^"\\]++|\\[\s\S]|""?(?!"))*+"{3,}',
    ("'", True): r"'''(?:[^']++|''?(?!'))*+'{3,}",
    ('"', False): r'"(?:[^"\\]++|\\[\s\S])*+"',
    ("'", False): r"'[^']*+'",
}
_STRINGS = {kind: re.compile(pattern) for kind, pattern in _STRING_PATTERNS.items()}
# A value skipped whole (Locator's first scan): an array or an inline table holding
# nothing deeper than flat arrays and no multi-line string, in one match (a policy's
# rules are such tables); any other is walked bracket by bracket (_skip_nested). A
# quote opening three is no single-line string here: the match fails rather than
# read a multi-line string as an empty one.
_ANY_STRING = r"""(?:"(?!"")(?:[^"\\]++|\\[\s\S])*+"|'(?!'')[^']*+')"""
_FLAT_ARRAY = r"\[(?:[^\[\]{}\"'#]++|" + _ANY_STRING + r"|#[^\n]*+)*+\]"
_FLAT = re.compile(r"\{(?:[^\[\]{}\"'#]++|" + _ANY_STRING + "|" + _FLAT_ARRAY + r")*+\}|"
                   + _FLAT_ARRAY)
_TO_BRACKET = re.compile(r"[^\[\]{}\"'#]*+")


class _Scanner:
    """skip_from: values (arrays, inline tables) at paths of that many keys or more are
    skipped whole, their contents not mapped (None: everything is mapped)."""

    def __init__(self, text, lines, skip_from=None):
        self.text = text
        self.pos = 0
        self.lineno = 1
        self.lines = lines
        self.last_index = {}             # array-of-tables path -> index of its last element
        self.skip_from = skip_from

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
        if self.skip_from is not None and len(path) >= self.skip_from and char in ("[", "{"):
            self._skip_value()
        elif char == "[":
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

    def _skip_value(self):
        """Past the array or inline table at pos, mapping nothing inside it."""
        start = self.pos
        found = _FLAT.match(self.text, start)
        end = found.end() if found else self._skip_nested(start)
        self.lineno += self.text.count("\n", start, end)
        self.pos = end

    def _skip_nested(self, pos):
        """The end of the bracketed value at pos, nested any depth."""
        text, depth = self.text, 0
        while True:
            pos = _TO_BRACKET.match(text, pos).end()
            char = text[pos:pos + 1]
            if char in ("[", "{"):
                depth, pos = depth + 1, pos + 1
            elif char in ("]", "}"):
                depth, pos = depth - 1, pos + 1
                if depth == 0:
                    return pos
            elif char == "#":
                end = text.find("\n", pos)
                pos = len(text) if end < 0 else end
            elif char:
                found = _STRINGS[char, text.startswith(char * 3, pos)].match(text, pos)
                if not found:
                    raise _ScanError("unterminated string")
                pos = found.end()
            else:
                raise _ScanError("unterminated array or inline table")
