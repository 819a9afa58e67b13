"""The login fast path in pure Python, and the message templates both paths share.

`build_templates(login)` runs at compile time (compiler.py stores its result in the
login part under "templates"); the hook only copies a template and patches the
sequence number and the key. Every function below is the byte-identical twin of the
C function of the same name in c_ext/fastpath.c (tests/unit/test_fastpath.py checks
it), so the hook works the same when the extension is missing or stale.

Message layout (names as in the kernel headers):

  nlmsghdr {len u32, type u16, flags u16, seq u32, pid u32}       host byte order
  nfgenmsg {family u8, version u8 = NFNETLINK_V0, res_id be16}
  NEWSETELEM / DESTROYSETELEM, family NFPROTO_INET, res_id 0:
    NFTA_SET_ELEM_LIST_TABLE    "netfence\\0"
    NFTA_SET_ELEM_LIST_SET      "<set>\\0"
    NFTA_SET_ELEM_LIST_ELEMENTS nested
      NFTA_LIST_ELEM            nested
        NFTA_SET_ELEM_KEY       nested
          NFTA_DATA_VALUE       key bytes (uid: 4, cgroup id: 8, host order)
  BATCH_BEGIN / BATCH_END: family AF_UNSPEC, res_id = htons(NFNL_SUBSYS_NFTABLES)

No NFNL_BATCH_GENID: a login only adds (or destroys) elements, there is no
read-modify-write to protect, and additions commute with a concurrent reload, which
itself uses GENID and so re-reads the elements if a login slipped in between.

Imports nothing at module level: `_socket` (not `socket`, which costs ~10 ms through
`enum`) is imported only when the Python path actually sends.
"""

import sys

# <linux/netlink.h>, <linux/netfilter/nfnetlink.h>, <linux/netfilter/nf_tables.h>
NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x001
NLM_F_ACK = 0x004
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
NFNL_MSG_BATCH_BEGIN = 0x10
NFNL_MSG_BATCH_END = 0x11
NFNL_SUBSYS_NFTABLES = 10
NFNETLINK_V0 = 0
NFPROTO_UNSPEC = 0
NFPROTO_INET = 1
NFT_MSG_NEWSETELEM = 12
NFT_MSG_DESTROYSETELEM = 30      # Linux >= 6.3; absent elements are not an error
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY = 1
NFTA_DATA_VALUE = 1
NFT_NAME_MAXLEN = 256            # NFT_TABLE_MAXNAMELEN / NFT_SET_MAXNAMELEN, with the NUL

TEMPLATE_FORMAT = 1
TABLE = "netfence"
SEQ_OFFSET = 8
KEY_LENGTHS = {"uid_set": 4, "ucg_set": 8, "scg_set": 8}
PENDING = 1                      # errors[i] before message i was answered (as in C)
_ORDER = sys.byteorder

EINVAL = 22
ENOSPC = 28
EINTR = 4
ETIMEDOUT = 110
EBADMSG = 74
EPROTO = 71


# ---- templates (compile time) -----------------------------------------------------

def build_templates(login, table=TABLE):
    """Message templates for every set of every profile of a login part.

    Marshal-able: {"format", "table", "family", "seq_offset", "begin", "end",
    "sets": {set name: {"key_len", "key_offset", "new", "destroy"}}}.
    """
    sets = {}
    owners = [login["profiles"][name] for name in sorted(login["profiles"])]
    if login.get("guards"):
        owners.append(login["guards"])
    for owner in owners:
        for field, key_len in KEY_LENGTHS.items():
            sets[owner[field]] = set_templates(owner[field], key_len, table)
    return {"format": TEMPLATE_FORMAT, "table": table, "family": NFPROTO_INET,
            "seq_offset": SEQ_OFFSET, "begin": batch_message(NFNL_MSG_BATCH_BEGIN),
            "end": batch_message(NFNL_MSG_BATCH_END), "sets": sets}


