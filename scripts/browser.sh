#!/usr/bin/env bash
# Debian's Chromium and its WebDriver for the browser tests, installed with apt-get when
# missing (`make test` runs this). Nothing is downloaded at test time: Selenium is pointed
# at /usr/bin/chromium and /usr/bin/chromedriver (tests/browser/).
set -euo pipefail
[ $# -eq 0 ] || { echo "usage: $0 (no arguments)" >&2; exit 2; }

die() { echo "browser: $*" >&2; exit 1; }

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
echo "browser: installing chromium and chromium-driver with apt-get"
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
log=$(mktemp)
apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends)
# A fresh machine may have no package lists yet: update only when the first attempt fails.
if ! { "${apt[@]}" install chromium chromium-driver ||
  { "${apt[@]}" update && "${apt[@]}" install chromium chromium-driver; }; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  die "apt-get install chromium chromium-driver failed"
fi
rm -f "$log"
echo "browser: $(chromium --version 2>/dev/null), $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
