#!/usr/bin/env bash
# TFTP throughput on loopback: zocalo's TFTP server (event loop on epoll, and a thread per
# transfer) against tftpd-hpa, the same clients for all of them; appends nothing, rewrites the
# "TFTP" section of docs/tftp-benchmark.md.
#
#   bench/tftp.sh                   about 1 to 2 minutes
#
# Expects target/release/zocalo (it builds nothing: `cargo build --release -p zocalo` first).
# Installs tftpd-hpa (and atftp, the second client) with apt-get when missing, but never uses
# the package's service: it runs `in.tftpd --foreground --listen` itself on a free port and
# kills it at the end. Run as root (apt-get; in.tftpd chroots into the data directory).
#
# Environment: ZOCALO (default target/release/zocalo), MODELS (default "epoll thread": any
# value `zocalo tftp --model` takes: iterative, thread, pool:N, select, poll, epoll), RUNS
# (default 3), SIZE_MIB (default 100), OUT (default docs/tftp-benchmark.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ZOCALO=${ZOCALO:-$ROOT/target/release/zocalo}
MODELS=${MODELS:-"epoll thread"}
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-100}
OUT=${OUT:-$ROOT/docs/tftp-benchmark.md}
BLKSIZE=1428
WINDOW=16
PER_RUN_LIMIT=60 # seconds; a run that takes longer counts as failed
WORK=$(mktemp -d /tmp/zocalo-tftp-bench.XXXXXX)
DATA=$WORK/data
PIDS=()

log() { printf '== %s\n' "$*" >&2; }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

[[ -x $ZOCALO ]] || { echo "missing $ZOCALO: cargo build --release -p zocalo" >&2; exit 1; }

