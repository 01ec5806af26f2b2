#!/usr/bin/env bash
# Benchmarks of the service migration steps, each against a baseline measured
# in the same run:
#
#  1. Downtime. 1 GB of application data in 10,000 files. The phased way:
#     `migrate sync` (pre-copy while the service runs, leaving a manifest),
#     then 1% of the files change, then `migrate run` (stop, final rsync
#     verified against the manifest, start, then `verify-copy` by content
#     outside the window). The baseline: a cold stop-and-copy of the same
#     data with the same change (stop, rsync without verification, start).
#     Downtime = from the start of the stop step to the end of the start
#     step, as report.json records them. Target: ratio <= 0.05 with the
#     verification on. Then the same with 10% changed and with 100,000 small
#     files, and each cutover once more verified the old way (rsync's full
#     checksum comparison inside the window), for comparison.
#     ONLY=downtime stops after these.
#  2. PostgreSQL. A ~1 GB database (4 tables of ~250 MB) moved from Debian
#     12's PostgreSQL 15 (host) into Debian 13's PostgreSQL 17 (a container):
#     directory format with 2 jobs against the custom format. The postgres
#     step's duration from report.json. Target: directory >= 1.3x faster.
#  3. The agent's peak memory (report.json agent_peak_rss_kb) in every run.
#     Target: <= 50 MB.
#
# Run as root. Page caches are dropped before each measured run.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

scripts/setup.sh
cache="$top/target/bench-cache"
. scripts/lib.sh
build_migrate
bootstrap bookworm

base=localhost/migrate-bench/services-base-pg17:13
image=localhost/migrate-bench/services:bench
if ! podman image exists "$base"; then
  bootstrap_with trixie services-pg17 postgresql-17,rsync
  tar -C "$cache/services-pg17" -c . | podman import - "$base" >/dev/null
fi
"$bin/migrate" image build tests/images/services --base "$base" --tag "$image" | tail -1

work=$(mktemp -d /var/tmp/migrate-bench-svc.XXXXXX)
pg17=
cleanup() {
  [ -z "$pg17" ] || podman rm -f -t 2 "$pg17" >/dev/null 2>&1 || true
  if [ -d "$work/pg15/data" ]; then
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/pg15/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
chmod 755 "$work"

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

# report ROOT FIELD: figures of the last run from report.json.
report() {
  python3 - "$1/var/log/migrate/report.json" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
what = sys.argv[2]
steps = {s["id"]: s for s in r["steps"]}
if what == "downtime":
    # From the start of stop-app to the end of start-app: the steps between.
    ids = [s["id"] for s in r["steps"]]
    window = ids[ids.index("stop-app"):ids.index("start-app") + 1]
    print(sum(steps[i].get("duration_ms", 0) for i in window) / 1000)
elif what == "rss":
    print(r.get("agent_peak_rss_kb", 0))
else:
    print(steps[what]["duration_ms"] / 1000)
PY
}

peaks=()
# ROOT VERB PLAN [ARGS]: ARGS is --force-new for a new migration on a root
# whose last one finished (it waits for its first boot otherwise).
run() {
  drop_caches
  "$bin/migrate" "$2" --root "$1" --image "$image" --plan "$3" --output json "${@:4}" >/dev/null \
    || { echo "migrate $2 failed; see $1/var/log/migrate/migrate.log" >&2; trap - EXIT; exit 1; }
  peaks+=("$(report "$1" rss)")
}

# The service's writes between the run's own pre-copy and the stop: the first
# byte of every (100/PERCENT)th file, in the image (perl is essential there).
late_change() { # FILES PERCENT
  local script='my ($d, $n, $p) = @ARGV; my $s = int(100 / $p);
for (my $i = 3 % $s; $i < $n; $i += $s) {
  my $f = sprintf("%s/d%02d/f%06d.bin", $d, $i % 100, $i);
  open(my $h, "+<", $f) or die "$f: $!"; my $b; read($h, $b, 1);
  seek($h, 0, 0); print $h chr((ord($b) + 7) % 256); close $h }'
  python3 - "$script" "$1" "$2" <<'PY'
import json, sys
script, n, p = sys.argv[1:]
print('[[step]]\nid = "late-writes"\nkind = "command"\nphase = "sync"')
print("command = " + json.dumps(["sh", "-c", f'exec perl -e "$0" "$MIGRATE_ROOT/srv/app/data" {n} {p}', script]))
PY
}

plan_for() { # PRECOPY(yes/no) VERIFY(true/false/full) [VERIFY_AFTER(yes)] [LATE_WRITES: FILES PERCENT]
  {
    echo 'description = "application data move (benchmark)"'
    if [ "$1" = yes ]; then
      printf '[[step]]\nid = "pre-copy"\nkind = "rsync"\nphase = "sync"\nsource = "/srv/app/data/"\ndestination = "/srv/newapp/data/"\n'
    fi
    if [ -n "${4:-}" ]; then
      late_change "$4" "$5"
    fi
    printf '[[step]]\nid = "stop-app"\nkind = "service"\nphase = "cutover"\naction = "stop"\nunits = ["app.service"]\n'
    printf '[[step]]\nid = "final-copy"\nkind = "rsync"\nphase = "cutover"\nsource = "/srv/app/data/"\ndestination = "/srv/newapp/data/"\n'
    case "$2" in
      false) echo 'verify = false' ;;
      # An exclusion that matches nothing: the pass is verified by rsync's
      # full checksum comparison, as every pass was before the manifests.
      full) echo 'exclude = ["/.matches-nothing"]' ;;
    esac
    printf '[[step]]\nid = "start-app"\nkind = "service"\nphase = "cutover"\naction = "start"\nunits = ["app.service"]\n'
    if [ "${3:-}" = yes ]; then
      printf '[[step]]\nid = "verify-after-start"\nkind = "verify-copy"\nphase = "cutover"\nof = "final-copy"\n'
    fi
  }
}
plan_for yes true yes > "$work/phased.toml"
plan_for no false > "$work/cold.toml"
plan_for yes full > "$work/full.toml"

