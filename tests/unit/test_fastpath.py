"""Netlink message templates and the two fast path implementations (no root needed).

The C extension and fastpath_py must build byte-identical batches: the hook may run
either. Tests that need the C extension skip when it is not built (python3
c_ext/build_fastpath.py, or pip install .).
"""

import errno
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netfence import fastpath, fastpath_py, formats, nfencode
from netfence.errors import KernelError

ORDER = sys.byteorder
LOGIN = {"profiles": {
    "web": {"egress": True, "ingress": False,
            "uid_set": "uid-web", "ucg_set": "ucg-web", "scg_set": "scg-web"},
    "no-servers": {"egress": False, "ingress": True, "uid_set": "uid-no-servers",
                   "ucg_set": "ucg-no-servers", "scg_set": "scg-no-servers"},
}}


def c_impl():
    impl = fastpath._load("c")
    if impl.name != "c":
        pytest.skip(f"C fast path unavailable: {impl.reason}")
    return impl


def u32(data, offset):
    return int.from_bytes(data[offset:offset + 4], ORDER)


def u16(data, offset):
    return int.from_bytes(data[offset:offset + 2], ORDER)


def attrs(data):
    """{type: payload} of a flat attribute stream (nested flag stripped)."""
    out, offset = {}, 0
    while offset + 4 <= len(data):
        length, kind = u16(data, offset), u16(data, offset + 2)
        out[kind & 0x7FFF] = data[offset + 4:offset + length]
        offset += (length + 3) & ~3
    return out


# ---- templates ----------------------------------------------------------------------

def test_templates_cover_every_set_with_the_right_key_length():
    templates = nfencode.build_templates(LOGIN)
    assert templates["format"] == formats.TEMPLATES
    assert templates["table"] == "netfence" and templates["family"] == 1
    assert sorted(templates["sets"]) == sorted(
        n for p in LOGIN["profiles"].values() for n in (p["uid_set"], p["ucg_set"], p["scg_set"]))
    assert templates["sets"]["uid-web"]["key_len"] == 4
    assert templates["sets"]["scg-web"]["key_len"] == 8
    assert templates["sets"]["ucg-no-servers"]["key_len"] == 8


def test_template_is_a_well_formed_newsetelem():
    entry = nfencode.build_templates(LOGIN)["sets"]["uid-web"]
    msg = entry["new"]
    assert u32(msg, 0) == len(msg)
    assert u16(msg, 4) == (10 << 8) | 12                 # NFNL_SUBSYS_NFTABLES, NEWSETELEM
    assert u16(msg, 6) == 0x001 | 0x004 | 0x400          # REQUEST | ACK | CREATE, no EXCL
    assert u32(msg, 8) == 0                              # seq placeholder
    assert msg[16:20] == bytes([1, 0, 0, 0])             # NFPROTO_INET, V0, res_id 0
    top = attrs(msg[20:])
    assert top[1] == b"netfence\0" and top[2] == b"uid-web\0"
    key = attrs(attrs(attrs(top[3])[1])[1])[1]           # ELEMENTS > ELEM > KEY > VALUE
    assert key == bytes(4)
    assert entry["key_offset"] + 4 == len(msg)


def test_destroy_template_differs_only_in_type_and_flags():
    entry = nfencode.build_templates(LOGIN)["sets"]["scg-web"]
    new, destroy = entry["new"], entry["destroy"]
    assert u16(destroy, 4) == (10 << 8) | 30             # NFT_MSG_DESTROYSETELEM
    assert u16(destroy, 6) == 0x001 | 0x004
    assert new[:4] == destroy[:4] and new[8:] == destroy[8:]


def test_batch_begin_and_end():
    templates = nfencode.build_templates(LOGIN)
    for key, kind in (("begin", 0x10), ("end", 0x11)):
        msg = templates[key]
        assert len(msg) == 20 and u16(msg, 4) == kind and u16(msg, 6) == 1
        assert msg[16:20] == bytes([0, 0, 0, 10])        # AF_UNSPEC, V0, htons(10)


def test_templates_are_marshal_safe():
    import marshal
    templates = nfencode.build_templates(LOGIN)
    assert marshal.loads(marshal.dumps(templates)) == templates


def test_names_are_checked():
    with pytest.raises(ValueError):
        nfencode.set_templates("x" * 256, 4)
    with pytest.raises(ValueError):
        nfencode.set_templates("a\0b", 4)


# ---- patching ---------------------------------------------------------------------

def test_python_fill_patches_seq_and_key():
    entry = nfencode.build_templates(LOGIN)["sets"]["uid-web"]
    key = (1001).to_bytes(4, ORDER)
    msg = fastpath_py.nf_fill(entry["new"], 77, key, entry["key_offset"])
    assert len(msg) == len(entry["new"]) and u32(msg, 8) == 77
    assert msg[entry["key_offset"]:entry["key_offset"] + 4] == key
    with pytest.raises(ValueError):
        fastpath_py.nf_fill(entry["new"], 1, key, len(entry["new"]) - 2)


