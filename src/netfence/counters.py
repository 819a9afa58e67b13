"""Read the accounting sets' per-element counters (packets, bytes) from the kernel.

The accounting sets (setkinds.is_counted: acct-out, acct-in, denied-P) carry a counter
in every element (the set's NFTA_SET_EXPR); the kernel reports it with the element,
as NFTA_SET_ELEM_EXPR (one expression) or NFTA_SET_ELEM_EXPRESSIONS (a list), each a
`counter` with NFTA_COUNTER_BYTES and NFTA_COUNTER_PACKETS (be64).

Two ways to read: a dump of whole sets (status, metrics, reload), or single elements
with one GETSETELEM request each (a closing session reads its own few elements: cost
independent of how many sessions there are). A missing table, set or element is
simply absent from the result: a closer that races with a reload, or a policy without
accounting, is not an error.

Light on purpose (a closer in the login hook may import it): nfconst, nfencode,
setkinds and errors; `_socket` only when it reads. No pyroute2, no struct, no json.
"""

import errno

from . import setkinds
from .errors import KernelError
from .nfconst import (
    HOST_ORDER, NETLINK_NETFILTER, NETWORK_ORDER, NFNL_SUBSYS_NFTABLES, NFT_MSG_GETSET,
    NFT_MSG_GETSETELEM, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFTA_COUNTER_BYTES,
    NFTA_COUNTER_PACKETS, NFTA_DATA_VALUE, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_LIST_ELEM,
    NFTA_SET_ELEM_EXPR, NFTA_SET_ELEM_EXPRESSIONS, NFTA_SET_ELEM_KEY,
    NFTA_SET_ELEM_LIST_ELEMENTS, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE,
    NFTA_SET_NAME, NFTA_SET_TABLE, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, NFGENMSG_LEN)
from .nfencode import attr, cstring, element_list_message, nft_message

ATTRS_OFFSET = NLMSG_HDRLEN + NFGENMSG_LEN
RECV_SIZE = 1 << 17
TIMEOUT_S = 5.0
DUMP_ATTEMPTS = 3            # a dump the kernel flags NLM_F_DUMP_INTR is read again
KEYS_PER_SEND = 64           # single-element requests per write: their replies fit the
                             # default receive buffer with room to spare
ABSENT = (errno.ENOENT,)     # no table, set or element: not there, not a failure


def read_counters(sets=None, keys=None, table=setkinds.TABLE):
    """{set name: {hex key: (packets, bytes)}}.

    sets: names to read (None: the sets of `keys`, or without keys every counted set
    of the table); keys: {set: [hex key]} to read only those elements of those sets,
    one request each, instead of a dump (a set none of whose keys is there is absent).
    Raises KernelError on a real failure (not on absence)."""
    import _socket
    sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                          NETLINK_NETFILTER)
    try:
        sock.settimeout(TIMEOUT_S)
        reader = _Reader(sock, table)
        if sets is None:
            sets = list(keys) if keys is not None else [
                name for name in reader.set_names() if setkinds.is_counted(name)]
        out = {}
        for name in sets:
            wanted = (keys or {}).get(name)
            got = reader.elements(name, wanted) if wanted is not None else reader.dump(name)
            if got is not None and (got or wanted is None):
                out[name] = got
        return out
    finally:
        sock.close()