make_data() { # DIR FILES MIN_BYTES MAX_BYTES
  python3 - "$@" <<'PY'
import os, random, sys
d, n, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(7)
for i in range(n):
    sub = os.path.join(d, f"d{i % 100:02}")
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, f"f{i:06}.bin"), "wb") as f:
        f.write(rnd.randbytes(rnd.randint(lo, hi)))
PY
}

change() { # DATA_DIR FILES PERCENT ROUND
  python3 - "$@" <<'PY'
import os, sys
d, n, pct, rnd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
step = 100 // pct
for i in range(rnd % step, n, step):
    p = os.path.join(d, f"d{i % 100:02}", f"f{i:06}.bin")
    with open(p, "r+b") as f:
        b = bytearray(f.read(16))
        b[0] = (b[0] + 1 + rnd) % 256
        f.seek(0)
        f.write(b)
PY
}

# downtime_case NAME FILES MIN_BYTES MAX_BYTES PERCENT: the phased move
# (pre-copy, PERCENT% changed, cutover verified against the manifest, the
# full verification after the start) against a cold stop-and-copy of the
# same change; then the same cutover with rsync's full verification.
downtime_case() {
  local name=$1 files=$2 lo=$3 hi=$4 pct=$5
  echo "== downtime: $name, $pct% changed after the pre-copy"
  mkdir -p "$work/phased"
  cp -a "$cache/bookworm" "$work/phased/root"
  make_data "$work/phased/root/srv/app/data" "$files" "$lo" "$hi"
  mkdir -p "$work/phased/root/usr/lib/systemd/system"
  printf '[Unit]\nDescription=App\n[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n' \
    > "$work/phased/root/usr/lib/systemd/system/app.service"
  mkdir -p "$work/cold"
  cp -a "$work/phased/root" "$work/cold/root"
  du -sh "$work/phased/root/srv/app/data" | cut -f1 | sed 's/^/data: /'

  run "$work/phased/root" sync "$work/phased.toml"
  change "$work/phased/root/srv/app/data" "$files" "$pct" 1
  change "$work/cold/root/srv/app/data" "$files" "$pct" 1
  run "$work/phased/root" run "$work/phased.toml"
  local phased after cold full
  phased=$(report "$work/phased/root" downtime)
  after=$(report "$work/phased/root" verify-after-start)
  run "$work/cold/root" run "$work/cold.toml"
  cold=$(report "$work/cold/root" downtime)
  # The same cutover verified the old way (reads both trees in the window).
  change "$work/phased/root/srv/app/data" "$files" "$pct" 2
  run "$work/phased/root" run "$work/full.toml" --force-new
  full=$(report "$work/phased/root" downtime)
  # The same share written after the run's own pre-copy: copied inside the
  # window by the final pass.
  plan_for yes true no "$files" "$pct" > "$work/late.toml"
  run "$work/phased/root" run "$work/late.toml" --force-new
  late=$(report "$work/phased/root" downtime)
  printf 'downtime, verified: phased %.2fs, cold stop-and-copy %.2fs, ratio %s (target <= 0.05)\n' \
    "$phased" "$cold" "$(python3 -c "print(f'{$phased/$cold:.3f}')")"
  printf 'downtime, verified, with the %s%% written after the run'"'"'s own pre-copy (copied inside it): %.2fs, ratio %s\n' \
    "$pct" "$late" "$(python3 -c "print(f'{$late/$cold:.3f}')")"
  grep -h '\[final-copy\] verified' "$work/phased/root/var/log/migrate/migrate.log" | tail -1 | sed 's/^.*verified: /  final pass: /'
  printf 'downtime with the full checksum verification inside it: %.2fs, ratio %s\n' \
    "$full" "$(python3 -c "print(f'{$full/$cold:.3f}')")"
  printf 'verification after the start (outside the downtime, idle I/O): %.2fs\n' "$after"
  rm -rf "$work/phased" "$work/cold"
}

downtime_case "1 GB in 10,000 files" 10000 60000 150000 1
downtime_case "1 GB in 10,000 files" 10000 60000 150000 10
downtime_case "100,000 small files" 100000 500 4000 1
[ "${ONLY:-}" = downtime ] && exit 0

