# SPDX-License-Identifier: MIT
"""A tiny blocking RESP2 client: enough for PING, COMPACT, BGREWRITEAOF and a sentinel
SET/GET. The load itself is kvs-bench's job; this only talks to the server between runs.

Every call has a timeout and every reply has a size bound, so a server that hangs or sends
garbage turns into a RespError, never into a stuck or exploding runner.
"""

import socket

MAX_REPLY = 1 << 20


class RespError(Exception):
    """The connection failed or the reply was not RESP."""


class ServerError(Exception):
    """The server answered with a RESP error (-ERR ..., -LOADING ...)."""


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    """One connection to 127.0.0.1:port. Use as a context manager."""

    def __init__(self, port, timeout=5.0):
        self.buf = b""
        try:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        except OSError as e:
            raise RespError(f"connect to 127.0.0.1:{port}: {e.strerror or e}") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.sock:
            self.sock.close()
            self.sock = None

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except OSError as e:
            raise RespError(f"read: {e.strerror or e}") from None
        if not chunk:
            raise RespError("connection closed by the server")
        self.buf += chunk
        if len(self.buf) > MAX_REPLY:
            raise RespError(f"reply larger than {MAX_REPLY} bytes")

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _reply(self, depth=0):
        line = self._line()
        if not line:
            raise RespError("empty reply line")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode(errors="replace")
        if kind == b"-":
            return ServerError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            if n > MAX_REPLY:
                raise RespError(f"bulk reply of {n} bytes is too large")
            while len(self.buf) < n + 2:
                self._fill()
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            if depth > 4 or n > 100000:
                raise RespError("array reply too deep or too long")
            return [self._reply(depth + 1) for _ in range(n)]
        raise RespError(f"not a RESP reply: {line[:40]!r}")

    def call(self, *args):
        """Send one command and return its reply. A RESP error reply is raised as
        ServerError; connection and protocol failures as RespError."""
        try:
            self.sock.sendall(_encode(args))
        except OSError as e:
            raise RespError(f"write: {e.strerror or e}") from None
        try:
            r = self._reply()
        except ValueError:
            raise RespError("malformed length in reply") from None
        if isinstance(r, ServerError):
            raise r
        return r


def call(port, *args, timeout=5.0):
    """One command on a fresh connection."""
    with Conn(port, timeout=timeout) as c:
        return c.call(*args)


def info(port, section, timeout=5.0):
    """INFO section parsed into {field: text}; both servers answer `field:value` lines."""
    text = call(port, "INFO", section, timeout=timeout)
    if not isinstance(text, bytes):
        raise RespError("INFO did not answer with a bulk string")
    out = {}
    for line in text.decode(errors="replace").splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out
