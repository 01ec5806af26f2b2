#!/usr/bin/env bash
# The demo: builds migrate and the debian-13 migration image, creates a
# throwaway Debian 12 root in a temporary directory, upgrades it to Debian 13
# through the migration container and prints the report.
# Installs what is missing first. Run as root on a Debian machine.
# KEEP=1 keeps the upgraded root for inspection.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD

scripts/setup.sh
export CONTAINERS_CONF="$top/tests/containers.conf"
cache="$top/target/demo-cache"
bin="$top/target/x86_64-unknown-linux-musl/release"
base=localhost/migrate-demo/debian:13
mkdir -p "$cache"

echo "== building migrate (static)"
cargo build --release --target x86_64-unknown-linux-musl -p migrate --bins

bootstrap() { # suite -> cached pristine root
  if [ ! -e "$cache/$1.done" ]; then
    echo "== debootstrap $1 (once, cached in target/demo-cache)"
    rm -rf "${cache:?}/$1"
    debootstrap --variant=minbase "$1" "$cache/$1" >"$cache/$1.log" 2>&1 \
      || { tail -5 "$cache/$1.log" >&2; exit 4; }
    touch "$cache/$1.done"
  fi
}

if ! podman image exists "$base"; then
  bootstrap trixie
  echo "== importing the Debian 13 base image"
  tar -C "$cache/trixie" -c . | podman import - "$base" >/dev/null
fi
echo "== migrate image build debian-13"
"$bin/migrate" image build debian-13 --base "$base" | tail -1

bootstrap bookworm
work=$(mktemp -d /var/tmp/migrate-demo.XXXXXX)
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
cp -a "$cache/bookworm" "$work/root"
echo "== throwaway Debian 12 root: $work/root"

echo "== migrate run --root $work/root"
status=0
"$bin/migrate" run --root "$work/root" || status=$?

echo "== report ($work/root/var/log/migrate/report.json)"
cat "$work/root/var/log/migrate/report.json"
echo
exit "$status"
