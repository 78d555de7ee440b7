#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Integration test of the kvs CLI: exact outputs and exit codes of set/get/rm/-V/usage,
# persistence between invocations, compact and stats. KVS_BIN is the build's bin directory.
#   KVS_BIN=build/bin bash tests/integration/test_kvs_cli.sh
set -u
KVS="$(cd "${KVS_BIN:?KVS_BIN must name the bin directory}" && pwd)/kvs"
work=$(mktemp -d "${TMPDIR:-/tmp}/kvs-cli-XXXXXX")
trap 'rm -rf "$work"' EXIT
fails=0

# check NAME WANT_STATUS WANT_STDOUT -- CMD...: run CMD, compare exit status and stdout.
check() {
    local name=$1 want_status=$2 want_out=$3
    shift 4
    local out status
    out=$("$@" 2>"$work/stderr")
    status=$?
    if [ "$status" != "$want_status" ] || [ "$out" != "$want_out" ]; then
        echo "FAIL: $name: status $status (want $want_status), stdout '$out' (want '$want_out')"
        echo "  stderr: $(cat "$work/stderr")"
        fails=$((fails + 1))
    else
        echo "ok: $name"
    fi
}

# check_usage NAME CMD...: exit 2, nothing on stdout, usage on stderr.
check_usage() {
    local name=$1
    shift
    check "$name" 2 "" -- "$@"
    if ! grep -q '^usage: kvs' "$work/stderr"; then
        echo "FAIL: $name: no usage on stderr"
        fails=$((fails + 1))
    fi
}

version=$("$KVS" -V)
case "$version" in
"kvs "[0-9]*) echo "ok: -V prints '$version'" ;;
*) echo "FAIL: -V printed '$version'"; fails=$((fails + 1)) ;;
esac

d="$work/store"
mkdir -p "$d"
cd "$d" || exit 1
check "set in current directory" 0 "" -- "$KVS" set key1 value1
check "get in current directory" 0 "value1" -- "$KVS" get key1
check "get missing key" 0 "Key not found" -- "$KVS" get nokey
check "overwrite" 0 "" -- "$KVS" set key1 value2
check "get after overwrite" 0 "value2" -- "$KVS" get key1
check "rm" 0 "" -- "$KVS" rm key1
check "get after rm" 0 "Key not found" -- "$KVS" get key1
check "rm missing key" 1 "Key not found" -- "$KVS" rm key1
cd "$work" || exit 1
check "set with --dir" 0 "" -- "$KVS" --dir "$d" set k2 "hello world"
check "get with --dir" 0 "hello world" -- "$KVS" --dir "$d" get k2
check "empty value" 0 "" -- "$KVS" --dir "$d" set empty ""
check "get empty value" 0 "" -- "$KVS" --dir "$d" get empty
for i in $(seq 1 50); do "$KVS" --dir "$d" set k2 "v$i" || fails=$((fails + 1)); done
check "compact" 0 "" -- "$KVS" --dir "$d" compact
check "get after compact" 0 "v50" -- "$KVS" --dir "$d" get k2
check "get after compact, removed key" 0 "Key not found" -- "$KVS" --dir "$d" get key1
out=$("$KVS" --dir "$d" stats)
if [ $? -ne 0 ] || ! echo "$out" | grep -q '^keys: *2$' || ! echo "$out" | grep -q 'bytes/key'; then
    echo "FAIL: stats: $out"
    fails=$((fails + 1))
else
    echo "ok: stats"
fi
check "--fsync always" 0 "" -- "$KVS" --dir "$d" --fsync always set k3 v3
check "get k3" 0 "v3" -- "$KVS" --dir "$d" get k3

check_usage "no arguments" "$KVS"
check_usage "unknown subcommand" "$KVS" frobnicate
check_usage "set with one argument" "$KVS" set onlykey
check_usage "get with extra argument" "$KVS" get a b
check_usage "rm without key" "$KVS" rm
check_usage "unknown option" "$KVS" --bogus get a

check "error on a file as directory" 1 "" -- "$KVS" --dir /dev/null get a

bigkey=$(head -c 65537 /dev/zero | tr '\0' k)
check "key over max_key" 1 "" -- "$KVS" --dir "$d" set "$bigkey" v
if ! grep -q 'over the limit' "$work/stderr"; then
    echo "FAIL: key over max_key: no clear message: $(cat "$work/stderr")"
    fails=$((fails + 1))
fi

if [ "$fails" -ne 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "all kvs CLI checks passed"
