#!/usr/bin/env bash
# Benchmark: the cutover of a Debian 12 -> 13 upgrade with the packages
# pre-fetched in the sync phase against the same cutover downloading them.
#
# The package source is Debian's mirror through a proxy on loopback that
# lets every response together flow at RATE bytes per second (default
# 4000000: a throttled mirror). Each round upgrades two fresh copies of a
# minbase Debian 12 root whose apt goes through that proxy:
#   prefetch: `migrate sync` (the default plan's sync phase downloads every
#             package into the root's cache while services would run), then
#             `migrate run`, whose cutover installs without downloading;
#   without:  `migrate run --plan` with the image's default plan minus its
#             prefetch step: the cutover's apt downloads everything.
# The cutover's duration is the sum of the cutover-phase steps' durations in
# report.json. Prints each round's figures, the median ratio prefetch /
# without, and the sync phase's duration for information.
# Run as root. Target: median ratio <= 0.6. PAIRS rounds (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
pairs=${PAIRS:-2}
rate=${RATE:-4000000}
port=${PORT:-39141}

scripts/setup.sh
cache="$top/target/bench-cache"
. scripts/lib.sh
bench_prepare
proxy=
cleanup() {
  [ -z "$proxy" ] || { kill "$proxy" 2>/dev/null; wait "$proxy" 2>/dev/null; } || true
  release_work
}
trap cleanup EXIT

python3 bench/throttle-proxy.py "$port" "$rate" >"$work/proxy.out" 2>&1 & proxy=$!
for _ in $(seq 50); do grep -q listening "$work/proxy.out" 2>/dev/null && break; sleep 0.1; done

echo "== the Debian 12 root, its apt through the proxy ($rate bytes/s)"
cp -a "$cache/bookworm" "$work/base"
printf 'Acquire::http::Proxy "http://127.0.0.1:%s/";\n' "$port" >"$work/base/etc/apt/apt.conf.d/99bench-proxy"
rm -rf "$work/base/var/cache/apt/archives/"*.deb

# The image's default plan without its prefetch step.
python3 - images/debian-13/plan.toml "$work/no-prefetch.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
blocks = re.split(r'(?m)^(?=\[\[step\]\])', text)
kept = [b for b in blocks if 'kind = "prefetch"' not in b]
open(sys.argv[2], "w").write("".join(kept))
PY

image=localhost/migrate/debian-13:latest
cutover() { # ROOT: seconds of the cutover-phase steps in its report
  python3 - "$1/var/log/migrate/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["result"] == "succeeded", r["result"]
print(f'{sum(s["duration_ms"] or 0 for s in r["steps"] if s["phase"] == "cutover") / 1000:.2f}')
PY
}

ratios=()
for i in $(seq "$pairs"); do
  rm -rf "$work/a" "$work/b"
  cp -a "$work/base" "$work/a"
  cp -a "$work/base" "$work/b"
  sync
  read -r ts _ cs < <(python3 bench/measure.py "$bin/migrate" sync --root "$work/a" --image "$image")
  [ "$cs" = 0 ] || { echo "migrate sync failed (exit $cs); see $work/a/var/log/migrate/migrate.log (KEEP_WORK=1 keeps it)" >&2; exit 1; }
  read -r _ _ ca < <(python3 bench/measure.py "$bin/migrate" run --root "$work/a" --image "$image")
  [ "$ca" = 0 ] || { echo "migrate run (prefetched) failed (exit $ca); see $work/a/var/log/migrate/migrate.log" >&2; exit 1; }
  read -r _ _ cb < <(python3 bench/measure.py "$bin/migrate" run --root "$work/b" --image "$image" --plan "$work/no-prefetch.toml")
  [ "$cb" = 0 ] || { echo "migrate run (no prefetch) failed (exit $cb); see $work/b/var/log/migrate/migrate.log" >&2; exit 1; }
  for r in a b; do
    grep -q '^VERSION_ID="13"' "$work/$r/usr/lib/os-release" || { echo "root $r is not Debian 13" >&2; exit 1; }
  done
  grep -q 'Need to get 0 B' "$work/a/var/log/migrate/migrate.log" || { echo "the prefetched cutover downloaded packages" >&2; exit 1; }
  a=$(cutover "$work/a")
  b=$(cutover "$work/b")
  ratio=$(python3 -c "print(f'{$a/$b:.3f}')")
  ratios+=("$ratio")
  printf 'round %d: sync (prefetch) %6.2fs; cutover prefetched %6.2fs, without %6.2fs (ratio %s)\n' "$i" "$ts" "$a" "$b" "$ratio"
done

python3 - "${ratios[*]}" <<'PY'
import statistics, sys
ratios = [float(r) for r in sys.argv[1].split()]
median = statistics.median(ratios)
print(f"median ratio cutover prefetched / without: {median:.3f} (target <= 0.6: {'met' if median <= 0.6 else 'MISSED'})")
PY
