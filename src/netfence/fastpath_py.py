"""The login fast path in pure Python: the byte-identical twin of c_ext/fastpath.c.

Every function below does what the C function of the same name does, with the same
results (tests/unit/test_fastpath.py checks it), so the hook works the same when the
extension is missing or stale. The messages it sends are built from templates
(nfencode.build_templates, at compile time); here they are only patched and sent.

Imports nothing heavy at module level: `_socket` (not `socket`, which costs ~10 ms
through `enum`) is imported only when the Python path actually sends.
"""

import errno

from .nfconst import HOST_ORDER, NETLINK_NETFILTER, NLMSG_ERROR, NLMSG_HDRLEN, NLMSG_SEQ_OFFSET

PENDING = 1                      # errors[i] before message i was answered (C: NF_PENDING)
NF_DETACH_CLOSE = 1              # nf_batch flag: see _release (C: NF_DETACH_CLOSE)
ERROR_LEN = NLMSG_HDRLEN + 4     # an NLMSG_ERROR's header and its error code
RECV_SIZE = 16384                # C: rbuf


# ---- the twins of c_ext/fastpath.c ------------------------------------------------

def nf_fill(template, seq, key, key_offset):
    """Copy of `template` with its sequence number and key patched (C: nf_fill)."""
    if (len(template) < NLMSG_HDRLEN or key_offset < NLMSG_HDRLEN
            or key_offset + len(key) > len(template)):
        raise ValueError("key outside the template")
    return (template[:NLMSG_SEQ_OFFSET] + seq.to_bytes(4, HOST_ORDER)
            + template[NLMSG_SEQ_OFFSET + 4:key_offset] + key
            + template[key_offset + len(key):])


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
                rc = -errno.ETIMEDOUT
                break
            sock.settimeout(left)
            try:
                data, sender = sock.recvfrom(RECV_SIZE)
            except TimeoutError:
                rc = -errno.ETIMEDOUT
                break
            except InterruptedError:
                rc = -errno.EINTR
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
    while offset + NLMSG_HDRLEN <= len(data):
        length = int.from_bytes(data[offset:offset + 4], HOST_ORDER)
        if length < NLMSG_HDRLEN or offset + length > len(data):
            break
        msg_type = int.from_bytes(data[offset + 4:offset + 6], HOST_ORDER)
        if msg_type == NLMSG_ERROR:
            if length < ERROR_LEN:
                return -errno.EBADMSG, pending
            seq_at, err_at = offset + NLMSG_SEQ_OFFSET, offset + NLMSG_HDRLEN
            seq = int.from_bytes(data[seq_at:seq_at + 4], HOST_ORDER)
            err = int.from_bytes(data[err_at:err_at + 4], HOST_ORDER, signed=True)
            index = (seq - first_seq - 1) & 0xFFFFFFFF
            if index < nmsgs:
                if errors[index] == PENDING:
                    errors[index] = err
                    pending -= 1
            elif err != 0:
                return (err if err < 0 else -errno.EPROTO), pending
        offset += (length + 3) & ~3
    return 0, pending


def _errno(err):
    return -(err.errno or errno.EINVAL)


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
