"""The hook's log: one key=value line per event to syslog (authpriv), or to the kernel
log when syslog cannot take it, and to stderr with the hook's `debug` argument
(docs/hook.md, "Logging").

Light on purpose (the hook imports it at every login): posix, errno and time, and
`_socket` only when a line is written (matcher has loaded it by then); no `syslog`
module, whose import the hook would pay for the logins that match nothing.
timed_field writes the value of `timed=` (rules with `time`), importing timed.py only
for the logins that have one; totals_fields the accounting fields of a close.
"""

import errno
import posix
import time

LOG_ERR, LOG_WARNING, LOG_INFO = 3, 4, 6
LOG_AUTHPRIV = 10 << 3
SYSLOG_SOCKET = "/dev/log"
KMSG = "/dev/kmsg"
KMSG_MAX = 960                  # bytes of text per kernel log record (1024 with header)


class Log:
    """The fields of one event (open or close), written as one line when it ends."""

    def __init__(self, debug, event, start):
        self.debug, self.start = debug, start
        self.fields = {"event": event}
        self.trailing = {}              # written after ms: which fast path was used

    def set_fastpath(self, name, reason):
        """The kernel-call implementation the event used ("c" or "python"), and why
        not the one asked for (a reason other than the argument fastpath=python)."""
        self.trailing["fastpath"] = name
        if reason and reason != "requested":
            self.trailing["fastpath_reason"] = reason

    def warn(self, message):
        self._emit(LOG_WARNING, f"event={self.fields['event']} warning={show(message, 200)}")

    def failed(self, on_error, err, internal=False):
        """Log a failure and return the exit code on_error gives it (deny 1, allow 0)."""
        code = 0 if on_error == "allow" else 1
        kind = "internal" if internal else type(err).__name__
        self.line(LOG_ERR, result="refused" if code else "allowed-after-error",
                  on_error=on_error, error=f"{kind}: {err}")
        return code

    def line(self, priority, **extra):
        fields = dict(self.fields, **extra)
        fields.setdefault("result", "ok")
        fields["ms"] = f"{(time.monotonic() - self.start) * 1000:.1f}"
        fields.update(self.trailing)
        self._emit(priority, " ".join(f"{k}={field(v)}" for k, v in fields.items()))

    def _emit(self, priority, text):
        syslog(priority, text)
        if self.debug:
            try:
                posix.write(2, f"netfence: {text}\n".encode("utf-8", "backslashreplace"))
            except OSError:
                pass


def syslog(priority, text):
    """Log one line; returns where it went: "syslog", "kmsg" or None.

    First what glibc's syslog(3) sends (RFC 3164 framing, ident "netfence", the pid)
    to SYSLOG_SOCKET. When that is missing or refuses (no syslog daemon), the kernel
    log: "<PRI>netfence[PID]: text" written to KMSG keeps facility and priority
    (dmesg -x, journald and rsyslog's imklog read it), so a refusal always leaves a
    record."""
    head = f"<{LOG_AUTHPRIV | priority}>"
    tag = f"netfence[{posix.getpid()}]: "
    stamp = time.strftime("%b %e %H:%M:%S ")
    if _send_syslog((head + stamp + tag + text).encode("utf-8", "backslashreplace")):
        return "syslog"
    line = (head + tag).encode() + text.encode("utf-8", "backslashreplace")[:KMSG_MAX]
    try:
        fd = posix.open(KMSG, posix.O_WRONLY | posix.O_CLOEXEC | posix.O_NOCTTY
                        | posix.O_NONBLOCK)
    except OSError:
        return None
    try:
        posix.write(fd, line + b"\n")
        return "kmsg"
    except OSError:
        return None
    finally:
        posix.close(fd)


def _send_syslog(data):
    """True when the syslog socket took data (a datagram socket, else a stream one)."""
    import _socket
    for kind in (_socket.SOCK_DGRAM, _socket.SOCK_STREAM):
        try:
            sock = _socket.socket(_socket.AF_UNIX, kind | _socket.SOCK_CLOEXEC)
        except OSError:
            return False
        try:
            sock.connect(SYSLOG_SOCKET)
            sock.send(data if kind == _socket.SOCK_DGRAM else data + b"\0")
            return True
        except OSError as err:
            if err.errno != errno.EPROTOTYPE:    # a stream socket: try again
                return False
        finally:
            sock.close()
    return False


def field(value):
    """A log field's value: "-" for empty, a repr when it holds a space, "=", a quote
    or anything not printable, so that no value can break or forge a line."""
    text = str(value)
    if text == "":
        return "-"
    if " " in text or "=" in text or '"' in text or not text.isprintable():
        return repr(text)
    return text


def totals_fields(result):
    """The accounting fields of a close's log line (sessions.close_session's result),
    the one formatter of the hook's close line and gc's and watch's close events:
    sent_bytes= recv_bytes= sent_packets= recv_packets= denied=P:n,... ("-": no
    denial counted), or totals=unknown with totals_error= when they could not be read;
    nothing for a session that did not count."""
    totals = result.get("totals")
    if totals is None:
        error = result.get("totals_error")
        return {"totals": "unknown", "totals_error": error} if error else {}
    denied = ",".join(f"{name}:{count}" for name, count in sorted(totals["denied"].items()))
    return {"sent_bytes": totals["sent_bytes"], "recv_bytes": totals["recv_bytes"],
            "sent_packets": totals["sent_packets"], "recv_packets": totals["recv_packets"],
            "denied": denied}


def show(value, limit=64):
    """repr of a truncated value: safe to put in a log line."""
    return repr(value[:limit] + ("..." if len(value) > limit else ""))


def timed_field(record, now):
    """The log's timed=: each rule with `time` as scope:profiles@until, ";" between
    them: local HH:MM, +Nd when on a later day, "-" when no window is open now (watch
    adds the elements when one opens), e.g. timed=session:lab@20:00."""
    from .timed import open_until
    parts = []
    for entry in record["timed"]:
        until = open_until(entry["windows"], now)
        when = "-"
        if until is not None:
            at = time.localtime(until)
            days = round((_midnight(at) - _midnight(time.localtime(now))) / 86400)
            when = f"{at.tm_hour:02d}:{at.tm_min:02d}" + (f"+{days}d" if days else "")
        parts.append(f"{entry['scope']}:{','.join(entry['profiles'])}@{when}")
    return ";".join(parts)


def _midnight(lt):
    return time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, 0, 0, 0, 0, 0, -1))
