#!/usr/bin/env bash
# Installs the real servers the peer tests talk to (DESIGN.md section 8), all from Debian's archive.
#
#   1. bookworm packages, installed system-wide with apt-get: prometheus, prometheus-node-exporter,
#      victoria-metrics, redis-server, rabbitmq-server, golang-go, rsyslog, systemd-journal-remote (writes
#      the journal files the journald collector's tests read with journalctl). Their services are kept from
#      starting (policy-rc.d answers 101 during the install) and, on a machine that runs systemd,
#      the units of the packages this run installed are disabled: the tests start their own
#      copies on free loopback ports, and nothing is left on the default ports.
#   2. a private apt configuration per suite (trixie, sid) under the cache: its own sources.list,
#      lists, status file and archives; nothing outside the cache changes.
#   3. victoria-metrics-trixie: trixie's victoria-metrics binary (OTLP metrics), `dpkg -x`'d.
#   4. victoria-logs: built with trixie's Go from trixie's
#      golang-github-victoriametrics-victoriametrics-dev (./app/victoria-logs).
#   5. otelcol: a small main (tests/peers/otelcol/main.go) built with sid's Go against sid's
#      golang-opentelemetry-collector-dev.
#
# The Go builds run in GOPATH mode (GO111MODULE=off, GOPROXY=off, CGO_ENABLED=0), the way Debian
# builds its Go packages: GOPATH is the union of the unpacked golang-*-dev packages (the root
# packages plus their recursive Depends), so nothing is fetched from outside Debian's archive.
#
# Everything lands in ${HOSTWATCH_PEERS_CACHE:-/var/cache/hostwatch-peers}, outside the clone:
#   bin/{victoria-metrics-trixie,victoria-logs,otelcol}   the results the fixtures run
#   stamps/NAME                                           recipe hash a result was built from
#   apt/SUITE/, debs/SUITE/                               private apt state and downloaded .debs
# A result is rebuilt only when missing or when its recipe (this script, or the otelcol main)
# changed; HOSTWATCH_PEERS_REBUILD=1 forces a rebuild. Run as root; safe to run again.
set -euo pipefail

CACHE="${HOSTWATCH_PEERS_CACHE:-/var/cache/hostwatch-peers}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
# btrfs-progs: mkfs.btrfs for the storage collector's parity test on a real (loop-device) Btrfs;
# systemd-journal-remote: writes real journal files for the journald collector's tests;
# rsyslog: the reference tailer of tests/bench/bench_logs_lowrate.py (run by the bench on its own config)
SYSTEM_PACKAGES=(prometheus prometheus-node-exporter victoria-metrics redis-server rabbitmq-server golang-go btrfs-progs
    systemd-journal-remote rsyslog)
# package -> the service its postinst would start
declare -A SERVICE_OF=(
    [prometheus]=prometheus [prometheus-node-exporter]=prometheus-node-exporter
    [victoria-metrics]=victoria-metrics [redis-server]=redis-server [rabbitmq-server]=rabbitmq-server
    [rsyslog]=rsyslog
)
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

