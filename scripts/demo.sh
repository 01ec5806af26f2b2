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
cache="$top/target/demo-cache"
. scripts/lib.sh

build_migrate
build_image localhost/migrate-demo/debian:13
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
