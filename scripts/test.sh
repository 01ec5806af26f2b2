#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, the layer check, unit tests
# and the integration tests against real podman, apt and Debian roots.
# Installs what is missing first. Run as root on a Debian machine.
# Prints each suite's wall time at the end, so that a change sees what it
# costs CI. SUITES="a b" runs only those integration suites.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

times=()
failed=()
# timed NAME COMMAND...: runs COMMAND, records its wall time and outcome.
timed() {
  local name=$1 start end
  shift
  start=$(date +%s)
  if "$@"; then
    end=$(date +%s)
    times+=("$(printf '%-16s %5ds' "$name" $((end - start)))")
  else
    end=$(date +%s)
    times+=("$(printf '%-16s %5ds  FAILED' "$name" $((end - start)))")
    failed+=("$name")
  fi
}

# A full run needs about 10 GB (builds, base roots, images; the scratch
# copies of roots are on a tmpfs the tests mount);
# say so up front instead of failing half-way with ENOSPC.
free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
echo "== disk: $((free_kb / 1024 / 1024)) GB free where the build runs"
if [ "$free_kb" -lt $((6 * 1024 * 1024)) ]; then
  echo "test.sh: less than 6 GB free on $(df -P . | awk 'NR == 2 { print $6 }'); a full run needs about 10 GB" >&2
fi

all_start=$(date +%s)
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== layers (scripts/check-layers.sh)"
scripts/check-layers.sh
echo "== cargo clippy"
timed clippy cargo clippy --workspace --all-targets -- -D warnings
[ ${#failed[@]} -eq 0 ] || { echo "clippy failed" >&2; exit 1; }
echo "== unit tests"
timed unit cargo test --workspace --lib --bins
echo "== integration tests (containers: one test at a time)"
suites=${SUITES:-$(awk -F'"' '/^\[\[test\]\]/ { t = 1 } t && /^name = / { print $2; t = 0 }' tests/Cargo.toml)}
# Build every suite first, so that the times below are the suites' own.
cargo test -p migrate-tests --no-run
for suite in $suites; do
  echo "== suite $suite"
  timed "$suite" cargo test -p migrate-tests --test "$suite" -- --test-threads=1
done
all_end=$(date +%s)

echo
echo "== wall time per suite"
printf '%s\n' "${times[@]}"
printf '%-16s %5ds\n' total $((all_end - all_start))
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
