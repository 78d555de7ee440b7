#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# kvs-server with redis-cli and redis-benchmark: basic commands through redis-cli, then
# `redis-benchmark -t set,get,incr,mset -P 16` with zero errors. Starts one server on a free
# port in a temp directory and always stops it (by its PID) on exit.
set -euo pipefail
bin=${KVS_BIN:-$(dirname "$0")/../../build/bin}
dir=$(mktemp -d)
log=$dir/server.log
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -rf "$dir"
}
trap cleanup EXIT
fail() {
    echo "FAIL: $*" >&2
    echo "---- server log ----" >&2
    cat "$log" >&2 || true
    exit 1
}

port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin/kvs-server" --addr "127.0.0.1:$port" --dir "$dir/data" --shards 2 >"$log" 2>&1 &
pid=$!
for _ in $(seq 600); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && break
    kill -0 "$pid" 2>/dev/null || fail "server exited at start"
    sleep 0.1
done
[ "$(redis-cli -p "$port" ping)" = PONG ] || fail "server not ready"
grep -q "listening on 127.0.0.1:$port, 2 shard(s), fsync everysec" "$log" || fail "start-up log line"

cli() { redis-cli -p "$port" "$@"; }
expect() { # expected, command...
    local want=$1
    shift
    local got
    got=$(cli "$@")
    [ "$got" = "$want" ] || fail "redis-cli $*: expected '$want', got '$got'"
}
expect OK set greeting hello
expect hello get greeting
expect "" get missing
expect 1 incr counter
expect 11 incrby counter 10
expect 5 strlen greeting
expect 8 append greeting ",kv"
expect OK mset a 1 b 2 c 3
[ "$(cli mget a b c missing | tr '\n' ,)" = '1,2,3,,' ] || fail "MGET"
expect 3 del a b c
expect "" getset greeting2 1
expect 1 getset greeting2 2
expect string type greeting
expect none type nosuchkey
expect -1 ttl greeting
expect -2 pttl nosuchkey
expect 1 unlink greeting2
expect 0 exists a
expect 2 dbsize
expect PONG ping
expect "ERR unknown command 'nosuch', with args beginning with: 'x' " nosuch x
expect "ERR wrong number of arguments for 'get' command" get
expect "ERR DB index is out of range" select 3
expect OK select 0
[ "$(cli command count)" = "$(cli command list | wc -l)" ] || fail "COMMAND COUNT vs LIST"
[ "$(cli command count)" -ge 29 ] || fail "COMMAND COUNT"
cli info | grep -q '^db0:keys=2,expires=0,avg_ttl=0' || fail "INFO keyspace"
cli info | grep -q '^shard1:keys=' || fail "INFO per-shard figures"
expect OK flushall
expect 0 dbsize

out=$(redis-benchmark -p "$port" -t set,get,incr,mset -P 16 -n 20000 -q 2>&1) \
    || fail "redis-benchmark failed: $out"
echo "$out" | tr '\r' '\n' | grep -E 'requests per second' | sed 's/^ *//'
for t in SET GET INCR MSET; do
    echo "$out" | tr '\r' '\n' | grep -q "^$t.*requests per second" || fail "no $t result: $out"
done
if echo "$out" | grep -qiE 'error|ERR '; then
    fail "redis-benchmark reported errors: $out"
fi
# The benchmark's INCR test hits one counter key 20000 times: none may be lost.
expect 20000 get counter:__rand_int__

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
[ "$rc" -eq 0 ] || fail "exit status $rc after SIGTERM"
echo "all passed"
