"""The last known-good compiled policy under state_dir (default /var/lib/netfence).

compiled.json is for the command line; login.marshal holds only the login part, for
the hook (marshal is built into the interpreter, json would import `re`).

A reload changes the kernel and these files together or not at all: `stage()` writes
and fsyncs both as temp files next to them before the kernel is touched (a full,
read-only or unwritable state dir fails there, with nothing changed), and
`Staged.promote()` renames them into place once the kernel has accepted the table:
compiled.json first, login.marshal (what logins read) last, then an fsync of the
directory.

compiled.json carries the snapshot format (formats.SNAPSHOT); read_snapshot and
parse_raw refuse another number (StateError naming both) instead of misreading it:
`netfence reload` rewrites the files in this version's format.
"""

import json
import marshal
import os

from . import formats, fsutil
from .errors import StateError

COMPILED = "compiled.json"
LOGIN = "login.marshal"


def stage(state_dir, snapshot, encoded=None):
    """Write the snapshot's files as fsynced temp files; StateError (nothing left
    behind) when that fails. encoded: {top-level key: its JSON text (json_text)}, for
    values already encoded (reload's table, encoded once for the policy id)."""
    try:
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
    except OSError as err:
        raise StateError(f"{state_dir}: cannot create the state directory: "
                         f"{err.strerror}") from None
    staged = Staged(state_dir)
    try:
        staged.add(COMPILED, _compiled_bytes(snapshot, encoded))
        staged.add(LOGIN, marshal.dumps(_plain(snapshot["login"])))
    except BaseException:
        staged.discard()
        raise
    return staged


def _compiled_bytes(snapshot, encoded=None):
    # The templates are bytes for the hook only; the JSON copy leaves them out.
    login = {k: v for k, v in snapshot["login"].items() if k != "templates"}
    # No indent: json's C encoder only runs without one (20,000 rules: 0.1 s
    # instead of 0.6 s); `python3 -m json.tool` pretty-prints it.
    return json_text(dict(snapshot, login=login), encoded).encode() + b"\n"


def json_text(value, encoded=None):
    """json.dumps(value, sort_keys=True), character for character, with the texts of
    some of the dict's top-level values given already encoded ({key: text}): a
    1,000-rule table is ~0.5 MB of JSON, which the policy id and compiled.json then
    encode once instead of twice. Without indent, a nested value's text is the text
    it has on its own."""
    if not encoded:
        return json.dumps(value, sort_keys=True)
    return "{" + ", ".join(
        f"{json.dumps(key)}: "
        + (encoded[key] if key in encoded else json.dumps(value[key], sort_keys=True))
        for key in sorted(value)) + "}"


def replace_compiled(state_dir, snapshot):
    """Rewrite compiled.json alone (gc's new NSS resolution of the always rules: the
    policy, and so login.marshal, is unchanged). Call with the state lock held."""
    put_back(state_dir, COMPILED, _compiled_bytes(snapshot))


class PromoteError(StateError):
    def __init__(self, message, renamed):
        super().__init__(message)
        self.renamed = renamed


