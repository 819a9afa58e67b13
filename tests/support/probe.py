"""One connection attempt: `python3 probe.py tcp|udp HOST PORT [timeout]`.

Prints one word and exits 0: "ok" (echo came back), "refused" (RST or ICMP
unreachable), "dropped" (no answer, or EPERM from a local drop), or "error:<errno name>".
"""

import errno
import socket
import sys


def probe(proto, host, port, timeout):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
            sock.send(b"ping\n")
            return "ok" if sock.recv(16) == b"ping\n" else "garbled"
        except socket.timeout:
            return "dropped"
        except ConnectionRefusedError:
            return "refused"
        except PermissionError:          # EPERM: a local drop reported to the sender
            return "dropped"
        except OSError as err:
            return f"error:{errno.errorcode.get(err.errno, err.errno)}"


if __name__ == "__main__":
    proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    print(probe(proto, host, port, timeout))
