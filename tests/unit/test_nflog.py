"""nflog.py: the bind request and the parser of NFULNL_MSG_PACKET, on hand-built bytes;
an overrun (ENOBUFS) is counted, never raised."""

import errno
import struct

import pytest

from netfence import nflog
from netfence.nfencode import attr, message


def packet_message(*attrs, family=10):
    return message(nflog.PACKET_TYPE, 0, family, 5140, b"".join(attrs))


def be32(value):
    return struct.pack(">I", value)


def test_config_message_binds_the_group_copies_128_bytes_and_sends_at_once():
    data = nflog.config_message(5140, seq=7)
    length, msg_type, flags, seq, _ = struct.unpack_from("=IHHII", data)
    assert length == len(data) and seq == 7
    assert msg_type == (4 << 8) | 1                      # NFNL_SUBSYS_ULOG, MSG_CONFIG
    assert flags == 0x001 | 0x004                        # REQUEST | ACK
    assert data[16:20] == bytes([0, 0]) + (5140).to_bytes(2, "big")   # res_id: the group
    body = data[20:]
    assert body[:8] == struct.pack("=HH", 5, 1) + bytes([1, 0, 0, 0])        # CMD_BIND
    assert body[8:16] == struct.pack("=HH", 10, 2) + struct.pack(">IBx", 128, 2)[:4]
    assert body[16:20] == struct.pack(">IBx", 128, 2)[4:] + bytes(2)
    assert body[20:28] == struct.pack("=HH", 8, 5) + be32(1)              # QTHRESH 1


def test_a_packet_is_parsed_field_by_field():
    payload = bytes(range(40))
    data = packet_message(
        attr(nflog.NFULA_PACKET_HDR, struct.pack(">HBx", 0x86DD, 3)),
        attr(nflog.NFULA_MARK, be32(0xDEADBEEF)),
        attr(nflog.NFULA_TIMESTAMP, struct.pack(">QQ", 1764500000, 250000)),
        attr(nflog.NFULA_IFINDEX_OUTDEV, be32(1)),
        attr(nflog.NFULA_UID, be32(1001)), attr(nflog.NFULA_GID, be32(100)),
        attr(nflog.NFULA_PREFIX, b"netfence web\0"),
        attr(nflog.NFULA_PAYLOAD, payload))
    got = nflog.parse_packet(data)
    assert got == {"family": 10, "hook": 3, "direction": "egress", "mark": 0xDEADBEEF,
                   "time": 1764500000.25, "indev": None, "outdev": 1, "uid": 1001,
                   "gid": 100, "prefix": "netfence web", "payload": payload}


def test_a_packet_without_socket_or_timestamp_has_none_for_them():
    data = packet_message(attr(nflog.NFULA_PACKET_HDR, struct.pack(">HBx", 0x0800, 1)),
                          attr(nflog.NFULA_IFINDEX_INDEV, be32(2)),
                          attr(nflog.NFULA_PREFIX, b"netfence web nocg\0"), family=2)
    got = nflog.parse_packet(data)
    assert got["direction"] == "ingress" and got["indev"] == 2
    assert got["uid"] is None and got["gid"] is None and got["time"] is None
    assert got["mark"] is None and got["payload"] == b""
    assert got["prefix"] == "netfence web nocg"


def test_short_and_foreign_messages_are_skipped():
    good = packet_message(attr(nflog.NFULA_PREFIX, b"netfence a\0"))
    foreign = message((4 << 8) | 1, 0, 0, 0, b"")
    truncated = good[:-3]
    got = nflog.parse_messages(good + foreign + good + truncated)
    assert [p["prefix"] for p in got] == ["netfence a", "netfence a"]
    assert nflog.parse_packet(b"\0" * 10) is None
    # an attribute that claims more than there is: what is there, no exception
    bad = packet_message(struct.pack("=HH", 200, nflog.NFULA_PREFIX) + b"x")
    assert nflog.parse_messages(bad)[0]["prefix"] == "x"


def test_ack_errno():
    ack = struct.pack("=IHHIIi", 36, 2, 0, 1, 0, -errno.EPERM) + bytes(16)
    assert nflog.ack_errno(ack) == errno.EPERM
    assert nflog.ack_errno(struct.pack("=IHHIIi", 36, 2, 0, 1, 0, 0) + bytes(16)) == 0
    assert nflog.ack_errno(packet_message()) is None


class FakeSocket:
    def __init__(self, results):
        self.results = list(results)

    def recv(self, size):
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result


def listener(results):
    sock = object.__new__(nflog.NflogSocket)
    sock.group, sock.lost_bursts, sock.socket = 5140, 0, FakeSocket(results)
    return sock


def test_an_overrun_is_counted_and_reading_goes_on():
    good = packet_message(attr(nflog.NFULA_PREFIX, b"netfence a\0"))
    sock = listener([good, OSError(errno.ENOBUFS, "No buffer space"), good,
                     BlockingIOError()])
    assert len(sock.read()) == 2
    assert sock.lost_bursts == 1


def test_another_error_is_raised():
    sock = listener([OSError(errno.EBADF, "bad")])
    with pytest.raises(OSError):
        sock.read()


class Datagrams:
    """A non-blocking socket holding queued datagrams (the kernel sends each copy at
    once: QTHRESH 1, one message a datagram); counts the recv calls."""

    def __init__(self, datagrams):
        self.queued, self.recvs = list(datagrams), 0

    def recv(self, size):
        if not self.queued:
            raise BlockingIOError(errno.EAGAIN, "empty")
        self.recvs += 1
        return self.queued.pop(0)


def test_a_read_stops_at_its_limit_and_the_rest_waits_for_the_next():
    """watch's loop gets back to select after PACKETS_PER_WAKEUP copies of a flood:
    the real reader takes no more datagrams than that from the socket."""
    def copy(number):
        return packet_message(attr(nflog.NFULA_PACKET_HDR, struct.pack(">HBx", 0x0800, 3)),
                              attr(nflog.NFULA_MARK, be32(number)),
                              attr(nflog.NFULA_PREFIX, b"netfence web\0"), family=2)
    sock = nflog.NflogSocket.__new__(nflog.NflogSocket)
    sock.socket, sock.lost_bursts = Datagrams(copy(n) for n in range(100)), 0
    first = sock.read(64)
    assert [p["mark"] for p in first] == list(range(64))
    assert sock.socket.recvs == 64 and len(sock.socket.queued) == 36
    rest = sock.read(64)
    assert [p["mark"] for p in rest] == list(range(64, 100))
    assert sock.read(64) == []
