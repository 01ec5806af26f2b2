#!/bin/sh
# Installs migrate and its systemd units into a root directory (default /).
#
#   scripts/install.sh [--root DIR] [--bin PATH]
#
# --bin is the migrate binary (default: the static build in
# target/x86_64-unknown-linux-musl/release, made by `cargo build --release
# --target x86_64-unknown-linux-musl -p migrate --bins`). The units go to
# DIR/usr/lib/systemd/system; migrate-cleanup.service is enabled (it only
# starts on a boot where a migration waits for it); migrate.timer stays
# disabled until you enable it.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
root=/
binary="$top/target/x86_64-unknown-linux-musl/release/migrate"
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=$2; shift 2 ;;
    --bin) binary=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -d "$root" ] || { echo "install.sh: --root $root: not a directory" >&2; exit 2; }
[ -x "$binary" ] || { echo "install.sh: $binary: no such executable (build it first, or pass --bin)" >&2; exit 2; }

units="$root/usr/lib/systemd/system"
install -d "$root/usr/bin" "$units" "$root/etc/systemd/system/multi-user.target.wants" \
  "$root/etc/migrate/config.d" "$root/etc/migrate/plan.d"
install -m 0755 "$binary" "$root/usr/bin/migrate"
for unit in migrate.service migrate.timer migrate-cleanup.service; do
  install -m 0644 "$top/systemd/$unit" "$units/$unit"
done
ln -sfn /usr/lib/systemd/system/migrate-cleanup.service \
  "$root/etc/systemd/system/multi-user.target.wants/migrate-cleanup.service"
echo "installed migrate and its units into $root (migrate.timer is disabled)"
