#!/usr/bin/env bash
# Make the local base image that offline builds use instead of a registry image:
# a minimal Debian bookworm root with Python 3.11, venv, pip and libseccomp (+ its Python
# binding), imported as local/bookworm-py. Needs root and debootstrap (apt-get install
# debootstrap); takes about a minute. Idempotent: does nothing if the image exists.
#
#   containers/local-base.sh [IMAGE]      (default local/bookworm-py)
set -euo pipefail
image="${1:-local/bookworm-py}"
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "local-base: $image already present"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap not found; run: apt-get install -y debootstrap" >&2; exit 1; }
sudo=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || { echo "error: making the base image needs root (debootstrap); run as root or with sudo" >&2; exit 1; }
  sudo=(sudo -n)  # e.g. GitHub runners: passwordless sudo
fi
root="$(mktemp -d /tmp/harness-base.XXXXXX)"
trap '"${sudo[@]}" rm -rf "$root"' EXIT
"${sudo[@]}" debootstrap --variant=minbase \
  --include=python3,python3-venv,python3-pip,python3-seccomp,libseccomp2,ca-certificates \
  bookworm "$root" >"$root.log" 2>&1 || { echo "error: debootstrap failed (log: $root.log)" >&2; exit 1; }
"${sudo[@]}" rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
"${sudo[@]}" tar -C "$root" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$image" >/dev/null
rm -f "$root.log"
echo "local-base: built $image"
