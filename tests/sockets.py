"""Raw-socket helpers for the connection-limit tests of both daemons (idle floods, slow
headers, file descriptors of the server process)."""

from __future__ import annotations

import os
import socket
import time


def address_of(url: str) -> tuple[str, int]:
    """``http://HOST:PORT`` -> ``(HOST, PORT)``."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host.strip("[]"), int(port)


def fds(pid: int) -> int:
    """Open file descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def dribble_header_until_closed(address: tuple[str, int], deadline_s: float) -> bool:
    """A slowloris: send a never-ending request header a byte at a time (every 0.2 s, so the
    connection is never idle). True when the server closes it within ``deadline_s``."""
    sock = socket.create_connection(address, timeout=10)
    end = time.monotonic() + deadline_s
    header = b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 100_000
    try:
        for byte in header:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() <= end
            if closed_by_server(sock, 0.2):
                return time.monotonic() <= end
            if time.monotonic() > end:
                return False
        return False
    finally:
        sock.close()
