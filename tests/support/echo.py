"""Echo servers for traffic tests: `python3 echo.py tcp:127.0.0.1:8080 udp:[::1]:5353 ...`.

Prints "ready" once every socket is bound, then serves until killed. Each TCP connection
gets its first line back; each UDP datagram is sent back to its source.
"""

import selectors
import socket
import sys


def parse(spec):
    proto, rest = spec.split(":", 1)
    host, port = rest.rsplit(":", 1)
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return proto, family, host, int(port)


def main(specs):
    sel = selectors.DefaultSelector()
    for spec in specs:
        proto, family, host, port = parse(spec)
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        if proto == "tcp":
            sock.listen(64)
        sel.register(sock, selectors.EVENT_READ, proto)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if key.data == "udp":
                data, peer = sock.recvfrom(65535)
                sock.sendto(data, peer)
            elif key.data == "tcp":
                conn, _ = sock.accept()
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, "conn")
            else:
                try:
                    data = sock.recv(65535)
                except OSError:
                    data = b""
                if data:
                    sock.sendall(data)
                else:
                    sel.unregister(sock)
                    sock.close()


if __name__ == "__main__":
    main(sys.argv[1:])
