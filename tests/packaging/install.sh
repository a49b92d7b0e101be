#!/usr/bin/env bash
# Installs what the package tests use, all from Debian's archive: debootstrap (the clean root),
# systemd-container (systemd-nspawn), rpm, lintian, rpmlint, shellcheck, and podman with runc
# (the container image test). Run as root; installs only what is missing.
set -euo pipefail
PACKAGES=(debootstrap systemd-container rpm lintian rpmlint shellcheck binutils python3.11-venv podman runc uidmap)
missing=()
for pkg in "${PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] || missing+=("$pkg")
done
((${#missing[@]})) || exit 0
[[ $(id -u) == 0 ]] || { echo "missing ${missing[*]}: run as root" >&2; exit 1; }
echo "[packaging] apt-get install ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
