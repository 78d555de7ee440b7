# SPDX-License-Identifier: MIT
"""kvs-server start-up and data-directory rules: a second server on the same port or the same
directory is refused, the recorded engine and shard count are enforced with instructions, a
restart right after kill -9 rebinds the port at once, --max-clients refuses extra clients,
and SIGTERM exits 0 with the data kept."""
import os
import signal
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from kvs_server_util import Server, free_port, run_server  # noqa: E402

import redis  # noqa: E402


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def test_second_server_same_port_refused():
    with Server(args=["--shards", "2"]) as a:
        a.start()
        with tempfile.TemporaryDirectory() as d2:
            rc, out = run_server(d2, a.port, ["--shards", "2"])
            check(rc != 0, f"second server on port {a.port} must fail, got {rc}: {out}")
            check("already in use" in out, f"expected an address-in-use message: {out}")
        # The first server keeps serving.
        r = redis.Redis(port=a.port)
        check(r.ping(), "first server stopped answering")
        check(a.stop() == 0, "first server did not exit 0")


def test_second_server_same_dir_refused():
    with Server(args=["--shards", "2"]) as a:
        a.start()
        rc, out = run_server(a.dir, free_port(), ["--shards", "2"])
        check(rc != 0, f"second server on the same directory must fail: {out}")
        check("in use by another kvs-server" in out, out)
        check(a.stop() == 0, "first server did not exit 0")


def test_engine_and_shards_recorded():
    with Server(args=["--shards", "2"]) as a:
        a.start()
        redis.Redis(port=a.port).set("k", "v")
        check(a.stop() == 0, "clean stop")
        meta = open(os.path.join(a.dir, "kvs-server.meta")).read()
        check("engine kvs" in meta and "shards 2" in meta, meta)

        rc, out = run_server(a.dir, free_port(), ["--shards", "3"])
        check(rc != 0, "a different shard count must be refused")
        check("has 2 shards; start with --shards 2" in out, out)

        rc, out = run_server(a.dir, free_port(), ["--engine", "lmdb"])
        check(rc != 0 and "unknown engine" in out, out)

        # A directory recorded with another engine is refused with a clear message.
        with open(os.path.join(a.dir, "kvs-server.meta"), "w") as f:
            f.write(meta.replace("engine kvs", "engine lmdb"))
        rc, out = run_server(a.dir, free_port(), ["--shards", "2"])
        check(rc != 0 and "created with engine 'lmdb'" in out, out)
        with open(os.path.join(a.dir, "kvs-server.meta"), "w") as f:
            f.write(meta)

        # With the right options the data is all there.
        a.args = ["--shards", "2"]
        a.start()
        check(redis.Redis(port=a.port).get("k") == b"v", "value lost")
        check(a.stop() == 0, "clean stop")


def test_restart_after_kill_rebinds_at_once():
    with Server(args=["--shards", "2", "--fsync", "always"]) as a:
        a.start()
        conns = [redis.Redis(port=a.port) for _ in range(4)]
        for i, c in enumerate(conns):
            c.set(f"key{i}", f"val{i}")
        a.stop(signal.SIGKILL)
        a.start()  # same port, at once
        c = redis.Redis(port=a.port)
        for i in range(4):
            check(c.get(f"key{i}") == f"val{i}".encode(), f"key{i} lost after kill -9")
        check(a.stop() == 0, "clean stop")


def test_max_clients_refused_with_error():
    with Server(args=["--shards", "2", "--max-clients", "3"]) as a:
        a.start()
        held = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", a.port))
            s.sendall(b"PING\r\n")
            check(s.recv(64) == b"+PONG\r\n", "PING")
            held.append(s)
        s = socket.create_connection(("127.0.0.1", a.port))
        s.settimeout(30)
        data = b""
        while True:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
        check(data == b"-ERR max number of clients reached\r\n", f"got {data!r}")
        s.close()
        held.pop().close()
        # A slot is free again once the server has seen the close: retry boundedly.
        ok = False
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", a.port))
            s.sendall(b"PING\r\n")
            if s.recv(64) == b"+PONG\r\n":
                ok = True
                s.close()
                break
            s.close()
        check(ok, "a client slot was not released")
        for s in held:
            s.close()
        check(a.stop() == 0, "clean stop")


def stuck_reader(port, r):
    """A client with a lot of output pending that never reads it."""
    r.set("big", os.urandom(4 << 20))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET big\r\n" * 20)
    # Once the server answered a PING on another connection after our GETs were sent, they
    # are (at least partly) queued on the server side.
    check(r.ping(), "ping")
    return s


def test_shutdown_closes_clients_that_never_read():
    with Server(args=["--shards", "2", "--shutdown-timeout", "300"]) as a:
        a.start()
        s = stuck_reader(a.port, redis.Redis(port=a.port))
        check(a.stop() == 0, f"exit status after SIGTERM with a stuck client:\n{a.output()}")
        check("did not read their replies in time" in a.output(), a.output())
        s.close()


def test_second_signal_exits_at_once():
    with Server(args=["--shards", "2", "--shutdown-timeout", "600000"]) as a:
        a.start()
        s = stuck_reader(a.port, redis.Redis(port=a.port))
        a.send_signal(signal.SIGTERM)
        # Bounded wait for the first signal to be logged, then the second one.
        for _ in range(600):
            if "received SIGTERM" in a.output():
                break
            time.sleep(0.05)
        a.send_signal(signal.SIGTERM)
        check(a.wait() == 1, "a second SIGTERM must end the server at once with status 1")
        check("second SIGTERM" in a.output(), a.output())
        s.close()


def test_compact_rate_throttles_and_shutdown_does_not_wait():
    """--compact-rate 1 (byte/s): the first 1 MiB compaction step runs, the next one waits, and
    SIGTERM stops the compaction at once instead of waiting for it; nothing is lost."""
    with tempfile.TemporaryDirectory() as d:
        for flag, val in (("--compact-rate", "12q"), ("--max-key", "17m"), ("--max-key", "0"),
                          ("--max-value", "2g"), ("--max-bulk", "8")):
            code, out = run_server(d, free_port(), [flag, val])
            check(code != 0 and f"bad value '{val}' for {flag}" in out, out)
        val = b"c" * (64 * 1024)
        with Server(dir=d, args=["--shards", "1", "--compact-rate", "1"]) as a:
            a.start()
            r = redis.Redis(port=a.port)
            p = r.pipeline(transaction=False)
            for i in range(48):  # 3 MiB, every key written twice
                p.set(f"c{i % 24}", val)
            p.execute()
            check(r.execute_command("COMPACT") is not None, "COMPACT")
            for _ in range(6000):  # bounded poll: the first step's read completes quickly
                if r.info("persistence")["compact_throttles"] >= 1:
                    break
                time.sleep(0.01)
            info = r.info("persistence")
            check(info["compact_throttles"] >= 1 and info["compacting"] == 1, str(info))
            check(a.stop() == 0, f"exit status after SIGTERM during a throttled compaction:\n"
                  f"{a.output()}")
        with Server(dir=d, args=["--shards", "1"]) as b:
            b.start()
            r = redis.Redis(port=b.port)
            check(r.dbsize() == 24 and r.get("c23") == val, "keys after the stopped compaction")
            check(b.stop() == 0, b.output())


def main():
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_") and callable(v)]
    for t in tests:
        print(f"== {t.__name__}", flush=True)
        t()
    print("all passed")


if __name__ == "__main__":
    main()
