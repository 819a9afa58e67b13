"""The event sources of `netfence watch`: nf_tables events, inotify, pidfds.

Each source is a file descriptor the watch loop polls; nothing here polls by time.

- `NftEvents`: a netlink socket in the multicast group NFNLGRP_NFTABLES
  (every committed nf_tables change of this network namespace, one message per
  object). `read()` says which of them touch table inet netfence, and how: the table or
  its chains, rules and sets (a deletion, a flush, a foreign rule) or only set
  elements (logins and logouts do that all the time). A full socket buffer (ENOBUFS)
  means events were lost: the caller checks everything.
- `Inotify`: inotify through ctypes (the standard library has no binding).
- `open_pidfd`: a pidfd of a PAM application, verified against its recorded start
  time after opening, so a reused pid is never watched in the session's place
  (when /proc hides the process, see open_pidfd).
- `WallTimer`: a CLOCK_REALTIME timerfd at the next window change, which also wakes
  when the wall clock is set.
"""

import ctypes
import ctypes.util
import errno
import os
import select
import socket
import struct

from . import nfconst
from .errors import KernelError
from .liveness import proc_starttime

NFNLGRP_NFTABLES = 7
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP = 270, 1
RECEIVE_BUFFER = 1 << 20     # a burst of logins fits; beyond it ENOBUFS: check everything
TABLE_NAME_ATTR = 1          # NFTA_{TABLE_NAME,CHAIN_TABLE,RULE_TABLE,SET_TABLE,...}
NFPROTO_INET = nfconst.NFPROTO_INET
ELEMENT_MESSAGES = frozenset({nfconst.NFT_MSG_NEWSETELEM, nfconst.NFT_MSG_DELSETELEM,
                              nfconst.NFT_MSG_DESTROYSETELEM})
_NLMSG = struct.Struct("=IHHII")


class NftEvents:
    """The nf_tables event subscription of the current network namespace.

    A plain AF_NETLINK socket joined to the group with NETLINK_ADD_MEMBERSHIP, read
    and parsed here, rather than pyroute2's NFTSocket: NFTSocket binds to the group
    fine, but its get() reads ahead into a queue of its own, so a poll on its file
    descriptor no longer says when messages are waiting; measured here, a foreign
    rule was seen only when the next event came (about 1 s later). The header and
    the table name (the first attribute of every nf_tables object message) are all
    the watcher needs.
    """

    def __init__(self, table="netfence"):
        self.table = table.encode()
        self.socket = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC
                                    | socket.SOCK_NONBLOCK, nfconst.NETLINK_NETFILTER)
        try:
            # FORCE: past net.core.rmem_max (often 208 KiB), allowed with CAP_NET_ADMIN
            self.socket.setsockopt(socket.SOL_SOCKET, nfconst.SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except PermissionError:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        self.socket.bind((0, 0))
        self.socket.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)

    def fileno(self):
        return self.socket.fileno()

    def close(self):
        self.socket.close()

    def read(self):
        """("overflow"|"table"|"elements"|None): what the pending messages say about
        our table. "overflow" and "table" win over "elements"; None: nothing of ours."""
        found = None
        while True:
            try:
                data = self.socket.recv(1 << 16)
            except BlockingIOError:
                return found
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    return "overflow"
                raise KernelError("read nf_tables events", err.errno or errno.EIO) from None
            kind = event_kind(data, self.table)
            if kind == "table" or (kind == "elements" and found is None):
                found = kind


def event_kind(data, table):
    """What the netlink messages in data say about table `table` (bytes) of family
    inet: "table" (the table, a chain, a rule or a set changed), "elements" (only
    set elements), or None (nothing of it)."""
    found = None
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, msg_type, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            break
        kind = _message_kind(msg_type, data[offset + _NLMSG.size:offset + length], table)
        if kind == "table":
            return kind
        found = found or kind
        offset += (length + 3) & ~3
    return found


def _message_kind(msg_type, payload, table):
    if msg_type >> 8 != nfconst.NFNL_SUBSYS_NFTABLES:
        return None
    msg = msg_type & 0xFF
    if msg == nfconst.NFT_MSG_NEWGEN or len(payload) < 4 or payload[0] != NFPROTO_INET:
        return None
    name = _first_string_attr(payload[4:], TABLE_NAME_ATTR)
    if name is not None and name != table:
        return None
    # a message naming no table is taken as ours: checking costs less than missing it
    return "elements" if msg in ELEMENT_MESSAGES else "table"


