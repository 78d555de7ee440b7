# SPDX-License-Identifier: MIT
"""kvs-server --repartition: a data directory made with N shards is copied to M shards at
start-up (up and down), every key survives with its value, each new shard holds its share,
an interrupted switch is finished by the next start, and without the flag a different shard
count is still refused."""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
from kvs_server_util import Server, free_port, run_server  # noqa: E402

import redis  # noqa: E402


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def verify(port, data, shards):
    r = redis.Redis(port=port)
    keys = list(data)
    for i in range(0, len(keys), 500):
        chunk = keys[i:i + 500]
        for k, v in zip(chunk, r.mget(chunk)):
            check(v == data[k], f"{k!r}: expected {data[k]!r}, got {v!r}")
    check(r.dbsize() == len(data), f"dbsize {r.dbsize()} != {len(data)}")
    info = r.info("shards")
    per = [info[f"shard{i}"]["keys"] for i in range(shards)]
    check(len(info) == shards and all(n > 0 for n in per), f"shards: {info}")


def main():
    rnd = random.Random(11)
    data = {f"key:{i}".encode(): rnd.randbytes(rnd.choice([0, 10, 100, 3000])) for i in range(3000)}
    with Server(args=["--shards", "2"]) as s:
        s.start()
        r = redis.Redis(port=s.port)
        p = r.pipeline(transaction=False)
        for k, v in data.items():
            p.set(k, v)
        p.execute()
        r.delete(b"key:0", b"key:1")  # deleted keys must stay deleted
        del data[b"key:0"], data[b"key:1"]
        check(s.stop() == 0, "clean stop")

        rc, out = run_server(s.dir, free_port(), ["--shards", "3"])
        check(rc != 0 and "start with --shards 2, or add --repartition" in out, out)

        for n in (3, 1, 4):
            print(f"== re-partition to {n} shards", flush=True)
            s.args = ["--shards", str(n), "--repartition"]
            s.start()
            verify(s.port, data, n)
            check(s.stop() == 0, "clean stop")
            check(not os.path.exists(os.path.join(s.dir, "repartition-new")), "staging left")
            check(not os.path.exists(os.path.join(s.dir, "repartition-old")), "old shards left")

        # A crash after the copy was recorded but before the switch: the next start must
        # finish it. Simulate by re-partitioning, then undoing only the switch steps.
        print("== interrupted switch is finished at the next start", flush=True)
        d = s.dir
        os.mkdir(os.path.join(d, "repartition-new"))
        os.mkdir(os.path.join(d, "repartition-old"))
        for i in range(4):
            os.rename(os.path.join(d, f"shard-{i:03d}"), os.path.join(d, "repartition-new", f"shard-{i:03d}"))
        # Pretend the old 4 shards were 4 and the target is the same layout moved back in.
        meta = open(os.path.join(d, "kvs-server.meta")).read()
        with open(os.path.join(d, "kvs-server.meta"), "w") as f:
            f.write(meta + "swap_to 4\n")
        s.args = ["--shards", "4"]
        s.start()
        check("finishing an interrupted re-partition" in s.output(), s.output())
        verify(s.port, data, 4)
        check(s.stop() == 0, "clean stop")
    print("all passed")


if __name__ == "__main__":
    main()
