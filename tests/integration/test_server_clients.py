# SPDX-License-Identifier: MIT
"""kvs-server with the Python redis client (Debian python3-redis): pipelines, binary values,
several processes at once, and request order on one pipelined connection across shards."""
import multiprocessing
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
from kvs_server_util import Server  # noqa: E402

import redis  # noqa: E402


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def test_commands(port):
    r = redis.Redis(port=port)
    check(r.ping(), "PING")
    check(r.echo(b"a\r\nb") == b"a\r\nb", "ECHO")
    check(r.set("s", "1") and r.get("s") == b"1", "SET/GET")
    check(r.set("s", "2", nx=True) is None, "SET NX on existing")
    check(r.set("fresh", "x", xx=True) is None, "SET XX on missing")
    check(r.set("s", "3", get=True) == b"1", "SET GET returns the old value")
    check(r.get("s") == b"3", "after SET GET")
    check(r.incr("s") == 4 and r.decr("s") == 3, "INCR/DECR")
    check(r.incrby("s", 100) == 103 and r.decrby("s", 3) == 100, "INCRBY/DECRBY")
    check(r.append("s", "0") == 4 and r.get("s") == b"1000", "APPEND")
    check(r.strlen("s") == 4 and r.strlen("nope") == 0, "STRLEN")
    try:
        r.incr("fresh2") and r.set("t", "abc") and r.incr("t")
        raise AssertionError("INCR on a non-integer must fail")
    except redis.ResponseError as e:
        check(str(e) == "value is not an integer or out of range", str(e))
    check(r.mset({f"m{i}": f"v{i}" for i in range(50)}), "MSET")
    check(r.mget([f"m{i}" for i in range(50)] + ["none"]) ==
          [f"v{i}".encode() for i in range(50)] + [None], "MGET")
    check(r.exists(*[f"m{i}" for i in range(50)], "none") == 50, "EXISTS")
    check(r.delete(*[f"m{i}" for i in range(25)], "none") == 25, "DEL")
    keys = set(r.keys("m*"))
    check(keys == {f"m{i}".encode() for i in range(25, 50)}, f"KEYS {keys}")
    scanned = set(r.scan_iter(match="m*", count=7))
    check(scanned == keys, "SCAN across shards")
    check(r.dbsize() == len(r.keys("*")), "DBSIZE")
    info = r.info()
    check(info["redis_mode"] == "standalone" and "db0" in info, "INFO")
    check(r.client_setname("me") and r.client_getname() == "me", "CLIENT SETNAME/GETNAME")
    check(isinstance(r.client_id(), int), "CLIENT ID")
    check(r.config_get("appendonly") in ({"appendonly": "yes"}, {"appendonly": "no"}), "CONFIG")
    try:
        r.execute_command("SELECT", "1")
        raise AssertionError("SELECT 1 must fail")
    except redis.ResponseError:
        pass
    try:
        r.execute_command("GET")
        raise AssertionError("arity")
    except redis.ResponseError as e:
        check(str(e) == "wrong number of arguments for 'get' command", str(e))
    try:
        r.execute_command("FOO", "a", "b")
        raise AssertionError("unknown")
    except redis.ResponseError as e:
        check(str(e) == "unknown command 'FOO', with args beginning with: 'a' 'b' ", str(e))
    # An empty pattern is a pattern: it matches only the empty key.
    check(r.set("", "e") and r.set("a", "x"), "SET of the empty key")
    check(r.keys("") == [b""], f"KEYS '': {r.keys('')}")
    check(set(r.scan_iter(match="")) == {b""}, "SCAN MATCH ''")
    check(set(r.keys("*")) >= {b"", b"a"}, "KEYS *")
    # HELLO SETNAME checks the name like CLIENT SETNAME, and changes nothing on an error.
    for bad in (["HELLO", "2", "SETNAME", "a b"], ["HELLO", "2", "SETNAME", "ok", "BOGUS"]):
        try:
            r.execute_command(*bad)
            raise AssertionError(f"{bad} must fail")
        except redis.ResponseError:
            pass
        check(r.client_getname() == "me", f"name changed by a failed {bad}")
    r.execute_command("HELLO", "2", "SETNAME", "")
    check(r.client_getname() is None, "HELLO SETNAME '' clears the name")
    check(r.flushall() and r.dbsize() == 0, "FLUSHALL")


