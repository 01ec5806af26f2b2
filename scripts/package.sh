#!/usr/bin/env bash
# Builds migrate's .deb and .rpm from the workspace.
#
#   scripts/package.sh [--bin-dir DIR] [--out DIR]
#
# --bin-dir holds the static migrate and migrate-agent (default: built here,
# target/x86_64-unknown-linux-musl/release). --out is where the packages go
# (default target/packages). Both packages hold: /usr/bin/migrate and
# /usr/bin/migrate-agent (static; `migrate image build` finds the agent
# beside migrate), the systemd units, man pages generated from the command
# line definitions (migrate(8), one page per verb) and from the docs (the
# plan and configuration formats, section 5), bash, zsh and fish
# completions, and the docs.
#
# Built with the distributions' own tools, dpkg-deb and rpmbuild, from one
# staged tree: no packaging crate to compile on every fresh machine. The
# units follow each family's convention: the .deb's maintainer scripts
# enable migrate-cleanup.service through deb-systemd-helper and leave
# migrate.timer disabled; the .rpm ships a systemd preset saying the same
# and applies it on first install. Removing either leaves /etc/migrate
# (what the operator put there) and /var/lib/migrate alone.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=
out="$top/target/packages"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "package.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$bin_dir" ]; then
  (cd "$top" && cargo build --release --target x86_64-unknown-linux-musl -p migrate --bins)
  bin_dir="$top/target/x86_64-unknown-linux-musl/release"
fi
for b in migrate migrate-agent; do
  [ -x "$bin_dir/$b" ] || { echo "package.sh: $bin_dir/$b: no such executable" >&2; exit 2; }
done
for tool in dpkg-deb rpmbuild gzip; do
  command -v "$tool" >/dev/null || { echo "package.sh: $tool is missing (scripts/setup.sh installs it)" >&2; exit 4; }
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$top/Cargo.toml" | head -1)
summary="Upgrade Linux hosts and their services to a new release from inside a container"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage="$work/stage"

# The staged tree both packages are made of.
install -d "$stage/usr/bin" "$stage/usr/lib/systemd/system" "$stage/usr/share/doc/migrate/docs" \
  "$stage/usr/share/man/man8" "$stage/usr/share/man/man5" \
  "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
  "$stage/usr/share/fish/vendor_completions.d" \
  "$stage/etc/migrate/config.d" "$stage/etc/migrate/plan.d"
install -m 0755 "$bin_dir/migrate" "$bin_dir/migrate-agent" "$stage/usr/bin/"
install -m 0644 "$top"/systemd/*.service "$top"/systemd/*.timer "$stage/usr/lib/systemd/system/"
"$bin_dir/migrate" generate-docs "$work/gen"
for s in 8 5; do
  for page in "$work/gen/man/man$s"/*; do
    gzip -9nc "$page" > "$stage/usr/share/man/man$s/$(basename "$page").gz"
  done
done
install -m 0644 "$work/gen/completions/migrate.bash" "$stage/usr/share/bash-completion/completions/migrate"
install -m 0644 "$work/gen/completions/_migrate" "$stage/usr/share/zsh/vendor-completions/_migrate"
install -m 0644 "$work/gen/completions/migrate.fish" "$stage/usr/share/fish/vendor_completions.d/migrate.fish"
install -m 0644 "$top/README.md" "$top/BENCHMARKS.md" "$stage/usr/share/doc/migrate/"
install -m 0644 "$top"/docs/* "$stage/usr/share/doc/migrate/docs/"
# The recipes, as their READMEs name them.
for recipe in "$top"/examples/*/; do
  install -d "$stage/usr/share/doc/migrate/examples/$(basename "$recipe")"
  install -m 0644 "$recipe"* "$stage/usr/share/doc/migrate/examples/$(basename "$recipe")/"
done
mkdir -p "$out"

# --- .deb
deb="$work/deb"
cp -a "$stage" "$deb"
install -d "$deb/DEBIAN"
cat > "$deb/DEBIAN/control" <<EOF
Package: migrate
Version: $version
Architecture: amd64
Maintainer: migrate developers <migrate@localhost>
Recommends: podman, runc
Section: admin
Priority: optional
Installed-Size: $(du -sk "$stage" | cut -f1)
Description: $summary
 migrate runs a plan of steps (checks, package upgrade, service data moves)
 inside a container built from the target release, with the host's root
 bind-mounted; an interrupted run continues, a migration can be rolled back.
