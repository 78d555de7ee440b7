#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs the Debian packages kvs needs, only those missing. Sourced by scripts/run and
# scripts/test; usable alone: `bash scripts/deps.sh [build|test]`.
set -euo pipefail

kvs_deps() {
    local want=(build-essential cmake pkg-config liburing-dev libxxhash-dev)
    if [ "${1:-build}" = test ]; then
        want+=(libcunit1-dev redis-server redis-tools python3 python3-redis liblmdb-dev
               clang-format clang-tidy cppcheck fio gnuplot-nox procps)
    fi
    local missing=()
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        local sudo=""
        if [ "$(id -u)" -ne 0 ]; then
            if ! command -v sudo >/dev/null; then
                echo "missing Debian packages: ${missing[*]}" >&2
                echo "run as root (no sudo here): apt-get install -y ${missing[*]}" >&2
                return 1
            fi
            sudo="sudo"
        fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    kvs_deps "${1:-build}"
fi