def set_templates(set_name, key_len, table=TABLE):
    """The NEWSETELEM and DESTROYSETELEM templates of one set (key bytes zero)."""
    new, key_offset = element_message(NFT_MSG_NEWSETELEM,
                                      NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
                                      table, set_name, key_len)
    destroy, offset = element_message(NFT_MSG_DESTROYSETELEM, NLM_F_REQUEST | NLM_F_ACK,
                                      table, set_name, key_len)
    assert offset == key_offset and len(new) == len(destroy)
    return {"key_len": key_len, "key_offset": key_offset, "new": new, "destroy": destroy}


def element_message(msg_type, flags, table, set_name, key_len):
    """(message bytes with seq 0 and a zero key, offset of the key bytes)."""
    for name in (table, set_name):
        if not name or len(name.encode()) >= NFT_NAME_MAXLEN or "\0" in name:
            raise ValueError(f"invalid nftables name {name!r}")
    value = _attr(NFTA_DATA_VALUE, bytes(key_len))
    elements = _nested(NFTA_SET_ELEM_LIST_ELEMENTS,
                       _nested(NFTA_LIST_ELEM, _nested(NFTA_SET_ELEM_KEY, value)))
    body = (_attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
            + _attr(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0") + elements)
    message = _message((NFNL_SUBSYS_NFTABLES << 8) | msg_type, flags, NFPROTO_INET, 0, body)
    # The key is the last attribute; 4 and 8 byte keys need no padding after them.
    pad = -key_len % 4
    return message, len(message) - pad - key_len


def element_list_message(msg_type, flags, seq, table, set_name, keys):
    """One NEWSETELEM/DESTROYSETELEM message for many keys (reload carries thousands
    of live elements over; pyroute2 takes ~0.5 ms per element, this ~3 us)."""
    items = b"".join(_nested(NFTA_LIST_ELEM, _nested(NFTA_SET_ELEM_KEY,
                                                     _attr(NFTA_DATA_VALUE, key)))
                     for key in keys)
    body = (_attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
            + _attr(NFTA_SET_ELEM_LIST_SET, set_name.encode() + b"\0")
            + _nested(NFTA_SET_ELEM_LIST_ELEMENTS, items))
    message = _message((NFNL_SUBSYS_NFTABLES << 8) | msg_type, flags, NFPROTO_INET, 0, body)
    return message[:8] + seq.to_bytes(4, _ORDER) + message[12:]


def batch_message(msg_type):
    return _message(msg_type, NLM_F_REQUEST, NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES, b"")


def _message(msg_type, flags, family, res_id, body):
    payload = bytes((family, NFNETLINK_V0)) + res_id.to_bytes(2, "big") + body
    return ((16 + len(payload)).to_bytes(4, _ORDER) + msg_type.to_bytes(2, _ORDER)
            + flags.to_bytes(2, _ORDER) + bytes(8) + payload)


def _attr(attr_type, data):
    length = 4 + len(data)
    return (length.to_bytes(2, _ORDER) + attr_type.to_bytes(2, _ORDER) + data
            + bytes(-length % 4))


def _nested(attr_type, data):
    return _attr(attr_type | NLA_F_NESTED, data)


# ---- the twins of c_ext/fastpath.c ------------------------------------------------

def nf_fill(template, seq, key, key_offset):
    """Copy of `template` with its sequence number and key patched (C: nf_fill)."""
    if len(template) < 16 or key_offset < 16 or key_offset + len(key) > len(template):
        raise ValueError("key outside the template")
    return (template[:SEQ_OFFSET] + seq.to_bytes(4, _ORDER)
            + template[SEQ_OFFSET + 4:key_offset] + key
            + template[key_offset + len(key):])


def build_batch(templates, ops, first_seq):
    """One batch: BEGIN, one message per (kind, set, key bytes) in ops, END.

    kind is "new" or "destroy"; the messages get first_seq+1 … first_seq+len(ops).
    """
    parts = [nf_fill(templates["begin"], first_seq, b"", 16)]
    for index, (kind, set_name, key) in enumerate(ops, 1):
        entry = templates["sets"][set_name]
        if len(key) != entry["key_len"]:
            raise ValueError(f"key of {len(key)} bytes for set {set_name}")
        parts.append(nf_fill(entry[kind], first_seq + index, key, entry["key_offset"]))
    parts.append(nf_fill(templates["end"], first_seq + len(ops) + 1, b"", 16))
    return b"".join(parts)


NF_DETACH_CLOSE = 1


def nf_batch(buf, first_seq, nmsgs, timeout_ms, flags=0):
    """Send a batch, read every ack: (rc, errors) exactly as C nf_batch."""
    import _socket
    from time import monotonic

    errors = [PENDING] * nmsgs
    pending = nmsgs
    rc = 0
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                          NETLINK_NETFILTER)
    try:
        try:
            sock.sendto(buf, (0, 0))
        except OSError as err:
            return -err.errno, errors
        deadline = monotonic() + timeout_ms / 1000
        while pending:
            left = deadline - monotonic()
            if left <= 0:
                rc = -ETIMEDOUT
                break
            sock.settimeout(left)
            try:
                data, sender = sock.recvfrom(16384)
            except TimeoutError:
                rc = -ETIMEDOUT
                break
            except InterruptedError:
                rc = -EINTR
                break
            except OSError as err:
                rc = -err.errno
                break
            if sender[0] != 0:
                continue
            rc, pending = _acks(data, first_seq, nmsgs, errors, pending)
            if rc:
                break
    finally:
        _release(sock, flags)
    return rc, errors


def _release(sock, flags):
    """C nf_release: with NF_DETACH_CLOSE a child holds the socket until we exit."""
    import posix
    if not flags & NF_DETACH_CLOSE:
        sock.close()
        return
    read_end, write_end = posix.pipe2(posix.O_CLOEXEC)
    pid = posix.fork()
    if pid == 0:
        try:
            posix.close(write_end)
            for fd in (0, 1, 2):
                try:
                    posix.close(fd)
                except OSError:
                    pass
            posix.read(read_end, 1)
            sock.close()
        finally:
            posix._exit(0)
    posix.close(read_end)
    sock.close()                    # write_end stays open until this process exits


def _acks(data, first_seq, nmsgs, errors, pending):
    offset = 0
    while offset + 16 <= len(data):
        length = int.from_bytes(data[offset:offset + 4], _ORDER)
        if length < 16 or offset + length > len(data):
            break
        msg_type = int.from_bytes(data[offset + 4:offset + 6], _ORDER)
        if msg_type == NLMSG_ERROR:
            if length < 20:
                return -EBADMSG, pending
            seq = int.from_bytes(data[offset + 8:offset + 12], _ORDER)
            err = int.from_bytes(data[offset + 16:offset + 20], _ORDER, signed=True)
            index = (seq - first_seq - 1) & 0xFFFFFFFF
            if index < nmsgs:
                if errors[index] == PENDING:
                    errors[index] = err
                    pending -= 1
            elif err != 0:
                return (err if err < 0 else -EPROTO), pending
        offset += (length + 3) & ~3
    return 0, pending


def _errno(err):
    return -(err.errno or EINVAL)


# posix, not os: under `python3 -I -S` importing os costs ~2 ms (its _collections_abc).

def cg_mkdir(path, mode):
    import posix
    try:
        posix.mkdir(path, mode)
    except OSError as err:
        return _errno(err)
    return 0


def cg_rmdir(path):
    import posix
    try:
        posix.rmdir(path)
    except OSError as err:
        return _errno(err)
    return 0


def cg_move(procs, pid):
    import posix
    try:
        fd = posix.open(procs, posix.O_WRONLY | posix.O_CLOEXEC | posix.O_NOFOLLOW)
    except OSError as err:
        return _errno(err)
    try:
        posix.write(fd, b"%d\n" % pid)
    except OSError as err:
        return _errno(err)
    finally:
        posix.close(fd)
    return 0


def cg_id(path):
    """(0, id) or (-errno, 0)."""
    import posix
    try:
        return 0, posix.stat(path).st_ino
    except OSError as err:
        return _errno(err), 0