EOF
# After unpacking: the cleanup unit enabled on a new install (and kept as
# the admin left it on upgrades), the timer left disabled, systemd told.
cat > "$deb/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
case "$1" in
  configure|abort-upgrade|abort-deconfigure|abort-remove)
    if command -v deb-systemd-helper >/dev/null; then
      deb-systemd-helper unmask migrate-cleanup.service >/dev/null || true
      if deb-systemd-helper --quiet was-enabled migrate-cleanup.service; then
        deb-systemd-helper enable migrate-cleanup.service >/dev/null || true
      else
        deb-systemd-helper update-state migrate-cleanup.service >/dev/null || true
      fi
      deb-systemd-helper update-state migrate.timer >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
      systemctl --system daemon-reload >/dev/null || true
    fi
    ;;
esac
EOF
cat > "$deb/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop migrate.timer >/dev/null 2>&1 || true
fi
EOF
cat > "$deb/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if command -v deb-systemd-helper >/dev/null; then
  case "$1" in
    remove) deb-systemd-helper mask migrate-cleanup.service migrate.timer >/dev/null || true ;;
    purge)
      deb-systemd-helper purge migrate-cleanup.service migrate.timer >/dev/null || true
      deb-systemd-helper unmask migrate-cleanup.service migrate.timer >/dev/null || true
      ;;
  esac
fi
if [ -d /run/systemd/system ]; then
  systemctl --system daemon-reload >/dev/null || true
fi
EOF
chmod 0755 "$deb/DEBIAN/postinst" "$deb/DEBIAN/prerm" "$deb/DEBIAN/postrm"
dpkg-deb --root-owner-group -Zgzip --build "$deb" "$out/migrate_${version}_amd64.deb" >/dev/null

# --- .rpm
rpm_top="$work/rpm"
mkdir -p "$rpm_top/SPECS" "$rpm_top/preset/usr/lib/systemd/system-preset"
cat > "$rpm_top/preset/usr/lib/systemd/system-preset/90-migrate.preset" <<'EOF'
enable migrate-cleanup.service
disable migrate.timer
EOF
cat > "$rpm_top/SPECS/migrate.spec" <<EOF
Name: migrate
Version: $version
Release: 1
Summary: $summary
License: Apache-2.0
BuildArch: x86_64
AutoReqProv: no
Recommends: podman
%global debug_package %{nil}
%global __os_install_post %{nil}
%global _build_id_links none

%description
migrate runs a plan of steps (checks, package upgrade, service data moves)
inside a container built from the target release, with the host's root
bind-mounted; an interrupted run continues, a migration can be rolled back.

%install
cp -a "$stage/." "%{buildroot}/"
mv "%{buildroot}/usr/share/zsh/vendor-completions" "%{buildroot}/usr/share/zsh/site-functions"
cp -a "$rpm_top/preset/." "%{buildroot}/"

# In rpm's own Lua: no shell needed in the root (a minimal one has none).
# On the first install the preset decides; on the last removal the units
# are disabled.
%post -p <lua>
if arg[2] == 1 and posix.access("/usr/bin/systemctl", "x") then
  rpm.execute("/usr/bin/systemctl", "--no-reload", "preset", "migrate-cleanup.service", "migrate.timer")
end

%preun -p <lua>
if arg[2] == 0 and posix.access("/usr/bin/systemctl", "x") then
  rpm.execute("/usr/bin/systemctl", "--no-reload", "disable", "--now", "migrate.timer", "migrate-cleanup.service")
end

%files
/usr/bin/migrate
/usr/bin/migrate-agent
/usr/lib/systemd/system/migrate.service
/usr/lib/systemd/system/migrate.timer
/usr/lib/systemd/system/migrate-cleanup.service
/usr/lib/systemd/system-preset/90-migrate.preset
/usr/share/man/man8/*
/usr/share/man/man5/*
/usr/share/bash-completion/completions/migrate
/usr/share/zsh/site-functions/_migrate
/usr/share/fish/vendor_completions.d/migrate.fish
%doc /usr/share/doc/migrate
%dir /etc/migrate
%dir /etc/migrate/config.d
%dir /etc/migrate/plan.d
EOF
rpmbuild --quiet -bb --nodeps --define "_topdir $rpm_top" --define "_rpmdir $out" \
  --define "_binary_payload w6.gzdio" \
  --define "_build_name_fmt %{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}.rpm" "$rpm_top/SPECS/migrate.spec"

echo "$out/migrate_${version}_amd64.deb"
echo "$out/migrate-${version}-1.x86_64.rpm"
