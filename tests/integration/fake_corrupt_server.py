#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""A deliberately broken Redis-protocol server for kvs-bench's --verify test.

It stores SETs faithfully but flips one byte in the middle of every GET reply's value, so a
load generator that really checks what it reads must report verify failures; one that does
not would pass silently. Single-threaded (selectors), stdlib only, 127.0.0.1 only. Supports
just enough RESP2 for kvs-bench: SET, GET and PING.

Other modes misbehave at the protocol level instead, to test how clients fail:
  garbage  answer every command but PING with a line that is not RESP;
  hangup   close the connection instead of answering the first GET.

    fake_corrupt_server.py PORT [corrupt|garbage|hangup]   # prints "ready" once listening
"""
import selectors
import socket
import sys


def parse_command(buf):
    """Parse one RESP array of bulk strings from buf. Returns (args, consumed) or (None, 0)."""
    if not buf:
        return None, 0
    if buf[0:1] != b"*":
        raise ValueError("only RESP arrays are supported")
    end = buf.find(b"\r\n")
    if end < 0:
        return None, 0
    count = int(buf[1:end])
    pos = end + 2
    args = []
    for _ in range(count):
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return None, 0
        if buf[pos:pos + 1] != b"$":
            raise ValueError("expected a bulk string")
        size = int(buf[pos + 1:end])
        start = end + 2
        if len(buf) < start + size + 2:
            return None, 0
        args.append(bytes(buf[start:start + size]))
        pos = start + size + 2
    return args, pos


def corrupt(value):
    """Flip one bit of the middle byte: the length stays, the content is wrong."""
    if not value:
        return value
    mid = len(value) // 2
    return value[:mid] + bytes([value[mid] ^ 0x01]) + value[mid + 1:]


def reply_for(store, args):
    name = args[0].upper()
    if name == b"SET" and len(args) >= 3:
        store[args[1]] = args[2]
        return b"+OK\r\n"
    if name == b"GET" and len(args) == 2:
        value = store.get(args[1])
        if value is None:
            return b"$-1\r\n"
        value = corrupt(value)
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if name == b"PING":
        return b"+PONG\r\n"
    return b"-ERR unknown command\r\n"


def main():
    port = int(sys.argv[1])
    mode = sys.argv[2] if len(sys.argv) > 2 else "corrupt"
    store = {}
    sel = selectors.DefaultSelector()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", port))
    lsock.listen(128)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, None)
    print("ready", flush=True)
    pending = {}
    while True:
        for key, _ in sel.select():
            if key.data is None:
                conn, _ = lsock.accept()
                conn.setblocking(True)
                sel.register(conn, selectors.EVENT_READ, True)
                pending[conn] = bytearray()
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(conn)
                pending.pop(conn, None)
                conn.close()
                continue
            buf = pending[conn]
            buf += data
            out = bytearray()
            hangup = False
            while True:
                args, used = parse_command(buf)
                if args is None:
                    break
                del buf[:used]
                if args[0].upper() == b"PING":
                    out += b"+PONG\r\n"  # the test's readiness probe stays answered
                elif mode == "garbage":
                    out += b"?this is not RESP\r\n"
                elif mode == "hangup" and args[0].upper() == b"GET":
                    hangup = True
                    break
                else:
                    out += reply_for(store, args)
            if out:
                conn.sendall(out)
            if hangup:
                sel.unregister(conn)
                pending.pop(conn, None)
                conn.close()


if __name__ == "__main__":
    main()
