# SPDX-License-Identifier: MIT
"""Hostile clients against kvs-server: garbage, a 2^40 bulk length, negative lengths, an
announced array of 10^9 elements, an endless inline line, and a client that sends GETs of a
large value without ever reading. Each gets an error (and is closed) or backpressure; the
server's memory stays bounded; another client is served throughout."""
import os
import random
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from kvs_server_util import Server, rss_kib  # noqa: E402

import redis  # noqa: E402


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def read_until_close(s):
    data = b""
    s.settimeout(60)
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def send_and_expect_close(port, payload, expect_prefix):
    s = socket.create_connection(("127.0.0.1", port))
    try:
        s.sendall(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = read_until_close(s)
    s.close()
    check(data.startswith(expect_prefix), f"{payload[:40]!r}: got {data[:200]!r}")


def bystander_ok(port):
    r = redis.Redis(port=port, socket_timeout=60)
    check(r.set("bystander", "ok") and r.get("bystander") == b"ok", "bystander not served")


def test_protocol_errors(port):
    cases = [
        (b"*abc\r\n", b"-ERR Protocol error"),
        (b"*1\r\n$1099511627776\r\n", b"-ERR Protocol error"),
        (b"*1\r\n$-5\r\nxx\r\n", b"-ERR Protocol error"),
        (b"*-5\r\n*1\r\n$4\r\nPING\r\n*1\r\n$x\r\n", b"-ERR Protocol error"),
        (b"*1000000000\r\n", b"-ERR Protocol error"),
        (b"*2\r\n$3\r\nGET\r\n+x\r\n", b"-ERR Protocol error"),
        (b"\x00\xff\xfe*\r\n$\r\n" * 3 + b"*1\r\n$z\r\n", b"-ERR"),
    ]
    for payload, prefix in cases:
        send_and_expect_close(port, payload, prefix)
        bystander_ok(port)


def test_endless_inline_line(port):
    s = socket.create_connection(("127.0.0.1", port))
    chunk = b"a" * 65536
    sent = 0
    try:
        # Far beyond the 64 KiB inline limit: the server must answer and hang up, not buffer.
        while sent < 64 * 1024 * 1024:
            s.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    data = read_until_close(s)
    s.close()
    check(b"Protocol error" in data, f"endless inline: got {data[:200]!r}")
    check(sent < 64 * 1024 * 1024, "server kept reading an endless inline line")
    bystander_ok(port)


def test_pipelined_valid_then_error(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"PING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$-7\r\n")
    data = read_until_close(s)
    check(data.startswith(b"+PONG\r\n+PONG\r\n-ERR Protocol error"), f"got {data!r}")


def test_abrupt_disconnects(port):
    """Clients that pipeline requests over every shard and vanish without reading: the
    server must drop their replies, free everything, and keep serving."""
    rnd = random.Random(3)
    for i in range(200):
        s = socket.create_connection(("127.0.0.1", port))
        batch = b""
        for _ in range(300):
            k = b"k%d" % rnd.randrange(1000)
            batch += rnd.choice([
                b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k),
                b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\nv\r\n" % (len(k), k),
                b"*2\r\n$4\r\nINCR\r\n$1\r\nc\r\n",
            ])
        s.sendall(batch)
        if i % 2:
            # Close with a reset instead of a FIN.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    bystander_ok(port)
    r = redis.Redis(port=port)
    # The server notices every close; wait (boundedly) until only we are left.
    for _ in range(600):
        if r.info("clients")["connected_clients"] == 1:
            break
        time.sleep(0.05)
    check(r.info("clients")["connected_clients"] == 1, "connections not released")


def test_non_reading_client(srv):
    port = srv.port
    r = redis.Redis(port=port, socket_timeout=60)
    value = os.urandom(1024 * 1024)
    r.set("big", value)
    base = rss_kib(srv.proc.pid)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    batch = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n" * 1000
    sent = 0
    blocked = False
    # Up to 4 million GETs of 1 MiB: 4 TiB of replies. The server must stop reading this
    # client long before; then the socket buffers fill and our send() would block.
    for i in range(4000):
        try:
            n = s.send(batch)
            sent += n
            if n < len(batch):
                blocked = True
                break
        except BlockingIOError:
            blocked = True
            break
        if i % 500 == 0:
            bystander_ok(port)
    check(blocked, "the server never applied backpressure")
    bystander_ok(port)
    grown = rss_kib(srv.proc.pid) - base
    check(grown < 400 * 1024, f"server RSS grew by {grown} KiB for a client that does not read")
    info = r.info("clients")
    check(info["paused_for_backpressure_total"] >= 1, f"no pause recorded: {info}")
    s.close()
    bystander_ok(port)


def test_out_of_descriptors():
    """More clients than the server has descriptors for: the extra ones wait in the backlog
    (the server neither crashes nor spins on accept errors) and are served once others
    leave."""
    with Server(args=["--shards", "2"]) as srv:
        srv.start(nofile=80)
        socks = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(100)]
        for s in socks:
            s.sendall(b"PING\r\n")
        answered = set()
        for i, s in enumerate(socks):
            s.settimeout(0.5)
            try:
                if s.recv(16) == b"+PONG\r\n":
                    answered.add(i)
            except OSError:
                pass
        check(0 < len(answered) < 100, f"{len(answered)} of 100 answered with 80 descriptors")
        for i in list(answered):
            socks[i].close()
        for i, s in enumerate(socks):
            if i in answered:
                continue
            s.settimeout(60)
            check(s.recv(16) == b"+PONG\r\n", f"client {i} not served after others left")
            s.close()
        warnings = srv.output().count("Too many open files")
        check(warnings < 50, f"accept errors logged {warnings} times: spinning?")
        check(srv.stop() == 0, "clean stop")


def main():
    args = ["--shards", "2", "--max-output", "8m", "--max-pipeline", "64"]
    with Server(args=args) as srv:
        srv.start()
        for t in (test_protocol_errors, test_endless_inline_line, test_pipelined_valid_then_error,
                  test_abrupt_disconnects):
            print(f"== {t.__name__}", flush=True)
            t(srv.port)
        print("== test_non_reading_client", flush=True)
        test_non_reading_client(srv)
        rc = srv.stop()
        check(rc == 0, f"kvs-server exit status {rc}:\n{srv.output()}")
    print("== test_out_of_descriptors", flush=True)
    test_out_of_descriptors()
    print("all passed")


if __name__ == "__main__":
    main()