def test_binary_values(port):
    r = redis.Redis(port=port)
    rnd = random.Random(7)
    vals = {}
    for i in range(200):
        k = bytes([i % 256, 0, 13, 10]) + rnd.randbytes(rnd.randint(0, 40))
        v = rnd.randbytes(rnd.choice([0, 1, 100, 5000, 70000]))
        vals[k] = v
    p = r.pipeline(transaction=False)
    for k, v in vals.items():
        p.set(k, v)
    check(all(p.execute()), "binary SETs")
    p = r.pipeline(transaction=False)
    for k in vals:
        p.get(k)
    got = p.execute()
    check(got == list(vals.values()), "binary values round trip")
    big = rnd.randbytes(3 * 1024 * 1024)
    check(r.set(b"big", big) and r.get(b"big") == big, "3 MiB value")


def worker(port, wid, n, q):
    try:
        r = redis.Redis(port=port)
        p = r.pipeline(transaction=False)
        for i in range(n):
            p.set(f"w{wid}:{i}", f"{wid}-{i}" * (i % 7 + 1))
            p.incr(f"shared:{i % 10}")
        p.execute()
        for i in range(0, n, 37):
            v = r.get(f"w{wid}:{i}")
            if v != (f"{wid}-{i}" * (i % 7 + 1)).encode():
                q.put(f"worker {wid}: key {i} = {v!r}")
                return
        q.put(None)
    except Exception as e:  # reported to the parent
        q.put(f"worker {wid}: {e!r}")


def test_several_processes(port):
    q = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(port, w, 2000, q)) for w in range(6)]
    for p in procs:
        p.start()
    results = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    check(results == [None] * len(procs), f"workers: {results}")
    r = redis.Redis(port=port)
    # INCR is atomic per key across processes and shards: 6 workers x 200 increments each.
    total = sum(int(r.get(f"shared:{i}")) for i in range(10))
    check(total == 6 * 2000, f"lost increments: {total}")


def test_pipeline_order(port):
    """10 000 mixed GET/SET/INCR on one connection, keys on every shard; every reply in order."""
    r = redis.Redis(port=port)
    rnd = random.Random(42)
    model = {}
    p = r.pipeline(transaction=False)
    expect = []
    for i in range(10000):
        op = rnd.choice(["get", "set", "incr"])
        if op == "incr":
            k = f"ctr:{rnd.randrange(64)}"
            model[k] = model.get(k, 0) + 1
            p.incr(k)
            expect.append(model[k])
        elif op == "set":
            k = f"str:{rnd.randrange(256)}"
            model[k] = f"v{i}".encode()
            p.set(k, model[k])
            expect.append(True)
        else:
            k = rnd.choice([f"str:{rnd.randrange(256)}", f"ctr:{rnd.randrange(64)}"])
            v = model.get(k)
            p.get(k)
            expect.append(None if v is None else (v if isinstance(v, bytes) else str(v).encode()))
    got = p.execute()
    check(len(got) == len(expect), "reply count")
    for i, (g, e) in enumerate(zip(got, expect)):
        check(g == e, f"reply {i}: got {g!r}, expected {e!r}")
    owners = r.info("shards")
    used = [k for k, v in owners.items() if k.startswith("shard") and v["keys"] > 0]
    check(len(used) == len([k for k in owners if k.startswith("shard")]), f"a shard had no keys: {owners}")


def test_large_value_burst_trims(port):
    """A burst of large values through one connection: every value round-trips, and once
    more than 64 MiB of large op buffers were freed the shard gave the heap back
    (INFO memory mem_trims; RSS itself depends on the allocator, e.g. under ASan)."""
    r = redis.Redis(port=port)
    before = r.info("memory")["mem_trims"]
    rnd = random.Random(11)
    vals = [rnd.randbytes(64 * 1024) for _ in range(8)]
    p = r.pipeline(transaction=False)
    for i in range(1100):  # 1100 x 64 KiB = 68.75 MiB of SET values
        p.set(f"big:{i}", vals[i % 8])
    check(all(p.execute()), "large SETs")
    p = r.pipeline(transaction=False)
    for i in range(1100):
        p.get(f"big:{i}")
    got = p.execute()
    check(all(g == vals[i % 8] for i, g in enumerate(got)), "large values round trip")
    after = r.info("memory")["mem_trims"]
    check(after > before, f"no trim after the burst: mem_trims {before} -> {after}")


def main():
    with Server(args=["--shards", "4"]) as s:
        s.start()
        for t in (test_commands, test_binary_values, test_several_processes, test_pipeline_order,
                  test_large_value_burst_trims):
            print(f"== {t.__name__}", flush=True)
            redis.Redis(port=s.port).flushall()
            t(s.port)
        rc = s.stop()
        check(rc == 0, f"kvs-server exit status {rc}:\n{s.output()}")
    print("all passed")


if __name__ == "__main__":
    main()
