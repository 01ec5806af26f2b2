#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests and the
# integration tests against real podman, apt and Debian roots.
# Installs what is missing first. Run as root on a Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test (unit and integration; container tests run one at a time)"
cargo test --workspace -- --test-threads=1