echo "== PostgreSQL: ~1 GB, directory format with 2 jobs against custom format"
mkdir -p "$work/pg15" "$work/pgroot"
cp -a "$cache/bookworm" "$work/pgroot/root"
mkdir -p "$work/pgroot/root/srv/pgsock"
chmod 755 "$work/pgroot" "$work/pgroot/root"
chown postgres "$work/pg15" "$work/pgroot/root/srv/pgsock"
pw=bench-password
echo "$pw" > "$work/pg15/pw"; chown postgres "$work/pg15/pw"
runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D "$work/pg15/data" --auth=scram-sha-256 -U postgres --pwfile="$work/pg15/pw" >/dev/null
port15=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$work/pg15/data" -l "$work/pg15/log" \
  -o "-k $work/pgroot/root/srv/pgsock -c listen_addresses='' -p $port15" -w start >/dev/null
psql15() { PGPASSWORD=$pw psql -X -q -t -A -h "$work/pgroot/root/srv/pgsock" -p "$port15" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql15 -d postgres -c "CREATE DATABASE bench"
for t in 1 2 3 4; do
  psql15 -d bench -c "CREATE TABLE t$t (id bigserial PRIMARY KEY, payload text)" \
    -c "INSERT INTO t$t (payload) SELECT md5(i::text) || repeat(md5((i * $t)::text), 6) FROM generate_series(1, 1100000) i"
done
psql15 -d bench -c "SELECT pg_size_pretty(pg_database_size('bench'))" | sed 's/^/database: /'

port17=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pg17=migrate-bench-pg17-$$
podman run -d --rm --name "$pg17" --net host --user postgres \
  --ulimit nofile=4096:4096 --ulimit nproc=4096:4096 -e "PW=$pw" "$base" sh -c \
  "set -e; printf '%s' \"\$PW\" > /tmp/pw; /usr/lib/postgresql/17/bin/initdb -D /tmp/data --auth=scram-sha-256 -U postgres --pwfile=/tmp/pw >/dev/null; exec /usr/lib/postgresql/17/bin/postgres -D /tmp/data -c listen_addresses=127.0.0.1 -p $port17 -k /tmp -c max_wal_size=4GB" >/dev/null
for _ in $(seq 100); do PGPASSWORD=$pw psql -h 127.0.0.1 -p "$port17" -U postgres -d postgres -c 'select 1' >/dev/null 2>&1 && break; sleep 0.3; done

pg_plan() { # FORMAT JOBS DATABASE
  printf '[[step]]\nid = "copy-database"\nkind = "postgres"\nphase = "cutover"\nformat = "%s"\n' "$1"
  [ "$2" -gt 1 ] && printf 'jobs = %s\n' "$2"
  printf 'source = { socket = "/srv/pgsock", port = %s, database = "bench", user = "postgres", password_env = "BENCH_PG_PASSWORD" }\n' "$port15"
  printf 'target = { url = "postgresql://postgres@127.0.0.1:%s/%s", password_env = "BENCH_PG_PASSWORD" }\n' "$port17" "$3"
}
export BENCH_PG_PASSWORD=$pw
times_custom=()
times_dir=()
rounds=${ROUNDS:-1}
for i in $(seq "$rounds"); do
  pg_plan custom 1 "custom_$i" > "$work/pg-custom.toml"
  pg_plan directory 2 "dir_$i" > "$work/pg-dir.toml"
  if [ $((i % 2)) -eq 1 ]; then
    run "$work/pgroot/root" run "$work/pg-custom.toml" --force-new; times_custom+=("$(report "$work/pgroot/root" copy-database)")
    run "$work/pgroot/root" run "$work/pg-dir.toml" --force-new; times_dir+=("$(report "$work/pgroot/root" copy-database)")
  else
    run "$work/pgroot/root" run "$work/pg-dir.toml" --force-new; times_dir+=("$(report "$work/pgroot/root" copy-database)")
    run "$work/pgroot/root" run "$work/pg-custom.toml" --force-new; times_custom+=("$(report "$work/pgroot/root" copy-database)")
  fi
  printf 'round %d: custom %.1fs, directory --jobs 2 %.1fs\n' "$i" "${times_custom[-1]}" "${times_dir[-1]}"
done

python3 - "${times_custom[*]}" "${times_dir[*]}" "${peaks[*]}" <<'PY'
import statistics, sys
c = statistics.median(float(x) for x in sys.argv[1].split())
d = statistics.median(float(x) for x in sys.argv[2].split())
peak = max(int(p) for p in sys.argv[3].split()) / 1024
print(f"PostgreSQL: custom {c:.1f}s, directory --jobs 2 {d:.1f}s: {c/d:.2f}x faster (target >= 1.3x: {'met' if c/d >= 1.3 else 'MISSED'})")
print(f"peak memory of the agent over all runs: {peak:.1f} MB (target <= 50 MB: {'met' if peak <= 50 else 'MISSED'})")
PY
