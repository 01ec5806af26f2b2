# Shared by the demo and the benchmarks: sourced, not run.
# Expects $top (the workspace) and $cache (a cache directory) to be set.

export CONTAINERS_CONF="$top/tests/containers.conf"
bin="$top/target/x86_64-unknown-linux-musl/release"

# Static builds of migrate and migrate-agent.
build_migrate() {
  echo "== building migrate (static)"
  cargo build --release --target x86_64-unknown-linux-musl -p migrate --bins
}

# bootstrap SUITE: a pristine minbase root in $cache/SUITE, made once.
bootstrap() {
  bootstrap_with "$1" "$1" ""
}

# bootstrap_with SUITE NAME PACKAGES: a minbase root of SUITE with the extra
# comma-separated PACKAGES in $cache/NAME, made once.
bootstrap_with() {
  if [ ! -e "$cache/$2.done" ]; then
    echo "== debootstrap $1${3:+ with $3} (once, cached in $cache)"
    rm -rf "${cache:?}/$2"
    mkdir -p "$cache"
    debootstrap --variant=minbase ${3:+--include=$3} "$1" "$cache/$2" >"$cache/$2.log" 2>&1 \
      || { tail -5 "$cache/$2.log" >&2; exit 4; }
    touch "$cache/$2.done"
  fi
}

# build_image BASE_REF: imports the trixie root as BASE_REF (once) and builds
# the debian-13 migration image on it with the default tag.
build_image() {
  if ! podman image exists "$1"; then
    bootstrap trixie
    echo "== importing the Debian 13 base image $1"
    tar -C "$cache/trixie" -c . | podman import - "$1" >/dev/null
  fi
  echo "== migrate image build debian-13"
  "$bin/migrate" image build debian-13 --base "$1" | tail -1
}

# bench_prepare: what every benchmark starts from: migrate and the debian-13
# image built, a Debian 12 minbase root in $cache/bookworm, and $work, a
# tmpfs for the roots (dpkg's fsyncs on a shared disk vary by seconds from
# run to run, which would drown what is measured). release_work unmounts it
# unless KEEP_WORK=1.
bench_prepare() {
  build_migrate
  build_image localhost/migrate-bench/debian:13
  bootstrap bookworm
  work=$(mktemp -d /var/tmp/migrate-bench.XXXXXX)
  mount -t tmpfs -o size=6g migrate-bench "$work"
}
release_work() {
  if [ -z "${KEEP_WORK:-}" ]; then umount "$work" && rmdir "$work"; fi
}
