#!/usr/bin/env bash
# This build against an older one, side by side: logins/s, sessions/s at 100 and 500 clients,
# idle memory per session, RETR and STOR MB/s (`zocalo bench`, this build's load generator for
# both), epoll model, alternating, two rounds. Loopback only; every phase is bounded.
#
#   bench/old_new.sh OLD_BINARY [MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
NEW=$PWD/target/release/zocalo
OLD=$1
MODEL=${2:-epoll}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/root"
run() { # label binary
    "$2" serve --root "$WORK/root" --listen 127.0.0.1:0 --model "$MODEL" --user u:p --write \
        --no-anonymous --login-fail-delay-ms 0 --max-per-ip 100000 >"$WORK/srv.out" 2>/dev/null &
    local pid=$!
    for _ in $(seq 100); do grep -q listening "$WORK/srv.out" && break; sleep 0.1; done
    local port
    port=$(sed -n 's/^listening ftp:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$WORK/srv.out" | head -1)
    "$NEW" bench "ftp://u:p@127.0.0.1:$port/" --label "$1" --server-pid "$pid" \
        --scenario logins --scenario sessions --scenario memory --scenario transfer \
        --clients 500 --concurrency 100,500 --sessions 1500 --idle 2000 \
        --big-size 536870912 --timeout 120
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
for round in 1 2; do
    run "old-$round" "$OLD"
    run "new-$round" "$NEW"
done
