#!/usr/bin/env bash
# Side by side: every zocalo model and the usual FTP servers, the same `zocalo bench` scenarios
# against each, on loopback, in one run; writes docs/benchmarks.md and docs/bench/*.svg.
#
#   bench/compare.sh             the issue's sizes (tens of minutes)
#   QUICK=1 bench/compare.sh     small sizes, about 5 minutes
#
# Environment: MODELS="iterative process thread pool:256 select poll epoll epoll:2" and
# PEERS="vsftpd proftpd pure-ftpd pyftpdlib-async pyftpdlib-thread pyftpdlib-process" choose
# what runs; ZOCALO (default target/release/zocalo); BENCH (default "$ZOCALO bench"); OUT
# (default docs/benchmarks.md). Run as root: it installs Debian packages (vsftpd, pure-ftpd and
# proftpd-basic conflict with one another, so each is installed just before its turn) and
# creates the system account `zbench` whose home is the shared data directory.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CONF=$ROOT/bench/conf
ZOCALO=${ZOCALO:-$ROOT/target/release/zocalo}
BENCH=${BENCH:-"$ZOCALO bench"}
OUT=${OUT:-$ROOT/docs/benchmarks.md}
MODELS=${MODELS:-"iterative process thread pool:256 select poll epoll epoll:2"}
PEERS=${PEERS:-"vsftpd proftpd pure-ftpd pyftpdlib-async pyftpdlib-thread pyftpdlib-process"}
BENCH_USER=zbench
BENCH_PASS=zbench-pass-1
WORK=$(mktemp -d /tmp/zocalo-compare.XXXXXX)
DATA=$WORK/data
REPORT=$WORK/report
SERVER_PID=
PORT=

if [[ ${QUICK:-0} == 1 ]]; then
    SIZES=(--clients 50 --concurrency 20,100 --sessions 300 --idle 300 --big-size 268435456
           --multi-size 10000000 --small-size 1048576 --list-entries 10000 --timeout 30)
    LOOPBACK_BYTES=1073741824
else
    SIZES=(--clients 200 --concurrency 100,500 --sessions 3000 --idle 2000
           --big-size 1073741824 --multi-size 10000000 --small-size 1048576
           --list-entries 10000 --timeout 180)
    LOOPBACK_BYTES=4294967296
fi

log() { printf '== %s\n' "$*" >&2; }

cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT

apt_install() {
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$WORK/apt.log" 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >"$WORK/apt.log" 2>&1
    fi
    # A package's own service must not hold port 21 or our files while we measure.
    for svc in vsftpd proftpd pure-ftpd; do service "$svc" stop >/dev/null 2>&1 || true; done
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (at most 10 s) until something accepts on $PORT.
wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Waits (at most 10 s) for zocalo's `listening ftp://127.0.0.1:PORT` line in file $1.
wait_listening() {
    for _ in $(seq 100); do
        PORT=$(sed -n 's|^listening ftp://127\.0\.0\.1:\([0-9]*\).*|\1|p' "$1" | head -n1)
        if [[ -n $PORT ]]; then return 0; fi
        sleep 0.1
    done
    return 1
}

prepare_data() {
    id "$BENCH_USER" >/dev/null 2>&1 || useradd -M -s /bin/bash "$BENCH_USER"
    usermod -d "$DATA" "$BENCH_USER"
    echo "$BENCH_USER:$BENCH_PASS" | chpasswd
    mkdir -p "$DATA/zocalo-bench-list" "$REPORT"
    (cd "$DATA/zocalo-bench-list" && seq -f 'f%05g' 0 9999 | xargs touch)
    chown -R "$BENCH_USER" "$DATA"
    chmod 755 "$WORK"
}

fill() { sed -e "s|@PORT@|$PORT|g" -e "s|@DATA@|$DATA|g" -e "s|@WORK@|$WORK|g" "$1"; }

# Starts server $1 in its own process group; sets SERVER_PID and PORT.
start_server() {
    local name=$1
    case $name in
    zocalo-*)
        setsid "$ZOCALO" serve --model "${name#zocalo-}" --listen 127.0.0.1:0 --root "$DATA" \
            --user "$BENCH_USER:$BENCH_PASS" --login-fail-delay-ms 0 \
            --max-connections 100000 --max-per-ip 100000 >"$WORK/$name.out" 2>"$WORK/$name.err" &
        SERVER_PID=$!
        wait_listening "$WORK/$name.out"
        return
        ;;
    vsftpd)
        PORT=$(free_port)
        fill "$CONF/vsftpd.conf" >"$WORK/vsftpd.conf"
        setsid vsftpd "$WORK/vsftpd.conf" >"$WORK/$name.err" 2>&1 &
        ;;
    proftpd)
        PORT=$(free_port)
        fill "$CONF/proftpd.conf" >"$WORK/proftpd.conf"
        setsid proftpd -n -q -c "$WORK/proftpd.conf" >"$WORK/$name.err" 2>&1 &
        ;;
    pure-ftpd)
        PORT=$(free_port)
        # shellcheck disable=SC2046
        setsid pure-ftpd $(fill "$CONF/pure-ftpd.args") >"$WORK/$name.err" 2>&1 &
        ;;
    pyftpdlib-*)
        PORT=$(free_port)
        setsid /usr/bin/python3 "$CONF/pyftpd.py" "${name#pyftpdlib-}" "$PORT" "$DATA" \
            "$BENCH_USER" "$BENCH_PASS" >"$WORK/$name.err" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    wait_port
}

stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill -- "-$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}

install_peer() {
    case $1 in
    vsftpd) apt_install vsftpd ;;
    proftpd) apt_install proftpd-basic ;;
    pure-ftpd) apt_install pure-ftpd ;;
    pyftpdlib-*) /usr/bin/python3 -c 'import pyftpdlib' 2>/dev/null || apt_install python3-pyftpdlib ;;
    esac
}

# The iterative model serves one session at a time: idle sessions would block every other one.
scenarios_for() {
    case $1 in
    zocalo-iterative) echo --scenario transfer --scenario sessions --scenario listing ;;
    *) echo ;;
    esac
}

run_one() {
    local name=$1
    log "$name"
    chown -R "$BENCH_USER" "$DATA" # files left by a server running as root stay writable
    if ! start_server "$name"; then
        log "$name did not start; see below"
        tail -n 5 "$WORK/$name.err" >&2 || true
        stop_server
        return
    fi
    # shellcheck disable=SC2046
    timeout 1800 $BENCH "ftp://$BENCH_USER:$BENCH_PASS@127.0.0.1:$PORT/" --label "$name" \
        --server-pid "$SERVER_PID" --report "$REPORT" --json "${SIZES[@]}" \
        $(scenarios_for "$name") >"$WORK/$name.jsonl" || log "bench against $name failed"
    stop_server
}

loopback() {
    command -v iperf3 >/dev/null || apt_install iperf3 || true
    if command -v iperf3 >/dev/null; then
        local port
        port=$(free_port)
        iperf3 -s -1 -p "$port" -B 127.0.0.1 >/dev/null 2>&1 &
        sleep 0.5
        iperf3 -c 127.0.0.1 -p "$port" -n "$LOOPBACK_BYTES" -J |
            python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8e6))'
    else
        python3 "$CONF/loopback.py" "$LOOPBACK_BYTES"
    fi
}

version_of() {
    case $1 in
    zocalo-*) "$ZOCALO" --version 2>/dev/null | head -n1 ;;
    pyftpdlib-*) /usr/bin/python3 -c 'import pyftpdlib; print("pyftpdlib", pyftpdlib.__ver__)' 2>/dev/null ;;
    proftpd) dpkg-query -W -f '${Package} ${Version}' proftpd-core 2>/dev/null ;;
    *) dpkg-query -W -f '${Package} ${Version}' "$1" 2>/dev/null ;;
    esac
}

write_doc() {
    local raw=$1 docs
    docs=$(dirname "$OUT")
    mkdir -p "$docs/bench"
    cp "$REPORT"/*.svg "$docs/bench/"
    cp "$REPORT/results.jsonl" "$docs/bench/results.jsonl"
    {
        echo "# Benchmarks"
        echo
        echo "Written by \`bench/compare.sh\`$([[ ${QUICK:-0} == 1 ]] && echo ' (QUICK=1: small sizes)') on $(date -u +%Y-%m-%d)."
        echo "Every server ran on 127.0.0.1 on the same machine, one at a time, measured by the"
        echo "same \`zocalo bench\` load generator (one thread, epoll). Bench sizes: \`${SIZES[*]}\`."
        echo
        echo "## Machine"
        echo
        echo "- CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores available"
        echo "- Memory: $(free -h | awk '/^Mem:/ {print $2}')"
        echo "- Kernel: $(uname -sr)"
        echo "- Raw loopback TCP throughput, same run: **$raw MB/s** (the physical limit of a transfer)"
        echo
        echo "## Servers"
        echo
        for name in "${RAN[@]}"; do echo "- $name: $(version_of "$name" || true)"; done
        echo
        echo "## Results"
        echo
        sed 's|](\([^)]*\)\.svg)|](bench/\1.svg)|' "$REPORT/results.md"
    } >"$OUT"
    log "wrote $OUT"
}

main() {
    [[ -x $ZOCALO ]] || { echo "build first: cargo build --release -p zocalo" >&2; exit 2; }
    prepare_data
    log "raw loopback throughput"
    local raw
    raw=$(loopback)
    RAN=()
    for model in $MODELS; do
        run_one "zocalo-$model"
        RAN+=("zocalo-$model")
    done
    for peer in $PEERS; do
        if install_peer "$peer"; then
            run_one "$peer"
            RAN+=("$peer")
        else
            log "could not install $peer: $(tail -n 2 "$WORK/apt.log")"
        fi
    done
    write_doc "$raw"
}

main "$@"
