"""The last known-good compiled policy under state_dir (default /var/lib/netfence).

compiled.json is for the command line; login.marshal holds only the login part, for
the hook (marshal is built into the interpreter, json would import `re`). Both are
replaced atomically, and only after the kernel has accepted the ruleset.
"""

import json
import marshal
import os

from .errors import StateError

COMPILED = "compiled.json"
LOGIN = "login.marshal"


def write_snapshot(state_dir, snapshot):
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    _write_atomic(os.path.join(state_dir, LOGIN), marshal.dumps(_plain(snapshot["login"])))
    # The templates are bytes for the hook only; the JSON copy leaves them out.
    login = {k: v for k, v in snapshot["login"].items() if k != "templates"}
    readable = dict(snapshot, login=login)
    _write_atomic(os.path.join(state_dir, COMPILED),
                  json.dumps(readable, indent=1, sort_keys=True).encode() + b"\n")


def read_snapshot(state_dir):
    """The applied snapshot, or None when none was ever applied."""
    path = os.path.join(state_dir, COMPILED)
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise StateError(f"{path}: unreadable snapshot: {err}") from err


def _plain(value):
    """JSON-shaped data with tuples as lists, which marshal and the hook both accept."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _write_atomic(path, data):
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
