"""The netlink connection to nf_tables: send one batch and read its answers; dumps.

A plain AF_NETLINK socket rather than pyroute2's NFTSocket: its batch reader waits
for the acks of each request in turn, so an error that the kernel reports on the
BATCH_BEGIN sequence number (ERESTART for a stale NFNL_BATCH_GENID, or a failed
commit) would leave it waiting forever. Requests are encoded and answers split by
nftnl_wire (no pyroute2); only a request for decoded replies (raw=False, read_table)
loads pyroute2's classes (nftnl_msg).

The kernel processes a batch synchronously inside sendmsg(), so once send() returns
every answer is already queued on the socket: after the ack of the batch's last
message (the only one that asks for an ack; refused messages are always answered) or
a batch-level error, the rest is drained without blocking.
"""

import errno
import socket

from . import nftnl_wire as wire
from .errors import GenerationChanged, KernelError
from .nfconst import (
    HOST_ORDER, NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_NETFILTER, NFNL_SUBSYS_NFTABLES,
    NFPROTO_INET, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR,
    SO_RCVBUFFORCE, SO_SNDBUFFORCE, SOL_NETLINK)

BUFFER = 4 << 20            # a batch must fit the send buffer in one sendmsg()
ACK_ROOM = 1024             # receive buffer per acked message, as nft sizes it: an ack
                            # is a small skb, but its truesize is what counts
RECV_SIZE = 1 << 18
TIMEOUT = 10.0              # the kernel answers in microseconds; this only bounds bugs


# NLM_F_ACK is in the low byte of nlmsg_flags (a u16 in host order at offset 6)
_ACK_BYTE = 6 if HOST_ORDER == "little" else 7


def ack_last_only(messages):
    """The batch's bytes, NLM_F_ACK cleared in every message but the last one before
    END (BEGIN and END carry none). See Connection.batch."""
    data = bytearray(b"".join(message for _op, message, _seq in messages))
    offset = 0
    for index, (_op, message, _seq) in enumerate(messages):
        if index != len(messages) - 2:
            data[offset + _ACK_BYTE] &= ~NLM_F_ACK & 0xFF
        offset += len(message)
    return bytes(data)


class DumpInterrupted(Exception):
    """The ruleset changed during a dump (NLM_F_DUMP_INTR): read again."""


class AcksLost(KernelError):
    """The kernel dropped answers to a batch (ENOBUFS): whether the transaction was
    committed is unknown from the socket; the caller has to look at the ruleset."""


