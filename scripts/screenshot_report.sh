#!/usr/bin/env bash
# Render a run's report.html in headless Chromium (Debian's package) and save a screenshot,
# to check by eye that every section renders with its images. Usage:
#   scripts/screenshot_report.sh RUN/report.html OUT.png [HEIGHT]
# Needs: apt-get install chromium
set -euo pipefail
report=$(realpath "$1")
out=$(realpath -m "$2")
height=${3:-6000}
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size=1200,"$height" \
  --screenshot="$out" "file://$report" 2>/dev/null
echo "wrote $out"
