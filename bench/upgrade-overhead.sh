#!/usr/bin/env bash
# Benchmark: the overhead of `migrate run` against the bare package manager.
#
# Prepares a Debian 12 root whose apt sources already point at Debian 13, with
# the package lists fetched and every package of the upgrade downloaded (the
# network is out of the measurement), then alternately times, on fresh copies
# of it:
#   migrate: `migrate run` (container, agent, all its steps and checks)
#   bare:    `chroot ROOT apt-get update && apt-get dist-upgrade` with the
#            same dpkg options, /proc, /sys and /dev mounted as the agent does
# PAIRS rounds (default 5) of three runs each: migrate with an upgrade-only plan
# (the apt steps and the safety backup: the runner's overhead proper), migrate
# with the image's default plan (six checks in addition), and bare. Prints
# each round's ratios, where the upgrade-only run spent its time (from its
# log: bench/overhead-breakdown.py), the median ratios and the peak RSS of
# migrate. migrate talks to a podman service the benchmark starts, so that
# the peak RSS is migrate's own. KEEP_WORK=1 keeps the tmpfs with the roots
# for inspection.
# Run as root. Targets: median ratio of the upgrade-only plan <= 1.03, of the
# default plan <= 1.10; peak RSS <= 30 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
pairs=${PAIRS:-5}

scripts/setup.sh
cache="$top/target/bench-cache"
. scripts/lib.sh
bench_prepare
svc=
cleanup() {
  [ -z "$svc" ] || { kill "$svc" 2>/dev/null; wait "$svc" 2>/dev/null; } || true
  release_work
}
trap cleanup EXIT
podman system service --time=0 "unix://$work/podman.sock" 2>/dev/null & svc=$!
export CONTAINER_HOST="unix://$work/podman.sock"
for _ in $(seq 50); do [ -S "$work/podman.sock" ] && break; sleep 0.1; done

# in_root ROOT CMD...: CMD chrooted in ROOT, API filesystems mounted in a
# private mount namespace (gone when CMD ends).
in_root() {
  local root=$1; shift
  unshare -m sh -c '
    r=$1; shift
    for fs in proc sys dev; do mount --rbind /$fs "$r/$fs"; done
    exec chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
      DEBIAN_FRONTEND=noninteractive "$@"' sh "$root" "$@"
}

echo "== preparing the primed root (sources on trixie, packages downloaded)"
cp -a "$cache/bookworm" "$work/primed"
sed -i -E 's/^(deb(-src)? +[^ ]+ +)bookworm/\1trixie/' "$work/primed/etc/apt/sources.list"
in_root "$work/primed" apt-get -qq update
in_root "$work/primed" apt-get -qq -y --download-only dist-upgrade >/dev/null

cat >"$work/upgrade-only.toml" <<'PLAN'
description = "upgrade only (benchmark)"
[[step]]
id = "switch-sources"
kind = "apt-sources"
phase = "cutover"
[[step]]
id = "upgrade-packages"
kind = "apt"
phase = "cutover"
[[step]]
id = "verify-release"
kind = "verify-release"
phase = "cutover"
PLAN

dpkg_opts=(-o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
run_migrate() { # ROOT [--plan FILE]
  local root=$1; shift
  python3 bench/measure.py "$bin/migrate" run --root "$root" --image localhost/migrate/debian-13:latest "$@"
}
run_bare() {
  # (the time apt-get update ends, for the breakdown, in the root's /tmp)
  python3 bench/measure.py bash -c "$(declare -f in_root); in_root '$1' sh -c 'apt-get update && date +%s.%N >/tmp/bench-updated && apt-get -y ${dpkg_opts[*]} dist-upgrade'"
}

ratios=()
full_ratios=()
peaks=()
for i in $(seq "$pairs"); do
  rm -rf "$work/a" "$work/b" "$work/c"
  cp -a "$work/primed" "$work/a"
  cp -a "$work/primed" "$work/b"
  cp -a "$work/primed" "$work/c"
  sync # the copies' dirty pages must not be written back during a measurement
  # Rotate the order so that no configuration always goes first.
  for slot in $(seq 0 2); do
    case $(( (slot + i) % 3 )) in
      0) read -r tm rss cm < <(MEASURE_START_FILE="$work/start" run_migrate "$work/a" --plan "$work/upgrade-only.toml") ;;
      1) read -r tf rssf cf < <(run_migrate "$work/c") ;;
      2) read -r tb _ cb < <(MEASURE_START_FILE="$work/start-bare" run_bare "$work/b") ;;
    esac
    sync
  done
  [ "$cm" = 0 ] || { echo "migrate run failed (exit $cm); see $work/a/var/log/migrate/migrate.log (KEEP_WORK=1 keeps it)" >&2; exit 1; }
  [ "$cf" = 0 ] || { echo "migrate run (default plan) failed (exit $cf); see $work/c/var/log/migrate/migrate.log" >&2; exit 1; }
  [ "$cb" = 0 ] || { echo "bare apt-get failed (exit $cb)" >&2; exit 1; }
  for r in a b c; do
    grep -q '^VERSION_ID="13"' "$work/$r/usr/lib/os-release" || { echo "root $r is not Debian 13" >&2; exit 1; }
  done
  ratio=$(python3 -c "print(f'{$tm/$tb:.3f}')")
  full=$(python3 -c "print(f'{$tf/$tb:.3f}')")
  ratios+=("$ratio")
  full_ratios+=("$full")
  peaks+=("$rss" "$rssf")
  printf 'round %d: bare %6.2fs  migrate upgrade-only %6.2fs (ratio %s)  migrate default plan %6.2fs (ratio %s)  peak RSS %.1f MB\n' \
    "$i" "$tb" "$tm" "$ratio" "$tf" "$full" "$(python3 -c "print(max($rss, $rssf)/1024)")"
  printf '  upgrade-only, ms: %s\n' \
    "$(python3 bench/overhead-breakdown.py "$(cat "$work/start")" "$tm" "$work/a/var/log/migrate/migrate.log" \
      "$(cat "$work/start-bare")" "$tb" "$(cat "$work/b/tmp/bench-updated")")"
done

python3 - "${ratios[*]}" "${full_ratios[*]}" "${peaks[*]}" <<'PY'
import statistics, sys
ratios = [float(r) for r in sys.argv[1].split()]
full = [float(r) for r in sys.argv[2].split()]
peaks = [int(p) / 1024 for p in sys.argv[3].split()]
median = statistics.median(ratios)
peak = max(peaks)
full_median = statistics.median(full)
print(f"median ratio migrate (upgrade-only plan) / bare: {median:.3f} (target <= 1.03: {'met' if median <= 1.03 else 'MISSED'})")
print(f"median ratio migrate (default plan: + 6 checks) / bare: {full_median:.3f} (target <= 1.10: {'met' if full_median <= 1.10 else 'MISSED'})")
print(f"peak RSS of migrate: {peak:.1f} MB (target <= 30 MB: {'met' if peak <= 30 else 'MISSED'})")
PY
