#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Integration test of kvs-client (cli/kvs_client.c over net/client.c): set/get/rm, missing
# keys, odd and large values, option placement, usage errors, -V, and an unreachable server.
# It runs against Debian's redis-server (a reference RESP server) and, when the build has one,
# against kvs-server too, including persistence across a graceful restart and after SIGKILL.
# Servers listen on 127.0.0.1 only, on free ports, with data in a temporary directory; the
# test stops only the PIDs it started.
#   KVS_BIN=build/bin bash tests/integration/test_client.sh
set -uo pipefail

BIN=${KVS_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/build/bin}
CLIENT=$BIN/kvs-client
PY=/usr/bin/python3
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kvs-it-client-XXXXXX")
PIDS=()
FAILS=0
CHECKS=0
# 80 KB of base64: large enough to span many reads, small enough for one argv entry.
BIG=$(head -c 60000 /dev/urandom | base64 -w0)

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

# alive PID: true while PID runs (a child that exited but is not yet reaped is a zombie: no).
alive() {
    local state
    state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

# stop PID SIGNAL: stop a server this test started, reap it, and forget its PID so that the
# exit trap never signals a PID the system may have reused since.
stop() {
    local pid=$1 sig=$2 keep=() p i stuck=0
    # bash reports a child killed by a signal ("Killed") on stderr when it reaps it; that is
    # expected here, so the whole stop runs with stderr silenced.
    {
        kill "-$sig" "$pid"
        # A server that ignores the signal must not hang the test: bounded time, then KILL.
        for i in $(seq 1 200); do
            alive "$pid" || break
            sleep 0.05
        done
        if alive "$pid"; then
            stuck=1
            kill -KILL "$pid"
        fi
        wait "$pid"
    } 2>/dev/null
    [ "$stuck" = 0 ] || fail "PID $pid still running 10 s after SIG$sig"
    for p in "${PIDS[@]}"; do
        [ "$p" = "$pid" ] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

fail() {
    echo "FAIL: $*" >&2
    FAILS=$((FAILS + 1))
}

# free_port: a port nobody listens on right now (bound to port 0, then released).
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# run CMD...: run a command, leaving its stdout in $OUT, stderr in $ERR and status in $RC.
run() {
    "$@" >"$TMP/out" 2>"$TMP/err"
    RC=$?
    OUT=$(cat "$TMP/out")
    ERR=$(cat "$TMP/err")
}

# expect NAME RC STDOUT STDERR-PATTERN -- CMD...: check one run. STDERR-PATTERN is a grep -E
# pattern, or "" for "stderr must be empty".
expect() {
    local name=$1 want_rc=$2 want_out=$3 want_err=$4
    shift 5
    CHECKS=$((CHECKS + 1))
    run "$@"
    if [ "$RC" != "$want_rc" ]; then
        fail "$name: exit $RC, want $want_rc (stdout '$OUT', stderr '$ERR')"
    elif [ "$OUT" != "$want_out" ]; then
        fail "$name: stdout '$OUT', want '$want_out'"
    elif [ -z "$want_err" ] && [ -n "$ERR" ]; then
        fail "$name: unexpected stderr '$ERR'"
    elif [ -n "$want_err" ] && ! grep -qE -- "$want_err" "$TMP/err"; then
        fail "$name: stderr '$ERR' does not match /$want_err/"
    fi
}

# wait_ping PORT PID: wait until the server on PORT answers PING; fails if PID dies first or
# after a bounded number of tries. The short sleep only paces the polling.
wait_ping() {
    local port=$1 pid=$2 i
    for i in $(seq 1 200); do
        if command -v redis-cli >/dev/null; then
            [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ] && return 0
        else
            # Without redis-cli, a GET that gets any answer shows the server is serving.
            "$CLIENT" get kvs-it-ping --addr "127.0.0.1:$port" >/dev/null 2>&1 && return 0
        fi
        alive "$pid" || return 1
        sleep 0.05
    done
    return 1
}

# Checks that need no server.
offline_checks() {
    local closed version_re='^kvs-client [0-9]+\.[0-9]+\.[0-9]+'
    local usage='usage: kvs-client'

    run "$CLIENT" -V
    CHECKS=$((CHECKS + 1))
    if [ "$RC" != 0 ] || ! [[ $OUT =~ $version_re ]]; then
        fail "-V: exit $RC, stdout '$OUT'"
    fi
    if [ -n "${KVS_SOURCE:-}" ] && [ -f "$KVS_SOURCE/CMakeLists.txt" ]; then
        local v
        v=$(sed -n 's/^project(kvs VERSION \([0-9.]*\).*/\1/p' "$KVS_SOURCE/CMakeLists.txt")
        expect "-V matches project version" 0 "kvs-client $v" "" -- "$CLIENT" -V
    fi
    expect "--version" 0 "$OUT" "" -- "$CLIENT" --version
    expect "no arguments" 2 "" "$usage" -- "$CLIENT"
    expect "unknown subcommand" 2 "" "unknown command 'frob'" -- "$CLIENT" frob k
    expect "get without key" 2 "" "$usage" -- "$CLIENT" get
    expect "get with two keys" 2 "" "$usage" -- "$CLIENT" get a b
    expect "set without value" 2 "" "$usage" -- "$CLIENT" set k
    expect "set with extra arg" 2 "" "$usage" -- "$CLIENT" set k v w
    expect "rm without key" 2 "" "$usage" -- "$CLIENT" rm
    expect "unknown option" 2 "" "unknown option '--bogus'" -- "$CLIENT" get k --bogus
    expect "--addr without value" 2 "" "$usage" -- "$CLIENT" get k --addr
    expect "malformed --addr" 2 "" "invalid address 'nohost'" -- "$CLIENT" get k --addr nohost
    closed=$(free_port)
    expect "unreachable server" 1 "" \
        "^kvs-client: cannot connect to 127\.0\.0\.1:$closed: Connection refused$" \
        -- "$CLIENT" get k --addr "127.0.0.1:$closed"
    expect "unreachable server, set" 1 "" "cannot connect to 127\.0\.0\.1:$closed" \
        -- "$CLIENT" set k v --addr "127.0.0.1:$closed"
}

# server_checks NAME ADDR: the client's behaviour against a live server at ADDR.
server_checks() {
    local n=$1 a=$2 odd
    odd=$'hello world "quoted" \\ back\ttab é ünï'

    expect "$n: set" 0 "" "" -- "$CLIENT" set k1 v1 --addr "$a"
    expect "$n: get" 0 "v1" "" -- "$CLIENT" get k1 --addr "$a"
    expect "$n: --addr first" 0 "v1" "" -- "$CLIENT" --addr "$a" get k1
    expect "$n: --addr=" 0 "v1" "" -- "$CLIENT" get --addr="$a" k1
    expect "$n: overwrite" 0 "" "" -- "$CLIENT" set k1 v2 --addr "$a"
    expect "$n: get overwritten" 0 "v2" "" -- "$CLIENT" get k1 --addr "$a"
    expect "$n: get missing" 0 "Key not found" "" -- "$CLIENT" get nosuchkey --addr "$a"
    expect "$n: rm" 0 "" "" -- "$CLIENT" rm k1 --addr "$a"
    expect "$n: get removed" 0 "Key not found" "" -- "$CLIENT" get k1 --addr "$a"
    expect "$n: rm missing" 1 "" "^Key not found$" -- "$CLIENT" rm k1 --addr "$a"
    expect "$n: set odd value" 0 "" "" -- "$CLIENT" set "key with spaces" "$odd" --addr "$a"
    expect "$n: get odd value" 0 "$odd" "" -- "$CLIENT" get "key with spaces" --addr "$a"
    expect "$n: set empty value" 0 "" "" -- "$CLIENT" set empty "" --addr "$a"
    expect "$n: get empty value" 0 "" "" -- "$CLIENT" get empty --addr "$a"
    expect "$n: value after --" 0 "" "" -- "$CLIENT" --addr "$a" set dash -- -5
    expect "$n: get dash value" 0 "-5" "" -- "$CLIENT" get dash --addr "$a"
    expect "$n: set 80 KB value" 0 "" "" -- "$CLIENT" set big "$BIG" --addr "$a"
    expect "$n: get 80 KB value" 0 "$BIG" "" -- "$CLIENT" get big --addr "$a"
    command -v redis-cli >/dev/null || return 0
    # Values written by another client are read back byte for byte (a trailing newline is the
    # only thing kvs-client adds).
    redis-cli -h 127.0.0.1 -p "${a##*:}" set fromcli "a b" >/dev/null
    expect "$n: value set by redis-cli" 0 "a b" "" -- "$CLIENT" get fromcli --addr "$a"
    "$CLIENT" set tocli "x y z" --addr "$a"
    CHECKS=$((CHECKS + 1))
    [ "$(redis-cli -h 127.0.0.1 -p "${a##*:}" get tocli)" = "x y z" ] ||
        fail "$n: redis-cli does not read what kvs-client set"
}

# --- the reference server -------------------------------------------------------------------

offline_checks

TESTED=0
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
    started=0
    for _ in 1 2 3; do
        port=$(free_port)
        mkdir -p "$TMP/redis"
        redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
            --dir "$TMP/redis" >"$TMP/redis.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        if wait_ping "$port" "$pid"; then
            started=1
            break
        fi
        stop "$pid" KILL
    done
    if [ "$started" = 1 ]; then
        server_checks redis "127.0.0.1:$port"
        redis-cli -h 127.0.0.1 -p "$port" rpush alist x >/dev/null
        expect "redis: server error reply" 1 "" "WRONGTYPE" \
            -- "$CLIENT" get alist --addr "127.0.0.1:$port"
        stop "$pid" TERM
        expect "redis: server gone" 1 "" "cannot connect to 127\.0\.0\.1:$port" \
            -- "$CLIENT" get k1 --addr "127.0.0.1:$port"
        TESTED=1
    else
        fail "redis-server did not start: $(tail -n 5 "$TMP/redis.log")"
    fi
else
    echo "SKIP: redis-server/redis-cli not installed, reference-server checks not run"
fi

# --- kvs-server, when built -----------------------------------------------------------------

# start_kvs PORT DIR: start kvs-server and wait for it; sets KVS_PID.
start_kvs() {
    local port=$1 dir=$2
    "$BIN/kvs-server" --addr "127.0.0.1:$port" --dir "$dir" --shards 2 \
        >>"$TMP/kvs.log" 2>&1 &
    KVS_PID=$!
    PIDS+=("$KVS_PID")
    wait_ping "$port" "$KVS_PID"
}

# kvs_checks: the same client checks against kvs-server, then its data across a graceful
# restart and across SIGKILL.
kvs_checks() {
    local port a i
    port=$(free_port)
    a="127.0.0.1:$port"
    mkdir -p "$TMP/kvs"
    if ! start_kvs "$port" "$TMP/kvs"; then
        fail "kvs-server did not start: $(tail -n 5 "$TMP/kvs.log")"
        return
    fi
    server_checks kvs "$a"
    for i in $(seq 1 50); do
        "$CLIENT" set "persist-$i" "value-$i" --addr "$a" || fail "kvs: set persist-$i"
    done
    "$CLIENT" rm persist-7 --addr "$a" || fail "kvs: rm persist-7"

    stop "$KVS_PID" TERM
    if ! start_kvs "$port" "$TMP/kvs"; then
        fail "kvs-server did not restart: $(tail -n 5 "$TMP/kvs.log")"
        return
    fi
    expect "kvs: after restart, get" 0 "value-1" "" -- "$CLIENT" get persist-1 --addr "$a"
    expect "kvs: after restart, get 50" 0 "value-50" "" -- "$CLIENT" get persist-50 --addr "$a"
    expect "kvs: after restart, removed stays removed" 0 "Key not found" "" \
        -- "$CLIENT" get persist-7 --addr "$a"
    expect "kvs: after restart, big value" 0 "$BIG" "" -- "$CLIENT" get big --addr "$a"
    expect "kvs: set before kill" 0 "" "" -- "$CLIENT" set killed yes --addr "$a"

    # A SET is answered only once its record is written, so even SIGKILL must keep it.
    stop "$KVS_PID" KILL
    if ! start_kvs "$port" "$TMP/kvs"; then
        fail "kvs-server did not restart after SIGKILL: $(tail -n 5 "$TMP/kvs.log")"
        return
    fi
    expect "kvs: after SIGKILL, get" 0 "yes" "" -- "$CLIENT" get killed --addr "$a"
    expect "kvs: after SIGKILL, older key" 0 "value-2" "" -- "$CLIENT" get persist-2 --addr "$a"
    stop "$KVS_PID" TERM
}

if [ -x "$BIN/kvs-server" ]; then
    kvs_checks
    TESTED=1
else
    echo "SKIP: $BIN/kvs-server not built yet, kvs-server checks not run"
fi

if [ "$TESTED" = 0 ]; then
    echo "SKIP: no server to test kvs-client against"
fi
echo "test_client: $CHECKS checks, $FAILS failed"
[ "$FAILS" = 0 ]