class Connection:
    def __init__(self):
        self._seq = 0
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as exc:
            raise KernelError("open netlink socket to nf_tables", exc.errno or errno.EIO)
        try:
            self._setup()
        except OSError as exc:
            self.sock.close()
            raise KernelError("configure netlink socket", exc.errno or errno.EIO)

    def _setup(self):
        self.sock.bind((0, 0))
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        # The FORCE variants (root) exceed wmem_max/rmem_max (~208 KiB by default):
        # a whole table goes out in one sendmsg(), and every message is acked.
        for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF),
                             (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, force, BUFFER)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER)
        self.sock.settimeout(TIMEOUT)

    def close(self):
        self.sock.close()

    def next_seq(self):
        self._seq += 1
        return self._seq

    # -- requests that are not batches ------------------------------------------

    def request(self, msg_type, attrs, operation, dump=False, family=NFPROTO_INET,
                raw=True):
        """Send one GET request (attrs in nftnl_wire's form); return the replies' bytes
        (see nftnl_wire.parse_attrs), or with raw=False pyroute2's decoded messages."""
        seq = self.next_seq()
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        self._send(wire.build(msg_type, attrs, seq, flags=flags, family=family), operation)
        replies, interrupted = [], False
        while True:
            for header, data in self._recv(operation):
                if header["seq"] != seq:
                    continue            # a stale answer to an earlier request
                interrupted |= bool(header["flags"] & NLM_F_DUMP_INTR)
                if header["type"] == NLMSG_DONE:
                    return self._finish(replies, interrupted, raw)
                if header["type"] == NLMSG_ERROR:
                    code, text = wire.parse_error(data)
                    if code:
                        raise KernelError(operation, code, text)
                    return self._finish(replies, interrupted, raw)
                if header["type"] >> 8 == NFNL_SUBSYS_NFTABLES:
                    replies.append(data)

    @staticmethod
    def _finish(replies, interrupted, raw):
        if interrupted:
            raise DumpInterrupted()
        if raw:
            return replies
        from .nftnl_msg import decode
        return [msg for data in replies for _header, msg, _raw in decode(data)
                if msg is not None]

    # -- batches -----------------------------------------------------------------

    def batch(self, what, messages):
        """Send one transaction and read its answers.

        `messages`: [(operation, bytes, seq)] from BEGIN to END, with sequence numbers
        from next_seq(). Raises KernelError naming the first refused message, or
        `what` when the kernel refused the batch as a whole.

        Only the last message before END keeps NLM_F_ACK (ack_last_only): the kernel
        answers every refused message whatever its flags, and delivers a batch's
        answers in message order after it committed or aborted the whole (a failed
        commit or a stale NFNL_BATCH_GENID: an error on BEGIN's sequence number, sent
        before them). So the last message's answer, or a batch error, means every
        answer is in; an ack per message (3,400 for a 1,000-rule policy) cost the
        kernel and this loop 15-25 ms. nft asks for none.
        """
        begin_seq, end_seq = messages[0][2], messages[-1][2]
        described = {seq: operation for operation, _data, seq in messages[1:-1]}
        expected = {messages[-2][2]} if len(messages) > 2 else set()
        data = ack_last_only(messages)
        self._size_buffers(len(data), len(messages))
        self._send(data, "send batch")
        del data
        errors, batch_error = {}, None
        while expected and batch_error is None:
            for header, raw in self._recv("read batch acks", batch=True):
                if header["type"] != NLMSG_ERROR:
                    continue
                code, text = wire.parse_error(raw)
                seq = header["seq"]
                if seq == begin_seq or seq == end_seq:
                    if code:
                        batch_error = (code, text)
                    continue
                if seq in described:
                    expected.discard(seq)
                    if code:
                        errors[seq] = (code, text)
        self._drain()
        self._raise_for(what, batch_error, errors, described)

    @staticmethod
    def _raise_for(what, batch_error, errors, described):
        if errors:
            first = min(errors)
            code, text = errors[first]
            others = len(errors) - 1
            if others:
                text = (text + "; " if text else "") + f"{others} later message(s) refused too"
            raise KernelError(described[first], code, text)
        if batch_error is not None:
            code, text = batch_error
            if code == errno.ERESTART:
                raise GenerationChanged(what, code, "the ruleset changed since it was read")
            raise KernelError(what, code, text)

    # -- low level -----------------------------------------------------------------

    def _size_buffers(self, length, count):
        """Room for the whole batch in one sendmsg() (netlink refuses a message larger
        than the send buffer: EMSGSIZE) and for every ack, which the kernel queues
        during that sendmsg() (beyond the receive buffer they are dropped: ENOBUFS).
        The kernel doubles what it is given; root may exceed wmem_max/rmem_max."""
        for force, plain, want in ((SO_SNDBUFFORCE, socket.SO_SNDBUF, length + (64 << 10)),
                                   (SO_RCVBUFFORCE, socket.SO_RCVBUF, count * ACK_ROOM)):
            want = min(max(BUFFER, want), 1 << 30)
            if self.sock.getsockopt(socket.SOL_SOCKET, plain) >= 2 * want:
                continue
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, force, want)
            except PermissionError:
                self.sock.setsockopt(socket.SOL_SOCKET, plain, want)
            except OSError as exc:
                raise KernelError("size netlink socket buffers", exc.errno or errno.EIO)

    def _send(self, data, operation):
        try:
            self.sock.send(data)
        except OSError as exc:
            raise KernelError(operation, exc.errno or errno.EIO)

    def _recv(self, operation, batch=False):
        try:
            data = self.sock.recv(RECV_SIZE)
        except socket.timeout:
            raise KernelError(operation, errno.ETIMEDOUT, "no answer from the kernel")
        except OSError as exc:
            if batch and exc.errno == errno.ENOBUFS:
                self._drain()
                raise AcksLost(operation, errno.ENOBUFS,
                               "answers were lost; the ruleset says what was applied")
            # ENOBUFS: answers were lost; the caller cannot tell what was applied
            raise KernelError(operation, exc.errno or errno.EIO)
        return wire.split(data)

    def _drain(self):
        # Non-blocking for real: with a timeout set, Python polls *before* recv(),
        # so MSG_DONTWAIT alone would still wait for the whole timeout.
        self.sock.settimeout(0)
        try:
            while True:
                self.sock.recv(RECV_SIZE)
        except OSError:     # BlockingIOError: drained; anything else: nothing more to read
            pass
        finally:
            self.sock.settimeout(TIMEOUT)
