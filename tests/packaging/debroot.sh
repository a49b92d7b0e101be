#!/usr/bin/env bash
# Prints the path of a cached tarball of a clean Debian 12 root, made by debootstrap when missing.
#
# The root is what the install test boots with `systemd-nspawn -b`: minbase plus systemd (as
# init), dbus and the package's honest dependencies, so `dpkg -i` must succeed with nothing
# more. The tarball lives outside the clone, under
# ${HOSTWATCH_PEERS_CACHE:-/var/cache/hostwatch-peers}/debootstrap/, keyed by the suite, the
# package list and RECIPE (bump it when the steps below change); the mirror is the one apt on this machine uses (HOSTWATCH_DEBIAN_MIRROR overrides).
# Usage: debroot.sh            -> prints the tarball path (builds it first when missing)
set -euo pipefail

CACHE="${HOSTWATCH_PEERS_CACHE:-/var/cache/hostwatch-peers}/debootstrap"
SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus,python3.11,passwd
RECIPE=1
KEY=$(echo "$SUITE $INCLUDE $RECIPE" | sha256sum | cut -c1-12)
TARBALL="$CACHE/$SUITE-$KEY.tar"

log() { printf '[debroot] %s\n' "$*" >&2; }

if [[ -s $TARBALL ]]; then
    echo "$TARBALL"
    exit 0
fi
[[ $(id -u) == 0 ]] || { log "run as root"; exit 1; }
command -v debootstrap >/dev/null || { log "debootstrap missing (apt-get install debootstrap)"; exit 1; }

mirror="${HOSTWATCH_DEBIAN_MIRROR:-}"
if [[ -z $mirror ]]; then
    # shellcheck disable=SC2016  # $(REPO_URI) is apt's own field syntax
    mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null |
        awk -v s="$SUITE" '$2 == s { print $1; exit }')
fi
[[ -n $mirror ]] || { log "cannot tell the Debian mirror from apt's sources: set HOSTWATCH_DEBIAN_MIRROR"; exit 1; }

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$SECONDS
log "debootstrap $SUITE (minbase + $INCLUDE) ..."
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$work/root" "$mirror" >"$work/log" 2>&1 ||
    { tail -20 "$work/log" >&2; exit 1; }
# the container's own: no network wait at boot, no stale apt lists, a fixed machine id per boot
chroot "$work/root" systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1 || true
rm -rf "$work/root"/var/cache/apt/archives/*.deb "$work/root"/var/lib/apt/lists/*_Packages
: >"$work/root/etc/machine-id"
tar -C "$work/root" --numeric-owner -cf "$TARBALL.tmp" .
mv "$TARBALL.tmp" "$TARBALL"
# older tarballs of other recipes
find "$CACHE" -maxdepth 1 -name "$SUITE-*.tar" ! -name "$(basename "$TARBALL")" -delete
log "done in $((SECONDS - start))s: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
echo "$TARBALL"
