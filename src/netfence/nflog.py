"""The nfnetlink_log listener of `netfence watch`: denied packets, as emit-P logs them.

`NflogSocket` binds one nflog group (settings.log_group) in the current network
namespace: NFULNL_MSG_CONFIG with NFULNL_CFG_CMD_BIND, copy mode NFULNL_COPY_PACKET
with a range of COPY_RANGE bytes (the headers), queue threshold 1 (each packet is sent
at once, not batched behind a timer) and a large receive buffer. A group has one
listener per namespace: binding one another process holds fails (EPERM), raised as
NflogBusy. The socket and the uid/gid: nfnetlink_log adds NFULA_UID / NFULA_GID
whenever the packet has a full socket with a file (there is no flag for it, unlike
nfqueue's NFQA_CFG_F_UID_GID).

A full receive buffer (a burst the listener did not keep up with) makes recv fail
with ENOBUFS once: the packets it held are lost. `read()` counts that (`lost_bursts`)
and goes on; it never raises for it.

`parse_packet(message)` is pure: one NFULNL_MSG_PACKET message -> a dict.
"""

import errno
import socket
import struct

from . import nfconst, nfencode
from .errors import KernelError, NetfenceError
from .nftnl_wire import parse_attrs

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 0x02
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_QTHRESH = 1, 2, 5
(NFULA_PACKET_HDR, NFULA_MARK, NFULA_TIMESTAMP, NFULA_IFINDEX_INDEV,
 NFULA_IFINDEX_OUTDEV) = 1, 2, 3, 4, 5
NFULA_PAYLOAD, NFULA_PREFIX, NFULA_UID, NFULA_GID = 9, 10, 11, 14
COPY_RANGE = 128             # compiler.LOG_SNAPLEN: the IP and transport headers
RECEIVE_BUFFER = 4 << 20     # 2*log_rate packets a second per profile fit many times over
PACKET_TYPE = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
HOOK_DIRECTION = {3: "egress", 1: "ingress"}     # NF_INET_LOCAL_OUT, NF_INET_LOCAL_IN
_NLMSG = struct.Struct("=IHHII")
_NLMSG_ERROR = struct.Struct("=IHHIIi")


class NflogBusy(NetfenceError):
    """Another process of this network namespace listens on the group."""


def config_message(group, seq=1):
    """The one request: bind `group`, copy COPY_RANGE bytes, send each packet at once."""
    body = (nfencode.attr(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))
            + nfencode.attr(NFULA_CFG_MODE, struct.pack(">IBx", COPY_RANGE, NFULNL_COPY_PACKET))
            + nfencode.attr(NFULA_CFG_QTHRESH, struct.pack(">I", 1)))
    return nfencode.message((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                            nfconst.NLM_F_REQUEST | nfconst.NLM_F_ACK,
                            nfconst.NFPROTO_UNSPEC, group, body, seq)


class NflogSocket:
    """The bound group: poll its fileno(), then read() the parsed packets."""

    def __init__(self, group):
        self.group = group
        self.lost_bursts = 0
        self.socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                    nfconst.NETLINK_NETFILTER)
        try:
            self._setup()
        except BaseException:
            self.socket.close()
            raise
        self.socket.setblocking(False)

    def _setup(self):
        try:   # FORCE: past net.core.rmem_max, allowed with CAP_NET_ADMIN
            self.socket.setsockopt(socket.SOL_SOCKET, nfconst.SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except PermissionError:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.socket.bind((0, 0))
        self.socket.settimeout(2.0)
        self.socket.send(config_message(self.group))
        while True:
            data = self.socket.recv(1 << 16)
            code = ack_errno(data)
            if code is not None:
                break
        # the kernel answers EPERM when another socket holds the group (EBUSY: this
        # one already does); we run as root, so EPERM is not a missing capability
        if code in (errno.EPERM, errno.EBUSY):
            raise NflogBusy(f"nflog group {self.group}: another process of this network "
                            "namespace listens on it (another `netfence watch`, "
                            "ulogd, ...), or no CAP_NET_ADMIN; denials are not recorded")
        if code:
            raise KernelError(f"bind nflog group {self.group}", code)

    def fileno(self):
        return self.socket.fileno()

    def close(self):
        self.socket.close()

    def read(self, limit=None):
        """The packets waiting (at least `limit` when that many are, then it stops:
        the rest stay in the socket): [parse_packet dict]. An overrun (ENOBUFS) is
        counted in lost_bursts and reading goes on."""
        packets = []
        while limit is None or len(packets) < limit:
            try:
                data = self.socket.recv(1 << 16)
            except BlockingIOError:
                return packets
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                self.lost_bursts += 1
                continue
            packets += parse_messages(data)
        return packets


def ack_errno(data):
    """The positive errno of the first NLMSG_ERROR in data (0: an ack), None if none."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, msg_type = _NLMSG.unpack_from(data, offset)[:2]
        if length < _NLMSG.size:
            return None
        if msg_type == nfconst.NLMSG_ERROR and offset + _NLMSG_ERROR.size <= len(data):
            return -_NLMSG_ERROR.unpack_from(data, offset)[5]
        offset += (length + 3) & ~3
    return None


def parse_messages(data):
    """Every NFULNL_MSG_PACKET message of one datagram, parsed; others skipped."""
    packets, offset = [], 0
    while offset + _NLMSG.size <= len(data):
        length, msg_type = _NLMSG.unpack_from(data, offset)[:2]
        if length < _NLMSG.size or offset + length > len(data):
            break
        if msg_type == PACKET_TYPE:
            packet = parse_packet(data[offset:offset + length])
            if packet is not None:
                packets.append(packet)
        offset += (length + 3) & ~3
    return packets


def parse_packet(message):
    """One NFULNL_MSG_PACKET (nlmsghdr included) -> {"family", "hook", "direction",
    "mark", "time" (None: the kernel gave none), "indev", "outdev", "uid", "gid"
    (None: no socket), "prefix", "payload"}; None when it is too short to be one."""
    if len(message) < nfconst.NLMSG_HDRLEN + nfconst.NFGENMSG_LEN:
        return None
    attrs = parse_attrs(message, nfconst.NLMSG_HDRLEN + nfconst.NFGENMSG_LEN)
    hook = attrs[NFULA_PACKET_HDR][2] if len(attrs.get(NFULA_PACKET_HDR, b"")) >= 3 else None
    stamp = attrs.get(NFULA_TIMESTAMP, b"")
    when = None
    if len(stamp) >= 16:
        seconds, micros = struct.unpack_from(">QQ", stamp)
        when = seconds + micros / 1e6
    return {
        "family": message[nfconst.NLMSG_HDRLEN],
        "hook": hook, "direction": HOOK_DIRECTION.get(hook),
        "mark": _be32(attrs, NFULA_MARK), "time": when,
        "indev": _be32(attrs, NFULA_IFINDEX_INDEV), "outdev": _be32(attrs, NFULA_IFINDEX_OUTDEV),
        "uid": _be32(attrs, NFULA_UID), "gid": _be32(attrs, NFULA_GID),
        "prefix": attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("utf-8", "replace"),
        "payload": attrs.get(NFULA_PAYLOAD, b""),
    }


def _be32(attrs, kind):
    value = attrs.get(kind, b"")
    return int.from_bytes(value[:4], "big") if len(value) >= 4 else None
