#!/usr/bin/env bash
# Installs the headless browser the status page test drives (tests/e2e/test_status_page_browser.py):
# Debian's chromium and chromium-driver (the WebDriver server selenium talks to). Both come from
# the archive the machine already uses; nothing is downloaded from anywhere else. Idempotent: a
# second run only checks that the packages are there. Run as root (`make peers` does).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
PACKAGES=(chromium chromium-driver)

missing=()
for pkg in "${PACKAGES[@]}"; do
    [[ $(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null) == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
    echo "[browser] present: ${PACKAGES[*]}"
    exit 0
fi
[[ $(id -u) == 0 ]] || { echo "[browser] missing ${missing[*]}: run as root" >&2; exit 1; }
echo "[browser] apt-get install ${missing[*]}"
# another apt-get (the peers' install) may hold the lock: wait for it rather than fail
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "[browser] installed: $(chromium --version 2>/dev/null || echo chromium) / $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
