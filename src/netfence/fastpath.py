"""The hook's kernel calls: the cffi extension `netfence._fastpath` when it is
importable and was built from this very version, else the pure-Python twin in
fastpath_py.py. Both send byte-identical messages (tests/unit/test_fastpath.py).

This is the one module that touches the raw `lib` (pyca/cryptography's rule), and the
one place that turns the -errno results of both implementations into KernelError.

Stale build (the .so was compiled from another package version): we fall back to the
Python implementation instead of refusing, because refusing would refuse logins
(on_error=deny) over a build problem the fallback handles with the same bytes; the
reason is in `get().reason` and the hook adds it to its log line
(`fastpath=python fastpath_reason=...`).

Elements are given as {set name: [hex key, ...]}, the form the records keep.
"""

import errno

from . import __version__, formats, nfencode
from . import fastpath_py as _py
from .errors import KernelError
from .nfconst import NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NLMSG_HDRLEN
from .setkinds import TABLE

DEFAULT_TIMEOUT_MS = 2000
FIRST_SEQ = 1


class _CImpl:
    name = "c"
    reason = ""

    def __init__(self, module):
        self.ffi = module.ffi
        self.lib = module.lib

    def batch(self, messages, first_seq):
        """messages: [(template, key bytes, key offset)]; returns a cdata buffer."""
        ffi, lib = self.ffi, self.lib
        total = sum(len(m[0]) for m in messages)
        buf = ffi.new("uint8_t[]", total)
        offset = 0
        for seq, (template, key, key_offset) in enumerate(messages, first_seq):
            written = lib.nf_fill(buf + offset, total - offset, template, len(template),
                                  seq, key, key_offset, len(key))
            if written < 0:
                raise ValueError(f"nf_fill: errno {-written}")
            offset += written
        return buf

    def to_bytes(self, buf):
        return bytes(self.ffi.buffer(buf))

    def send(self, buf, first_seq, nmsgs, timeout_ms, flags=0):
        errors = self.ffi.new("int32_t[]", max(nmsgs, 1))
        rc = self.lib.nf_batch(buf, len(buf), first_seq, nmsgs, errors, timeout_ms, flags)
        return rc, list(errors)[:nmsgs]

    def cg_mkdir(self, path, mode):
        return self.lib.cg_mkdir(path.encode(), mode)

    def cg_rmdir(self, path):
        return self.lib.cg_rmdir(path.encode())

    def cg_move(self, procs, pid):
        return self.lib.cg_move(procs.encode(), pid)

    def cg_id(self, path):
        out = self.ffi.new("uint64_t *")
        rc = self.lib.cg_id(path.encode(), out)
        return rc, (out[0] if rc == 0 else 0)


class _PyImpl:
    name = "python"

    def __init__(self, reason):
        self.reason = reason

    def batch(self, messages, first_seq):
        return b"".join(_py.nf_fill(template, seq, key, key_offset)
                        for seq, (template, key, key_offset) in enumerate(messages, first_seq))

    def to_bytes(self, buf):
        return bytes(buf)

    def send(self, buf, first_seq, nmsgs, timeout_ms, flags=0):
        return _py.nf_batch(buf, first_seq, nmsgs, timeout_ms, flags)

    cg_mkdir = staticmethod(_py.cg_mkdir)
    cg_rmdir = staticmethod(_py.cg_rmdir)
    cg_move = staticmethod(_py.cg_move)
    cg_id = staticmethod(_py.cg_id)


_impl = None


def get(prefer="c"):
    """The implementation in use; the first call decides (prefer="python" forces it)."""
    global _impl
    if _impl is None:
        _impl = _load(prefer)
    return _impl


def _load(prefer):
    if prefer == "python":
        return _PyImpl("requested")
    try:
        from . import _fastpath
    except ImportError as err:
        return _PyImpl(f"C extension not importable: {err}")
    built = _fastpath.ffi.string(_fastpath.lib.nf_version()).decode()
    if built != __version__:
        return _PyImpl(f"stale C extension: built for {built}, package is {__version__}")
    return _CImpl(_fastpath)


# ---- transactions ----------------------------------------------------------------