def _first_string_attr(attrs, wanted):
    offset = 0
    while offset + 4 <= len(attrs):
        length, attr_type = struct.unpack_from("HH", attrs, offset)
        if length < 4:
            return None
        if attr_type & 0x3FFF == wanted:
            return attrs[offset + 4:offset + length].rstrip(b"\0")
        offset += (length + 3) & ~3
    return None


# ---- inotify --------------------------------------------------------------------------

IN_MODIFY = 0x002
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_IGNORED = 0x8000
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")


class Inotify:
    def __init__(self):
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                                 use_errno=True)
        self.fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise KernelError("inotify_init1", ctypes.get_errno())

    def fileno(self):
        return self.fd

    def add(self, path, mask):
        """The watch descriptor, or None when path does not exist (any more)."""
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            code = ctypes.get_errno()
            if code in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise KernelError(f"inotify_add_watch {path}", code)
        return wd

    def remove(self, wd):
        self._libc.inotify_rm_watch(self.fd, wd)     # EINVAL: already gone, fine

    def read(self):
        """[(wd, mask, name)] of the pending events."""
        events = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size
                name = data[offset:offset + length].rstrip(b"\0").decode(errors="replace")
                offset += length
                events.append((wd, mask, name))

    def close(self):
        os.close(self.fd)


# ---- pidfds ---------------------------------------------------------------------------

def open_pidfd(pid, starttime):
    """(pidfd, hidden) of pid while it is the process started at starttime; (None,
    False) when it is gone or the pid names another process. The pidfd is readable
    once that process exits. OSError (EMFILE, ENFILE) when no descriptor is left.

    hidden: the pidfd opened but /proc/PID/stat cannot be read, as with /proc mounted
    hidepid=2 and no CAP_SYS_PTRACE (netfence-watch.service): a su or sudo application
    runs with the user's real uid. The process exists (pidfd_open found it) and has
    not exited (its pidfd is not readable), so it counts as alive: closing the
    session on an unreadable /proc would be the unsafe mistake. Its start time
    cannot be checked then: a reused pid keeps the session until that process exits.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None, False
    # checked after opening: the pidfd pins this process, so a match now cannot turn
    # into a reused pid later
    start = proc_starttime(pid)
    if start == starttime:
        return fd, False
    if start is None and not _exited(fd):
        return fd, True
    os.close(fd)
    return None, False


def _exited(pidfd):
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


# ---- the wall-clock timer -------------------------------------------------------------

CLOCK_REALTIME = 0
TFD_TIMER_ABSTIME = 1
TFD_TIMER_CANCEL_ON_SET = 2
TFD_NONBLOCK, TFD_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class WallTimer:
    """A timerfd on CLOCK_REALTIME armed at an absolute wall-clock instant (an epoch).

    Absolute, so it fires as soon as the wall clock is at or past the instant: right
    after a resume from suspend or a forward step past it, where a monotonic delay
    computed beforehand would fire late. TFD_TIMER_CANCEL_ON_SET: any setting of the
    wall clock (a step either way) makes it readable and its read fail with
    ECANCELED, once per setting; the flag stays in force after the timer expired.
    """

    def __init__(self):
        self._libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                                 use_errno=True)
        self.fd = self._libc.timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK | TFD_CLOEXEC)
        if self.fd < 0:
            raise KernelError("timerfd_create", ctypes.get_errno())
        self.at = None                    # the armed instant (an epoch), None: disarmed

    def fileno(self):
        return self.fd

    def arm(self, epoch):
        seconds = int(epoch // 1)
        nanoseconds = min(999_999_999, int((epoch - seconds) * 1e9))
        if seconds <= 0 and nanoseconds <= 0:
            seconds, nanoseconds = 0, 1   # an all-zero it_value would disarm it
        self._settime(TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET, seconds, nanoseconds)
        self.at = epoch

    def disarm(self):
        self._settime(0, 0, 0)
        self.at = None

    def _settime(self, flags, seconds, nanoseconds):
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(seconds, nanoseconds))
        if self._libc.timerfd_settime(self.fd, flags, ctypes.byref(spec), None) < 0:
            raise KernelError("timerfd_settime", ctypes.get_errno())

    def read(self):
        """"expired" (the instant passed; no longer armed), "clock-set" (the wall
        clock was set since it was armed) or None (nothing pending)."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return None
        except OSError as err:
            if err.errno == errno.ECANCELED:
                return "clock-set"
            raise KernelError("read timerfd", err.errno or errno.EIO) from None
        self.at = None                    # fired: a later instant may be armed freely
        return "expired"

    def close(self):
        os.close(self.fd)
