#!/usr/bin/env bash
# Installs what building, the demo and the tests need on a Debian machine.
# Idempotent: installs only what is missing. Run as root.
set -euo pipefail

[ "$(id -u)" -eq 0 ] || { echo "setup.sh: run as root" >&2; exit 4; }

packages=(
  podman runc conmon            # containers (runc: crun fails on hybrid cgroups here)
  debootstrap rsync util-linux ca-certificates
  fdisk                         # sfdisk: the live server test's partitioned disk image
  rpm zypper dnf createrepo-c   # building and serving RPM test repositories
  apt-utils                     # apt-ftparchive: indexing the apt vendor repositories of the tests
  gpg gpg-agent                 # signing them
  postgresql                    # the PostgreSQL cluster of the service tests
  systemd                       # journalctl, to read the journal of booted test roots
  man-db                        # man, to render the packaged manual pages
  docker-registry skopeo        # real registries: publishing, promotion, mirroring
  apache2-utils openssl         # htpasswd users and the TLS of the test registries
  etcd-server etcd-client       # the etcd a recipe moves a service's state from
  prometheus                    # promtool, to check the textfile metrics
  btrfs-progs                   # loop-mounted btrfs roots: snapshots and rollback from them
  python3 python3-venv openssh-client  # ansible-core (from PyPI, in the test cache) over ssh
  apt-cacher-ng iproute2        # booted test hosts' package proxy, on a veth pair the tests create
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: no Rust toolchain (cargo) in PATH; install one with rustup first" >&2
  exit 4
fi
# The agent runs on the target release's libc: it is built static, for musl.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -q x86_64-unknown-linux-musl; then
  echo "setup: adding the x86_64-unknown-linux-musl target"
  rustup target add x86_64-unknown-linux-musl
fi