def messages(templates, kind, elements, timed=None):
    """[(template, key, key offset)] for BEGIN, one message per element, END; then
    the ops, (set name, hex key) per message after BEGIN.

    timed ({set: {hex key: timeout ms}}, with kind "new"): each key also goes as a
    DESTROYSETELEM and a NEWSETELEM carrying its timeout, in that order: a kernel that
    holds the key already would keep (or only lengthen) its old timeout otherwise, and
    the expiry sent is exact (the batch is atomic, so the key is never missing)."""
    if templates is None or templates.get("format") != formats.TEMPLATES:
        templates = {}
    begin = templates.get("begin") or nfencode.batch_message(NFNL_MSG_BATCH_BEGIN)
    out = [(begin, b"", NLMSG_HDRLEN)]
    ops = []
    for set_name in sorted(elements):
        for hex_key in elements[set_name]:
            key = bytes.fromhex(hex_key)
            out.append(_template(templates, set_name, key, kind))
            ops.append((set_name, hex_key))
    table = templates.get("table") or TABLE
    for set_name in sorted(timed or {}):
        for hex_key, ms in timed[set_name].items():
            key = bytes.fromhex(hex_key)
            out.append(_template(templates, set_name, key, "destroy"))
            # the key is in the message already; the fill writes it again at its offset
            out.append(_timed_template(table, set_name, key, ms))
            ops += [(set_name, hex_key)] * 2
    end = templates.get("end") or nfencode.batch_message(NFNL_MSG_BATCH_END)
    out.append((end, b"", NLMSG_HDRLEN))
    return out, ops


def _template(templates, set_name, key, kind):
    entry = templates.get("sets", {}).get(set_name)
    if entry is None or entry["key_len"] != len(key):
        entry = nfencode.set_templates(set_name, len(key))
    return entry[kind], key, entry["key_offset"]


def _timed_template(table, set_name, key, ms):
    message, key_offset = nfencode.timed_element_message(table, set_name, key, ms)
    return message, key, key_offset


def _send(templates, kind, elements, timeout_ms, flags=0, timed=None):
    impl = get()
    msgs, ops = messages(templates, kind, elements, timed)
    buf = impl.batch(msgs, FIRST_SEQ)
    rc, errors = impl.send(buf, FIRST_SEQ, len(ops), timeout_ms, flags)
    return rc, list(zip(ops, errors))


def add_elements(templates, elements, timeout_ms=DEFAULT_TIMEOUT_MS, timed=None):
    """Add every element in one transaction; KernelError (nothing added) on failure.
    timed: {set: {hex key: timeout ms}}, elements the kernel removes on time (see
    messages), in the same transaction."""
    if not any(elements.values()) and not any((timed or {}).values()):
        return
    rc, results = _send(templates, "new", elements, timeout_ms, timed=timed)
    if rc:
        raise KernelError("add set elements (one batch)", -rc)
    for (set_name, hex_key), err in results:
        if err:
            raise KernelError(f"add element {hex_key} to set {set_name}", -err,
                              "batch refused, nothing added")


def destroy_elements(elements, timeout_ms=DEFAULT_TIMEOUT_MS, templates=None,
                     detach=False):
    """Remove the elements (absent ones are fine). Returns the sets found missing.

    detach=True: a forked child closes the socket after this process exited, so the
    kernel's 8-16 ms wait at close (deferred frees after a delete) is not ours; for
    the hook, whose exit pam_exec waits for. Not for long-running callers.

    A missing table or set (a reload dropped the profile, a flush dropped the table)
    makes the kernel refuse the whole batch with ENOENT for those messages; the rest
    is then sent again without them. Any other error raises KernelError.
    """
    remaining = {s: list(keys) for s, keys in elements.items() if keys}
    gone = set()
    while remaining:
        rc, results = _send(templates, "destroy", remaining, timeout_ms,
                            _py.NF_DETACH_CLOSE if detach else 0)
        if rc:
            raise KernelError("destroy set elements (one batch)", -rc)
        for (set_name, hex_key), err in results:
            if err and err != -errno.ENOENT:
                raise KernelError(f"destroy element {hex_key} in set {set_name}", -err)
        missing = {s for (s, _), err in results if err == -errno.ENOENT}
        if not missing:
            break
        gone |= missing          # each round drops at least one set: it terminates
        remaining = {s: keys for s, keys in remaining.items() if s not in gone}
    return sorted(gone)


# ---- cgroup calls: -errno in, plain results out ------------------------

def cg_mkdir(path, mode=0o755):
    return get().cg_mkdir(path, mode)


def cg_rmdir(path):
    return get().cg_rmdir(path)


def cg_move(procs, pid):
    return get().cg_move(procs, pid)


def cg_id(path):
    return get().cg_id(path)