install_missing() {
    local need=()
    [[ -x /usr/sbin/in.tftpd ]] || need+=(tftpd-hpa)
    command -v atftp >/dev/null || need+=(atftp)
    ((${#need[@]})) || return 0
    log "installing ${need[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >"$WORK/apt.log" 2>&1
    then
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >"$WORK/apt.log" 2>&1
    fi
    # The package starts its own daemon on port 69; it plays no part here.
    service tftpd-hpa stop >/dev/null 2>&1 || true
}

free_udp_port() {
    python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Seconds (monotonic clock) that the command takes; fails if the command fails.
timed() {
    python3 - "$PER_RUN_LIMIT" "$@" <<'EOF'
import subprocess, sys, time
limit, cmd = float(sys.argv[1]), sys.argv[2:]
start = time.monotonic()
subprocess.run(cmd, check=True, timeout=limit, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(f"{time.monotonic() - start:.6f}")
EOF
}

# The options a server grants to an RRQ asking blksize, windowsize and tsize (its OACK).
granted_options() {
    python3 - "$1" "$BLKSIZE" "$WINDOW" <<'EOF'
import socket, sys
port, blksize, window = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
opts = [b"blksize", blksize.encode(), b"windowsize", window.encode(), b"tsize", b"0"]
s.sendto(b"\x00\x01file.bin\x00octet\x00" + b"\x00".join(opts) + b"\x00", ("127.0.0.1", port))
reply, peer = s.recvfrom(70000)
s.sendto(b"\x00\x05\x00\x00done\x00", peer)  # ERROR 0: end the transfer we started
if reply[:2] != b"\x00\x06":
    print("no OACK"); sys.exit()
f = reply[2:].split(b"\x00")[:-1]
print(" ".join(f"{k.decode()}={v.decode()}" for k, v in zip(f[::2], f[1::2])))
EOF
}

# Starts `zocalo tftp --model $1`; sets PORT from its `listening tftp://...` line (read from a
# FIFO: no sleep, no polling) and EFFECTIVE to the model its log reports.
start_zocalo() {
    local fifo=$WORK/zocalo-$1.out
    mkfifo "$fifo"
    "$ZOCALO" tftp --root "$DATA" --listen 127.0.0.1:0 --model "$1" \
        >"$fifo" 2>"$WORK/zocalo-$1.log" &
    PIDS+=($!)
    exec {ZFD}<"$fifo"
    local line=
    IFS= read -r -t 10 line <&"$ZFD" || { echo "zocalo --model $1 did not start" >&2; exit 1; }
    PORT=$(sed -n 's|^listening tftp://127\.0\.0\.1:\([0-9]*\).*|\1|p' <<<"$line")
    [[ -n $PORT ]] || { echo "unexpected first line: $line" >&2; exit 1; }
}

start_tftpd() {
    PORT=$(free_udp_port)
    /usr/sbin/in.tftpd --foreground --listen --address "127.0.0.1:$PORT" --secure "$DATA" \
        2>"$WORK/tftpd.log" &
    PIDS+=($!)
    # Ready when it answers: the probe's RRQ is retransmitted until the socket is bound.
    timed "$ZOCALO" get --quiet "tftp://127.0.0.1:$PORT/probe.bin" "$WORK/probe.out" >/dev/null \
        || { echo "in.tftpd did not answer on port $PORT" >&2; exit 1; }
}

# One measured download: client $1 from port $2; prints MB/s. Clients: zocalo and atftp ask
# for the window; zocalo-lockstep asks only for the block size (RFC 1350 lock-step, what every
# server can do).
measure() {
    local client=$1 port=$2 out=$WORK/out.bin secs
    rm -f "$out"
    case $client in
        zocalo) secs=$(timed "$ZOCALO" get --quiet "tftp://127.0.0.1:$port/file.bin" "$out" \
                    --blksize "$BLKSIZE" --windowsize "$WINDOW") ;;
        zocalo-lockstep) secs=$(timed "$ZOCALO" get --quiet \
                    "tftp://127.0.0.1:$port/file.bin" "$out" --blksize "$BLKSIZE") ;;
        atftp) secs=$(timed atftp --option "blksize $BLKSIZE" --option "windowsize $WINDOW" \
                    -g -r file.bin -l "$out" 127.0.0.1 "$port") ;;
    esac
    [[ $(sha256sum <"$out" | cut -d' ' -f1) == "$SUM" ]] || { echo "$client: checksum" >&2; exit 1; }
    python3 -c "print(f'{$SIZE_MIB * 1048576 / $secs / 1e6:.1f}')"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

install_missing
mkdir -p "$DATA"
chmod 755 "$WORK" "$DATA" # in.tftpd drops root after its chroot into $DATA
log "creating ${SIZE_MIB} MiB of random data"
head -c "$((SIZE_MIB << 20))" /dev/urandom >"$DATA/file.bin"
head -c 1000 /dev/urandom >"$DATA/probe.bin"
chmod 644 "$DATA"/*.bin
SUM=$(sha256sum <"$DATA/file.bin" | cut -d' ' -f1)

declare -A PORTS GRANTED EFFECTIVE
SERVERS=()
for model in $MODELS; do
    start_zocalo "$model"
    PORTS[zocalo-$model]=$PORT
    SERVERS+=("zocalo-$model")
done
start_tftpd
PORTS[tftpd-hpa]=$PORT
SERVERS+=(tftpd-hpa)
for server in "${SERVERS[@]}"; do
    GRANTED[$server]=$(granted_options "${PORTS[$server]}")
    log "$server on port ${PORTS[$server]} grants: ${GRANTED[$server]}"
done
for model in $MODELS; do
    EFFECTIVE[zocalo-$model]=$(sed -n 's/.*tftp server listening.* model=\([^ ]*\).*/\1/p' \
        "$WORK/zocalo-$model.log" | head -n1)
done

CLIENTS=(zocalo zocalo-lockstep)
# atftp has windowsize since 0.8.0.
if atftp -V 2>&1 | grep -Eq 'atftp-0\.([89]|[1-9][0-9])'; then CLIENTS+=(atftp); fi

declare -A RESULTS
for client in "${CLIENTS[@]}"; do
    for run in $(seq "$RUNS"); do
        for server in "${SERVERS[@]}"; do # alternate the servers within each round
            speed=$(measure "$client" "${PORTS[$server]}")
            log "$client <- $server, run $run: $speed MB/s"
            RESULTS[$client/$server]+="$speed "
        done
    done
done

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
{
    echo "## TFTP"
    echo
    echo "Generated by \`bench/tftp.sh\` on $(date -u +%Y-%m-%d)."
    echo
    echo "- Machine: $(nproc) CPUs, $cpu; Linux $(uname -r)"
    echo "- $SIZE_MIB MiB of random data, one download at a time over 127.0.0.1. Clients:"
    echo "  \`zocalo get\` and atftp ask for \`blksize $BLKSIZE\` and \`windowsize $WINDOW\`;"
    echo "  zocalo-lockstep is \`zocalo get\` asking \`blksize $BLKSIZE\` only (no window)."
    echo "- $RUNS run(s) per client and server, servers alternating; SHA-256 checked after every"
    echo "  run; the median in MB/s (10^6 bytes per second), every run in the last column."
    echo "- tftpd-hpa: $(/usr/sbin/in.tftpd -V 2>&1 | head -n1)"
    echo
    echo "| server | options granted | $(printf '%s (MB/s) | ' "${CLIENTS[@]}")runs |"
    echo "|---|---|$(printf -- '---:|%.0s' "${CLIENTS[@]}")---|"
    for server in "${SERVERS[@]}"; do
        name=$server
        [[ -n ${EFFECTIVE[$server]:-} ]] && name="$server (runs as ${EFFECTIVE[$server]})"
        row="| $name | ${GRANTED[$server]} |"
        runs=
        for client in "${CLIENTS[@]}"; do
            # shellcheck disable=SC2086 # the list of speeds splits on purpose
            row+=" $(median ${RESULTS[$client/$server]}) |"
            runs+="$client: ${RESULTS[$client/$server]% }; "
        done
        echo "$row ${runs%; } |"
    done
    echo
    for client in "${CLIENTS[@]}"; do
        for model in $MODELS; do
            # shellcheck disable=SC2086
            z=$(median ${RESULTS[$client/zocalo-$model]})
            # shellcheck disable=SC2086
            t=$(median ${RESULTS[$client/tftpd-hpa]})
            echo "- $client client: zocalo \`--model $model\` / tftpd-hpa =" \
                "$(python3 -c "print(f'{$z / $t:.2f}')")"
        done
    done
    echo
    if [[ ${GRANTED[tftpd-hpa]} != *windowsize* ]]; then
        echo "tftpd-hpa does not implement RFC 7440: its OACK leaves \`windowsize\` out, so the"
        echo "clients fall back to one block per ACK (lock-step) against it, while zocalo grants"
        echo "the window of $WINDOW. The ratio measures the servers as a client sees them, not"
        echo "the same protocol on both sides."
        echo
    fi
    for server in "${SERVERS[@]}"; do
        model=${server#zocalo-}
        if [[ $model =~ ^(select|poll|epoll) && -n ${EFFECTIVE[$server]:-} &&
              ${EFFECTIVE[$server]} != Event* ]]; then
            echo "\`$server\`: this binary runs \`--model $model\` as" \
                "\`${EFFECTIVE[$server]}\` (its log says so):"
            echo "rebuild once the TFTP event loop is wired to \`--model\`."
            echo
        fi
    done
} >"$WORK/section.md"

mkdir -p "$(dirname "$OUT")"
if [[ -f $OUT ]] && grep -q '^## TFTP$' "$OUT"; then
    # Replace the old section (up to the next "## " heading) with the new one.
    awk -v new="$WORK/section.md" '
        /^## TFTP$/ { while ((getline l < new) > 0) print l; skip = 1; next }
        skip && /^## / { skip = 0 }
        !skip' "$OUT" >"$WORK/out.md"
    cp "$WORK/out.md" "$OUT"
else
    [[ -f $OUT ]] || printf '# TFTP benchmark\n\n' >"$OUT"
    cat "$WORK/section.md" >>"$OUT"
fi
cat "$WORK/section.md"