def test_c_fill_rejects_out_of_range():
    impl = c_impl()
    out = impl.ffi.new("uint8_t[]", 64)
    template = bytes(40)
    assert impl.lib.nf_fill(out, 64, template, 40, 1, b"abcd", 38, 4) == -22   # EINVAL
    assert impl.lib.nf_fill(out, 16, template, 40, 1, b"abcd", 20, 4) == -28   # ENOSPC
    assert impl.lib.nf_fill(out, 64, template, 40, 5, b"abcd", 20, 4) == 40


def test_c_version_matches_package():
    impl = c_impl()
    from netfence import __version__
    assert impl.ffi.string(impl.lib.nf_version()).decode() == __version__


def test_stale_extension_falls_back_to_python(monkeypatch):
    c_impl()
    monkeypatch.setattr(fastpath, "__version__", "0.0.0-other")
    impl = fastpath._load("c")
    assert impl.name == "python" and "stale" in impl.reason


elements = st.dictionaries(
    st.sampled_from(["uid-web", "ucg-web", "scg-web", "uid-no-servers", "scg-no-servers",
                     "scg-gone"]),
    st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3), max_size=6)


def as_hex(raw):
    out = {}
    for name, values in raw.items():
        size = 4 if name.startswith("uid-") else 8
        out[name] = sorted({v.to_bytes(size, ORDER).hex() for v in values})
    return out


@settings(max_examples=200, deadline=None)
@given(raw=elements, kind=st.sampled_from(["new", "destroy"]), seq=st.integers(1, 2**31))
def test_c_and_python_build_identical_batches(raw, kind, seq):
    impl = c_impl()
    templates = nfencode.build_templates(LOGIN)
    msgs, _ = fastpath.messages(templates, kind, as_hex(raw))
    c_bytes = impl.to_bytes(impl.batch(msgs, seq))
    py_bytes = fastpath._PyImpl("test").batch(msgs, seq)
    assert c_bytes == py_bytes


@settings(max_examples=100, deadline=None)
@given(raw=elements, kind=st.sampled_from(["new", "destroy"]))
def test_snapshot_templates_and_built_on_the_fly_agree(raw, kind):
    """close builds its messages without the snapshot: the bytes must not differ."""
    templates = nfencode.build_templates(LOGIN)
    py = fastpath._PyImpl("test")
    with_t = py.batch(fastpath.messages(templates, kind, as_hex(raw))[0], 1)
    without = py.batch(fastpath.messages(None, kind, as_hex(raw))[0], 1)
    assert with_t == without


def test_batch_layout_and_sequence_numbers():
    templates = nfencode.build_templates(LOGIN)
    msgs, _ = fastpath.messages(templates, "new", {"uid-web": [(5).to_bytes(4, ORDER).hex()],
                                                   "scg-web": [(9).to_bytes(8, ORDER).hex()]})
    batch = fastpath._PyImpl("test").batch(msgs, 10)
    offset, seqs = 0, []
    while offset < len(batch):
        seqs.append(u32(batch, offset + 8))
        offset += u32(batch, offset)
    assert offset == len(batch) and seqs == [10, 11, 12, 13]


# ---- acks -------------------------------------------------------------------------

def ack(seq, err, payload=b""):
    body = err.to_bytes(4, ORDER, signed=True) + payload
    return ((16 + len(body)).to_bytes(4, ORDER) + (2).to_bytes(2, ORDER) + bytes(2)
            + seq.to_bytes(4, ORDER) + bytes(4) + body)


def test_acks_fill_errors_by_sequence_number():
    errors = [fastpath_py.PENDING] * 3
    data = ack(2, 0) + ack(4, -2, bytes(16)) + ack(3, 0)
    rc, pending = fastpath_py._acks(data, 1, 3, errors, 3)
    assert (rc, pending, errors) == (0, 0, [0, 0, -2])


def test_error_on_batch_begin_is_a_batch_level_failure():
    errors = [fastpath_py.PENDING] * 2
    rc, pending = fastpath_py._acks(ack(1, -1), 1, 2, errors, 2)
    assert rc == -1 and pending == 2


def test_truncated_ack_is_rejected():
    data = (18).to_bytes(4, ORDER) + (2).to_bytes(2, ORDER) + bytes(12)
    rc, _ = fastpath_py._acks(data, 1, 1, [1], 1)
    assert rc == -errno.EBADMSG


# ---- transactions over a fake kernel ----------------------------------------------