class _Reader:
    def __init__(self, sock, table):
        self.sock, self.table, self.seq = sock, table, 0

    def _next_seq(self):
        self.seq += 1
        return self.seq

    def set_names(self):
        body = attr(NFTA_SET_TABLE, cstring(self.table))
        names = []
        for attrs in self._dump(NFT_MSG_GETSET, body, NFT_MSG_NEWSET, "list sets") or ():
            if _cstr(attrs.get(NFTA_SET_TABLE)) == self.table:
                names.append(_cstr(attrs.get(NFTA_SET_NAME)))
        return names

    def dump(self, set_name):
        """Every element's counter of one set, None when the set is absent."""
        body = (attr(NFTA_SET_ELEM_LIST_TABLE, cstring(self.table))
                + attr(NFTA_SET_ELEM_LIST_SET, cstring(set_name)))
        replies = self._dump(NFT_MSG_GETSETELEM, body, NFT_MSG_NEWSETELEM,
                             f"list elements of set {set_name}")
        return None if replies is None else self._counters(replies, set_name)

    def elements(self, set_name, keys):
        """The counters of the listed elements of one set (those present)."""
        out = {}
        keys = list(keys)
        for start in range(0, len(keys), KEYS_PER_SEND):
            chunk = keys[start:start + KEYS_PER_SEND]
            first = self.seq
            buf = b"".join(element_list_message(
                NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_ACK, self._next_seq(), self.table,
                set_name, [bytes.fromhex(key)]) for key in chunk)
            replies = self._exchange(buf, first, len(chunk), f"get elements of set {set_name}")
            out.update(self._counters(replies, set_name))
        return out

    def _counters(self, replies, set_name):
        out = {}
        for attrs in replies:
            if (_cstr(attrs.get(NFTA_SET_ELEM_LIST_TABLE)) != self.table
                    or _cstr(attrs.get(NFTA_SET_ELEM_LIST_SET)) != set_name):
                continue
            out.update(element_counters(attrs.get(NFTA_SET_ELEM_LIST_ELEMENTS, b"")))
        return out

    def _dump(self, msg_type, body, reply_type, operation):
        """[top-level attributes of each reply], None when the kernel says ENOENT."""
        for _attempt in range(DUMP_ATTEMPTS):
            seq = self._next_seq()
            self._send(nft_message(msg_type, NLM_F_REQUEST | NLM_F_DUMP, body, seq), operation)
            replies, interrupted = [], False
            for kind, flags, reply_seq, data in self._messages(operation):
                if reply_seq != seq:
                    continue
                if kind == NLMSG_DONE:
                    break
                if kind == NLMSG_ERROR:
                    code = _error_code(data)
                    if code in ABSENT:
                        return None
                    raise KernelError(operation, code or errno.EPROTO)
                interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                if kind == (NFNL_SUBSYS_NFTABLES << 8) | reply_type:
                    replies.append(parse_attrs(data, ATTRS_OFFSET))
            if not interrupted:
                return replies
        raise KernelError(operation, errno.EAGAIN, "the set kept changing during the dump")

    def _exchange(self, buf, first_seq, count, operation):
        """Send `count` acked requests (seq first_seq + 1 ...); their replies' attributes."""
        self._send(buf, operation)
        pending, replies = count, []
        for kind, _flags, seq, data in self._messages(operation):
            if not first_seq < seq <= first_seq + count:
                continue
            if kind == NLMSG_ERROR:
                code = _error_code(data)
                if code and code not in ABSENT:
                    raise KernelError(operation, code)
                pending -= 1
                if not pending:
                    return replies
            elif kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM:
                replies.append(parse_attrs(data, ATTRS_OFFSET))
        return replies

    def _send(self, buf, operation):
        try:
            self.sock.sendto(buf, (0, 0))
        except OSError as err:
            raise KernelError(operation, err.errno or errno.EIO) from None

    def _messages(self, operation):
        """(type, flags, seq, bytes) of every netlink message received, until the
        caller stops reading; a timeout is a KernelError (ETIMEDOUT)."""
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except TimeoutError:
                raise KernelError(operation, errno.ETIMEDOUT) from None
            except OSError as err:
                raise KernelError(operation, err.errno or errno.EIO) from None
            offset = 0
            while offset + NLMSG_HDRLEN <= len(data):
                length = _int(data[offset:offset + 4])
                if length < NLMSG_HDRLEN or offset + length > len(data):
                    break
                msg = data[offset:offset + length]
                yield _int(msg[4:6]), _int(msg[6:8]), _int(msg[8:12]), msg
                offset += (length + 3) & ~3


def _int(data):
    return int.from_bytes(data, HOST_ORDER)


def _error_code(msg):
    """The positive errno of an NLMSG_ERROR message (0: an ack)."""
    return -int.from_bytes(msg[NLMSG_HDRLEN:NLMSG_HDRLEN + 4], HOST_ORDER, signed=True)


def _cstr(data):
    return data.rstrip(b"\0").decode("utf-8", "replace") if data is not None else None


def iter_attrs(data, offset=0):
    """(attribute type, payload) of every netlink attribute from offset on."""
    while offset + 4 <= len(data):
        length = _int(data[offset:offset + 2])
        if length < 4:
            break
        yield _int(data[offset + 2:offset + 4]) & NLA_TYPE_MASK, data[offset + 4:offset + length]
        offset += (length + 3) & ~3


def parse_attrs(data, offset=0):
    """{attribute type: payload}; the first occurrence of each type wins."""
    out = {}
    for kind, payload in iter_attrs(data, offset):
        out.setdefault(kind, payload)
    return out


def element_counters(elements):
    """{hex key: (packets, bytes)} of an NFTA_SET_ELEM_LIST_ELEMENTS payload (elements
    without a counter are left out)."""
    out = {}
    for kind, item in iter_attrs(elements):
        if kind != NFTA_LIST_ELEM:
            continue
        attrs = parse_attrs(item)
        key = parse_attrs(attrs.get(NFTA_SET_ELEM_KEY, b"")).get(NFTA_DATA_VALUE)
        counter = element_counter(attrs)
        if key is not None and counter is not None:
            out[key.hex()] = counter
    return out


def element_counter(attrs):
    """(packets, bytes) of one element (its attributes), None when it has no counter."""
    single = attrs.get(NFTA_SET_ELEM_EXPR)
    exprs = [single] if single is not None else [
        item for kind, item in iter_attrs(attrs.get(NFTA_SET_ELEM_EXPRESSIONS, b""))
        if kind == NFTA_LIST_ELEM]
    for expr in exprs:
        expr_attrs = parse_attrs(expr)
        if _cstr(expr_attrs.get(NFTA_EXPR_NAME)) == "counter":
            data = parse_attrs(expr_attrs.get(NFTA_EXPR_DATA, b""))
            return (_be64(data.get(NFTA_COUNTER_PACKETS)), _be64(data.get(NFTA_COUNTER_BYTES)))
    return None


def _be64(data):
    return int.from_bytes(data, NETWORK_ORDER) if data else 0


def counter_expression(packets, bytes_):
    """An NFTA_SET_ELEM_EXPR payload: a counter starting at (packets, bytes) -- how a
    reload re-adds an element without zeroing it (the kernel's counter init reads
    NFTA_COUNTER_BYTES / NFTA_COUNTER_PACKETS)."""
    data = (attr(NFTA_COUNTER_BYTES, int(bytes_).to_bytes(8, NETWORK_ORDER))
            + attr(NFTA_COUNTER_PACKETS, int(packets).to_bytes(8, NETWORK_ORDER)))
    return attr(NFTA_EXPR_NAME, cstring("counter")) + attr(NFTA_EXPR_DATA, data)
