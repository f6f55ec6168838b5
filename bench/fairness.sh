#!/usr/bin/env bash
# The fairness benchmark of the "no slow work on the event loop" change: 20 sessions send NOOP
# in a loop while other clients log in to an Argon2 account, LIST and MLSD a 100,000-entry
# directory, and STOR 1 GiB (`zocalo bench --scenario fairness`); then the memory of 30 stalled
# listings of that directory and of one client pipelining STAT without reading.
#
#   bench/fairness.sh [OLD_BINARY]
#
# With OLD_BINARY (say, a build of an earlier commit), its epoll model runs side by side with
# this build's select, poll, epoll and thread models, alternating, two rounds. Loopback only;
# every run is bounded (--timeout, 5 s of pipelining).
set -euo pipefail
cd "$(dirname "$0")/.."
NEW=$PWD/target/release/zocalo
OLD=${1:-}
cargo build --release -p zocalo >/dev/null
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/root/zocalo-bench-list"
python3 - "$WORK/root/zocalo-bench-list" <<'PY'
import os, sys
for i in range(100_000):
    os.close(os.open(f"{sys.argv[1]}/f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
PY
echo bobpw | "$NEW" user add bob --users "$WORK/users.txt" --home . >/dev/null

run() { # label binary model
    "$2" serve --root "$WORK/root" --listen 127.0.0.1:0 --model "$3" --user u:p \
        --users "$WORK/users.txt" --no-anonymous --login-fail-delay-ms 0 \
        >"$WORK/srv.out" 2>/dev/null &
    local pid=$!
    for _ in $(seq 100); do grep -q listening "$WORK/srv.out" && break; sleep 0.1; done
    local port
    port=$(sed -n 's/^listening ftp:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/srv.out" | head -1)
    "$NEW" bench "ftp://u:p@127.0.0.1:$port/" --scenario fairness --slow-login bob:bobpw \
        --list-entries 100000 --big-size 1073741824 --fairness-sessions 20 --label "$1" \
        --timeout 300
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
for round in 1 2; do
    [ -n "$OLD" ] && run "old-epoll" "$OLD" epoll
    for model in select poll epoll thread; do run "$model" "$NEW" "$model"; done
done
python3 bench/memory_bounds.py "$WORK/root" "$NEW" ${OLD:+"$OLD"}