class FakeKernel:
    """Answers batches like nf_tables: ENOENT for messages naming a missing set, and
    a refused batch applies nothing."""

    def __init__(self, sets):
        self.sets, self.batches = set(sets), []
        self.name, self.reason = "fake", ""

    def batch(self, messages, first_seq):
        return fastpath._PyImpl("fake").batch(messages, first_seq)

    def send(self, buf, first_seq, nmsgs, timeout_ms, flags=0):
        names, offset = [], 0
        while offset < len(buf):
            length = u32(buf, offset)
            top = attrs(buf[offset + 20:offset + length])
            if 2 in top:
                names.append(top[2].rstrip(b"\0").decode())
            offset += length
        self.batches.append(names)
        return 0, [0 if n in self.sets else -2 for n in names]


def test_destroy_retries_without_missing_sets(monkeypatch):
    kernel = FakeKernel({"uid-web", "scg-web"})
    monkeypatch.setattr(fastpath, "_impl", kernel)
    gone = fastpath.destroy_elements({"uid-web": ["01000000"], "scg-gone": ["00" * 8],
                                      "scg-web": ["02" * 8]})
    assert gone == ["scg-gone"]
    assert kernel.batches == [["scg-gone", "scg-web", "uid-web"], ["scg-web", "uid-web"]]


def test_destroy_when_the_table_is_gone(monkeypatch):
    kernel = FakeKernel(set())
    monkeypatch.setattr(fastpath, "_impl", kernel)
    assert fastpath.destroy_elements({"uid-web": ["01000000"]}) == ["uid-web"]
    assert len(kernel.batches) == 1


def test_add_failure_names_the_set(monkeypatch):
    monkeypatch.setattr(fastpath, "_impl", FakeKernel({"uid-web"}))
    with pytest.raises(KernelError) as info:
        fastpath.add_elements(None, {"uid-web": ["01000000"], "scg-gone": ["00" * 8]})
    assert "scg-gone" in str(info.value) and info.value.errno == 2


def test_nothing_to_do_sends_nothing(monkeypatch):
    kernel = FakeKernel(set())
    monkeypatch.setattr(fastpath, "_impl", kernel)
    fastpath.add_elements(None, {})
    assert fastpath.destroy_elements({"uid-web": []}) == []
    assert kernel.batches == []


# ---- timed elements (time windows): destroy + add with a timeout, one batch ----------

timed_raw = st.dictionaries(
    st.sampled_from(["tuid-web", "tscg-web", "any-tuid", "any-tscg"]),
    st.dictionaries(st.integers(0, 2**32 - 1), st.integers(1, 2**40), min_size=1,
                    max_size=3), max_size=4)


def timed_hex(raw):
    return {name: {v.to_bytes(4 if "uid" in name else 8, ORDER).hex(): ms
                   for v, ms in keys.items()} for name, keys in raw.items()}


@settings(max_examples=200, deadline=None)
@given(raw=elements, timed=timed_raw, seq=st.integers(1, 2**31))
def test_c_and_python_build_identical_timed_batches(raw, timed, seq):
    impl = c_impl()
    templates = nfencode.build_templates(LOGIN)
    msgs, ops = fastpath.messages(templates, "new", as_hex(raw), timed_hex(timed))
    assert len(msgs) == len(ops) + 2
    assert impl.to_bytes(impl.batch(msgs, seq)) == fastpath._PyImpl("test").batch(msgs, seq)


def test_a_timed_key_goes_as_destroy_then_add_with_its_timeout():
    key = (1001).to_bytes(4, ORDER).hex()
    msgs, ops = fastpath.messages(None, "new", {"uid-web": ["01000000"]},
                                  {"tuid-web": {key: 90_000}})
    batch = fastpath._PyImpl("test").batch(msgs, 1)
    found, offset = [], 0
    while offset < len(batch):
        length = u32(batch, offset)
        found.append((u16(batch, offset + 4) & 0xFF, batch[offset:offset + length]))
        offset += length
    types = [t for t, _ in found]
    assert types[1:4] == [nfencode.NFT_MSG_NEWSETELEM, nfencode.NFT_MSG_DESTROYSETELEM,
                          nfencode.NFT_MSG_NEWSETELEM]
    assert ops == [("uid-web", "01000000"), ("tuid-web", key), ("tuid-web", key)]
    timed_msg = found[3][1]
    expected, _ = nfencode.timed_element_message("netfence", "tuid-web",
                                                 bytes.fromhex(key), 90_000)
    assert timed_msg[:8] + timed_msg[12:] == expected[:8] + expected[12:]   # seq aside
    assert (90_000).to_bytes(8, "big") in timed_msg and bytes.fromhex(key) in timed_msg
    untimed = found[1][1]
    assert (90_000).to_bytes(8, "big") not in untimed     # login elements: no timeout


def test_only_timed_elements_are_still_sent(monkeypatch):
    kernel = FakeKernel({"tscg-web"})
    monkeypatch.setattr(fastpath, "_impl", kernel)
    fastpath.add_elements(None, {}, timed={"tscg-web": {"02" * 8: 5000}})
    assert kernel.batches == [["tscg-web", "tscg-web"]]