T0=$SECONDS
log() { printf '[peers %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { log "ERROR: $*"; exit 1; }

# step NAME CMD...: runs one step and reports how long it took.
step() {
    local name=$1 start=$SECONDS
    shift
    log "$name ..."
    "$@"
    log "$name: done in $((SECONDS - start))s"
}

[[ $(id -u) == 0 ]] || die "run as root (apt-get install, $CACHE)"
ARCH=$(dpkg --print-architecture)

# The Debian mirror the machine already uses for its own release (so a local mirror or proxy
# applies to trixie and sid too); HOSTWATCH_DEBIAN_MIRROR overrides it.
debian_mirror() {
    local codename
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null |
        awk -v c="$codename" '$2 == c { print $1; found = 1; exit } $1 ~ /\/debian\/?$/ && !any { any = $1 }
            END { if (!found && any) print any }'
}

# --- 1. system packages -------------------------------------------------------------------------

missing_system_packages() {
    local pkg
    for pkg in "${SYSTEM_PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] || echo "$pkg"
    done
}

install_system_packages() {
    local missing=("$@") policy=/usr/sbin/policy-rc.d own_policy=0 pkg
    if [[ ! -e $policy ]]; then
        # invoke-rc.d / deb-systemd-invoke ask this and start nothing when it answers 101
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -q
    apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold "${missing[@]}"
    if ((own_policy)); then
        rm -f "$policy"
        trap - EXIT
    fi
    # off after a boot too, and stopped in case a policy-rc.d of the machine's own let them start
    local unit
    for pkg in "${missing[@]}"; do
        unit=${SERVICE_OF[$pkg]:-}
        [[ -n $unit ]] || continue
        if command -v systemctl >/dev/null; then
            systemctl disable "$unit" >/dev/null 2>&1 || true
        fi
        if [[ -d /run/systemd/system ]]; then
            systemctl stop "$unit" >/dev/null 2>&1 || true
        else
            service "$unit" stop >/dev/null 2>&1 || true
        fi
    done
}

# --- 2. private apt configurations ----------------------------------------------------------------

declare -A UPDATED=()

# apt_in SUITE CMD...: runs an apt command against the private configuration of SUITE.
apt_in() {
    local suite=$1
    shift
    APT_CONFIG="$CACHE/apt/$suite/apt.conf" "$@"
}

setup_suite() {
    local suite=$1 dir="$CACHE/apt/$1"
    [[ -n ${UPDATED[$suite]:-} ]] && return 0
    MIRROR="${MIRROR:-${HOSTWATCH_DEBIAN_MIRROR:-$(debian_mirror)}}"
    [[ -n $MIRROR ]] || die "cannot tell the Debian mirror from apt's sources: set HOSTWATCH_DEBIAN_MIRROR"
    mkdir -p "$dir"/{lists/partial,archives/partial,sources.list.d,preferences.d}
    : >"$dir/status"
    cat >"$dir/sources.list" <<EOF
deb [signed-by=$KEYRING] $MIRROR $suite main
deb-src [signed-by=$KEYRING] $MIRROR $suite main
EOF
    cat >"$dir/apt.conf" <<EOF
Dir::State "$dir";
Dir::State::Lists "$dir/lists";
Dir::State::status "$dir/status";
Dir::Cache "$dir";
Dir::Cache::archives "$dir/archives";
Dir::Etc::SourceList "$dir/sources.list";
Dir::Etc::SourceParts "$dir/sources.list.d";
Dir::Etc::Preferences "$dir/preferences";
Dir::Etc::PreferencesParts "$dir/preferences.d";
APT::Architecture "$ARCH";
APT::Architectures { "$ARCH"; };
Acquire::Languages "none";
APT::Sandbox::User "root";
// sid's Release expires within days and a mirror may serve a snapshot: the signature is still checked
Acquire::Check-Valid-Until "false";
EOF
    apt_in "$suite" apt-get update -q >"$dir/update.log" 2>&1 || { cat "$dir/update.log"; die "apt-get update ($suite)"; }
    UPDATED[$suite]=1
}

# golang_closure SUITE ROOT...: the golang-*-dev packages among ROOT and their recursive Depends.
golang_closure() {
    local suite=$1
    shift
    apt_in "$suite" apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "$@" | grep -E '^golang-[^ ]*-dev$' | sort -u
}

# toolchain SUITE: the golang-X.Y-go and golang-X.Y-src packages golang-go stands for in SUITE.
toolchain_packages() {
    apt_in "$1" apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances golang-go | grep -E '^golang-1\.[0-9]+-(go|src)$' | sort -u
}

# versions SUITE PKG...: "package=version" of the candidates.
versions() {
    local suite=$1
    shift
    apt_in "$suite" apt-cache show --no-all-versions "$@" | awk '/^Package:/ {p = $2} /^Version:/ {print p "=" $2}'
}

# fetch SUITE NAME ROOT PKG...: downloads the candidate .debs of PKG into debs/NAME (kept, so a
# rebuild downloads only what changed; older versions are dropped) and dpkg -x's them into ROOT,
# with absolute symlinks re-pointed inside ROOT (the -dev packages link /vN import paths, the
# toolchain its src/).
fetch() {
    local suite=$1 dir="$CACHE/debs/$2" root=$3
    shift 3
    mkdir -p "$dir" "$root"
    local files=()
    mapfile -t files < <(apt_in "$suite" apt-cache show --no-all-versions "$@" |
        awk '/^Package:/ {p = $2} /^Version:/ {v = $2; gsub(":", "%3a", v)} /^Architecture:/ {print p "_" v "_" $2 ".deb"}')
    ((${#files[@]} == $#)) || die "apt-cache show found ${#files[@]} of $# packages in $suite"
    (cd "$dir" && apt_in "$suite" apt-get download -q "$@" >"$dir.log" 2>&1) ||
        { tail -20 "$dir.log"; die "apt-get download ($suite)"; }
    local file
    for file in "${files[@]}"; do
        [[ -f $dir/$file ]] || die "apt-get download left no $file"
    done
    find "$dir" -name '*.deb' -printf '%f\n' | { grep -vxF -f <(printf '%s\n' "${files[@]}") || true; } |
        sed "s|^|$dir/|" | xargs -r rm -f
    printf '%s\n' "${files[@]}" | sed "s|^|$dir/|" | xargs -P "$(nproc)" -I{} dpkg -x {} "$root"
    local link target
    while IFS= read -r -d '' link; do
        target=$(readlink "$link")
        ln -sfn "$root$target" "$link"
    done < <(find "$root" -type l -lname '/*' -print0)
}

# --- 3-5. the peers -------------------------------------------------------------------------------

# recipe_hash FUNCTION... [-- FILE...]: what a result depends on, so editing a comment elsewhere
# in this script does not rebuild it.
recipe_hash() {
    local fns=() files=()
    while (($#)) && [[ $1 != -- ]]; do fns+=("$1") && shift; done
    (($#)) && shift && files=("$@")
    { declare -f "${fns[@]}"; cat "${files[@]}" /dev/null; } | sha256sum | cut -c1-16
}

up_to_date() {
    local name=$1 hash=$2
    [[ ${HOSTWATCH_PEERS_REBUILD:-0} != 1 && -x $CACHE/bin/$name && -f $CACHE/stamps/$name &&
        $(cat "$CACHE/stamps/$name") == "$hash" ]]
}

mark_built() { mkdir -p "$CACHE/stamps" && echo "$2" >"$CACHE/stamps/$1"; }

# discard DIR: removes an unpacked tree in the background (seconds for 2 GB of small files) while
# the next step runs; main waits for it.
discard() {
    local trash="$CACHE/work/.trash.$RANDOM$RANDOM"
    mv "$1" "$trash" && rm -rf "$trash" &
}

# go_build SUITE NAME IMPORT_PATH ROOT_PACKAGE...: a GOPATH-mode build with SUITE's default Go.
go_build() {
    local suite=$1 name=$2 import_path=$3
    shift 3
    local work="$CACHE/work/$name"
    rm -rf "$work"
    mkdir -p "$work"
    setup_suite "$suite"
    local tools deps
    mapfile -t tools < <(toolchain_packages "$suite")
    ((${#tools[@]} == 2)) || die "cannot tell $suite's Go toolchain (got: ${tools[*]:-nothing})"
    mapfile -t deps < <(golang_closure "$suite" "$@")
    log "  $name: from $(versions "$suite" "$1")"
    log "  $name: ${tools[*]} and ${#deps[@]} golang-*-dev packages from $suite"
    step "  $name: download and unpack" fetch "$suite" "$name" "$work/root" "${tools[@]}" "${deps[@]}"
    local goroot
    goroot=$(echo "$work"/root/usr/lib/go-1.*)
    [[ -x $goroot/bin/go ]] || die "no go binary under $goroot"
    if [[ -n ${EXTRA_SRC:-} ]]; then
        mkdir -p "$work/root/usr/share/gocode/src/$import_path"
        cp "$EXTRA_SRC"/*.go "$work/root/usr/share/gocode/src/$import_path/"
    fi
    log "  $name: $("$goroot/bin/go" version)"
    mkdir -p "$CACHE/bin"
    step "  $name: go build" env -i PATH="$goroot/bin:/usr/bin:/bin" HOME="$work" GOROOT="$goroot" \
        GOPATH="$work/root/usr/share/gocode" GOCACHE="$work/gocache" GO111MODULE=off GOPROXY=off \
        GOTOOLCHAIN=local GOFLAGS= CGO_ENABLED=0 \
        "$goroot/bin/go" build -trimpath -ldflags='-s -w' -o "$CACHE/bin/$name.new" "$import_path"
    mv "$CACHE/bin/$name.new" "$CACHE/bin/$name"
    discard "$work"
}

build_victoria_metrics_trixie() {
    local work="$CACHE/work/victoria-metrics-trixie"
    setup_suite trixie
    log "  $(versions trixie victoria-metrics)"
    rm -rf "$work"
    fetch trixie victoria-metrics-trixie "$work" victoria-metrics
    mkdir -p "$CACHE/bin"
    install -m 755 "$work/usr/bin/victoria-metrics" "$CACHE/bin/victoria-metrics-trixie"
    discard "$work"
}

build_victoria_logs() {
    local roots
    setup_suite trixie
    # what Debian builds the victoriametrics source with, plus the -dev package holding app/victoria-logs
    mapfile -t roots < <(apt_in trixie apt-cache showsrc --only-source victoriametrics |
        sed -n '/^Build-Depends:/{s/^Build-Depends://; s/,/\n/g; p; q}' | sed 's/^ *//; s/[ (<].*//' |
        grep -E '^golang-.*-dev$')
    go_build trixie victoria-logs github.com/VictoriaMetrics/VictoriaMetrics/app/victoria-logs \
        golang-github-victoriametrics-victoriametrics-dev "${roots[@]}"
}

build_otelcol() {
    EXTRA_SRC="$HERE/otelcol" go_build sid otelcol hostwatch.test/otelcol golang-opentelemetry-collector-dev
}

# peer NAME BUILD_FN [HELPER_FN...] [-- FILE...]: builds NAME unless the cached one is up to date.
peer() {
    local name=$1 fn=$2 hash
    shift 2
    hash=$(recipe_hash "$fn" setup_suite fetch "$@")
    if up_to_date "$name" "$hash"; then
        log "$name: cached ($CACHE/bin/$name)"
        return 0
    fi
    step "$name" "$fn"
    mark_built "$name" "$hash"
}

main() {
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9 || die "cannot lock $CACHE/.lock"
    rm -rf "$CACHE"/work/.trash.*

    local missing
    mapfile -t missing < <(missing_system_packages)
    if ((${#missing[@]})); then
        step "apt-get install ${missing[*]}" install_system_packages "${missing[@]}"
    else
        log "system packages: all installed"
    fi

    peer victoria-metrics-trixie build_victoria_metrics_trixie
    peer victoria-logs build_victoria_logs go_build golang_closure toolchain_packages
    peer otelcol build_otelcol go_build golang_closure toolchain_packages -- "$HERE"/otelcol/*
    wait
    log "all peers ready in $CACHE/bin (total ${SECONDS}s)"
}

main "$@"
