#!/usr/bin/env bash
# Fetches the status page's chart library (uPlot, MIT) into agent/status_page/vendor/, which git
# ignores and the wheel, the deb and the rpm ship (pyproject.toml's package data).
#
# The pinned version and the sha512 of its package tarball are in packaging/assets.lock. The
# tarball comes through the ordinary npm client (`npm pack NAME@VERSION`, npm's own cache makes a
# second fetch local), is checked against the pin before anything is extracted, and only three
# files are taken from it: the minified script, its stylesheet and the licence. Idempotent: when the
# folder already holds the pinned version, nothing runs. Without npm, Debian's npm package is
# installed (as root). HOSTWATCH_ASSETS=skip skips the fetch (offline work; the page then shows
# tables without charts).
# Usage: packaging/assets.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/agent/status_page/vendor"
FILES=(dist/uPlot.iife.min.js dist/uPlot.min.css LICENSE)
log() { printf '[assets] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

read -r NAME VERSION INTEGRITY < <(grep -v '^[[:space:]]*\(#\|$\)' "$ROOT/packaging/assets.lock" | head -1)
[[ -n ${INTEGRITY:-} ]] || die "packaging/assets.lock: expected 'name version sha512-...'"
WANT="$NAME@$VERSION $INTEGRITY"

present() {
    [[ $(cat "$DEST/.pinned" 2>/dev/null) == "$WANT" ]] || return 1
    local file
    for file in "${FILES[@]}"; do [[ -s $DEST/$(basename "$file") ]] || return 1; done
}

if present; then
    exit 0
fi
if [[ ${HOSTWATCH_ASSETS:-} == skip ]]; then
    log "HOSTWATCH_ASSETS=skip: $NAME@$VERSION not fetched; the status page will have no charts"
    exit 0
fi
if ! command -v npm >/dev/null; then
    [[ $(id -u) == 0 ]] || die "npm is needed to fetch $NAME@$VERSION: install Debian's npm package"
    log "apt-get install npm"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends npm >/dev/null
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
log "npm pack $NAME@$VERSION"
tarball=$(cd "$WORK" && npm pack --silent --ignore-scripts "$NAME@$VERSION" | tail -1)
[[ -s $WORK/$tarball ]] || die "npm pack $NAME@$VERSION produced no tarball"
actual="sha512-$(python3 -c 'import base64, hashlib, sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$WORK/$tarball")"
[[ $actual == "$INTEGRITY" ]] || die "$tarball: integrity $actual does not match the pin $INTEGRITY (packaging/assets.lock)"

tar -xzf "$WORK/$tarball" -C "$WORK" "${FILES[@]/#/package/}"
mkdir -p "$WORK/vendor"
for file in "${FILES[@]}"; do
    install -m 0644 "$WORK/package/$file" "$WORK/vendor/$(basename "$file")"
done
echo "$WANT" >"$WORK/vendor/.pinned"
rm -rf "$DEST.new"
cp -r "$WORK/vendor" "$DEST.new"
rm -rf "$DEST"
mv "$DEST.new" "$DEST"
log "$NAME@$VERSION (integrity checked) -> agent/status_page/vendor/"
