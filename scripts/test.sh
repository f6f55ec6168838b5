#!/usr/bin/env bash
# Runs every test of zocalo on a fresh machine: installs the real clients the tests use
# (curl, lftp, wget, tftp-hpa, atftp, Python's pytest), checks formatting and lints, runs the
# Rust tests, builds the release binary and runs the real-client suite against it.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for tool in curl:curl lftp:lftp wget:wget tftp:tftp-hpa atftp:atftp vsftpd:vsftpd openssl:openssl; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need_apt+=("${tool##*:}")
done
if ((${#need_apt[@]})); then
    echo "== installing ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
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
echo "== pytest (real clients against the real server)"
python3 -m pytest tests -q -n 2 -p no:cacheprovider