class Staged:
    """Temp files waiting to become the snapshot, in the order they are renamed."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.files = []                     # (temp path, final path)

    def add(self, name, data):
        path = os.path.join(self.state_dir, name)
        tmp = fsutil.temp_path(path)        # what roll_forward and remove_stale look for
        self.files.append((tmp, path))
        try:
            fsutil.write_file(tmp, data, mode=0o644, sync=True)
        except OSError as err:
            raise StateError(f"{path}: cannot write the new snapshot: {err.strerror} "
                             f"(errno {err.errno}); nothing was changed") from None

    def promote(self):
        """Make the staged files current (after the kernel accepted the table).
        PromoteError names the files already renamed when one rename fails."""
        renamed = []
        try:
            for tmp, path in self.files:
                os.replace(tmp, path)
                renamed.append(os.path.basename(path))
        except OSError as err:
            self.files = self.files[len(renamed):]
            self.discard()
            raise PromoteError(f"{self.state_dir}: cannot make the new snapshot current: "
                               f"{err.strerror} (errno {err.errno})", renamed) from None
        self.files = []
        try:
            fsutil.fsync_dir(self.state_dir)
        except OSError:
            pass            # the files are current; only their durability is at stake

    def discard(self):
        for tmp, _path in self.files:
            fsutil.remove_quietly(tmp)
        self.files = []


def read_raw(state_dir):
    """compiled.json's bytes (None when there is none), for parse_raw. Never blocks:
    a FIFO or device planted in its place is refused (StateError)."""
    return fsutil.read_regular(os.path.join(state_dir, COMPILED))


def parse_raw(data, path=COMPILED):
    """compiled.json's bytes -> the snapshot; StateError when they are not JSON or not
    this version's format (path names the file in the message)."""
    try:
        snap = json.loads(data)
    except ValueError as err:
        raise StateError(f"{path}: unreadable snapshot: {err}") from None
    found = snap.get("format") if isinstance(snap, dict) else None
    if found != formats.SNAPSHOT:
        raise StateError(f"{path}: snapshot format {_shown(found)}, this netfence reads "
                         f"format {formats.SNAPSHOT}: run `netfence reload` to rewrite it")
    return snap


def _shown(found):
    return "none" if found is None else repr(found)


def put_back(state_dir, name, data):
    """Write `data` back as state_dir/name (after a failed promote)."""
    staged = Staged(state_dir)
    staged.add(name, data)
    staged.promote()


def login_policy_id(state_dir):
    """The policy id in login.marshal (what logins use), or None without one."""
    return _policy_id_of(os.path.join(state_dir, LOGIN))


def _policy_id_of(path):
    """The policy id in a login.marshal file, None when absent; StateError if damaged."""
    data = fsutil.read_regular(path)
    if data is None:
        return None
    try:
        login = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        raise StateError(f"{path}: damaged") from None
    return login.get("policy_id") if isinstance(login, dict) else None


def roll_forward(state_dir, policy_id):
    """Finish a reload interrupted between its two renames (compiled.json already
    current, login.marshal not): rename the staged login.marshal whose policy id is
    compiled.json's into place. True when one was found."""
    prefix = fsutil.temp_prefix(LOGIN)
    try:
        names = sorted(os.listdir(state_dir))
    except OSError as err:
        raise StateError(f"{state_dir}: {err.strerror}") from None
    for name in names:
        if not name.startswith(prefix):
            continue
        path = os.path.join(state_dir, name)
        try:
            found = _policy_id_of(path)
        except StateError:
            continue
        if found is not None and found == policy_id:
            try:
                os.replace(path, os.path.join(state_dir, LOGIN))
            except OSError as err:
                raise StateError(f"{path}: cannot make it current: {err.strerror}") from None
            try:
                fsutil.fsync_dir(state_dir)
            except OSError:
                pass            # current already; only its durability is at stake
            return True
    return False


def remove_stale(state_dir):
    """Remove staged files a killed reload left (call with the state lock held, after
    roll_forward). Returns how many."""
    removed = 0
    try:
        names = os.listdir(state_dir)
    except OSError:
        return 0
    for name in names:
        if name.startswith((fsutil.temp_prefix(COMPILED), fsutil.temp_prefix(LOGIN))):
            try:
                os.unlink(os.path.join(state_dir, name))
                removed += 1
            except OSError:
                pass        # gone already, or the dir is read-only: nothing to count
    return removed


def read_snapshot(state_dir):
    """The applied snapshot, or None when none was ever applied; StateError when it is
    damaged or of another format."""
    data = read_raw(state_dir)
    return None if data is None else parse_raw(data, os.path.join(state_dir, COMPILED))


def _plain(value):
    """JSON-shaped data with tuples as lists, which marshal and the hook both accept."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
