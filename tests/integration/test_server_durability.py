# SPDX-License-Identifier: MIT
"""SIGTERM under write load with --fsync always: every write the server acknowledged before
the signal is present after a restart, the server exits 0, and a second round after kill -9
keeps every acknowledged write too."""
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
from kvs_server_util import Server  # noqa: E402

import redis  # noqa: E402


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


class Writer(threading.Thread):
    """Writes key w<id>:<n> = value sequentially, remembering every acknowledged write, until
    the connection fails (the server shuts down)."""

    def __init__(self, port, wid, pipeline):
        super().__init__(daemon=True)
        self.port, self.wid, self.pipeline = port, wid, pipeline
        self.acked = {}
        self.started = threading.Event()

    def run(self):
        r = redis.Redis(port=self.port, socket_timeout=120)
        n = 0
        try:
            while True:
                if self.pipeline:
                    p = r.pipeline(transaction=False)
                    batch = {f"w{self.wid}:{n + i}": f"{self.wid}.{n + i}" * 3 for i in range(20)}
                    for k, v in batch.items():
                        p.set(k, v)
                    res = p.execute()
                    for (k, v), ok in zip(batch.items(), res):
                        if ok is True:
                            self.acked[k] = v.encode()
                    n += 20
                else:
                    k, v = f"w{self.wid}:{n}", f"{self.wid}.{n}" * 3
                    if r.set(k, v):
                        self.acked[k] = v.encode()
                    n += 1
                if n >= 200:
                    self.started.set()
        except (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError):
            pass
        finally:
            self.started.set()


def round_trip(srv, sig):
    writers = [Writer(srv.port, w, pipeline=(w % 2 == 0)) for w in range(6)]
    for w in writers:
        w.start()
    for w in writers:
        check(w.started.wait(timeout=300), "writers did not get going")
    srv.send_signal(sig)
    rc = srv.wait()
    for w in writers:
        w.join(timeout=300)
    if sig == signal.SIGTERM:
        check(rc == 0, f"exit status {rc} after SIGTERM:\n{srv.output()}")
    acked = {}
    for w in writers:
        acked.update(w.acked)
    check(len(acked) >= 6 * 200, f"only {len(acked)} writes acknowledged")
    srv.start()
    r = redis.Redis(port=srv.port, socket_timeout=120)
    keys = list(acked)
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        got = r.mget(chunk)
        for k, g in zip(chunk, got):
            check(g == acked[k], f"{k}: acknowledged {acked[k]!r}, found {g!r} after restart")
    print(f"   {len(acked)} acknowledged writes all present after {signal.Signals(sig).name}")


def main():
    with Server(args=["--shards", "3", "--fsync", "always"]) as srv:
        srv.start()
        round_trip(srv, signal.SIGTERM)
        round_trip(srv, signal.SIGKILL)
        rc = srv.stop()
        check(rc == 0, f"exit status {rc}:\n{srv.output()}")
    print("all passed")


if __name__ == "__main__":
    main()
