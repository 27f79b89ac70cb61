#!/usr/bin/env bash
# Renders a pipeline report.html in headless Chromium and saves a screenshot, so a person (or CI) can see that the
# self-contained page draws its table and SVG curves without any network access.
#   scripts/check-report-html.sh runs/quickstart/report/report.html [out.png]
# Installs Debian's chromium with apt-get when no Chromium is on PATH (needs root or sudo). Exit 1 when the page
# does not render (no screenshot, or a blank one).
set -euo pipefail
html=${1:?usage: scripts/check-report-html.sh REPORT.html [OUT.png]}
out=${2:-${html%.html}.png}
[ -f "$html" ] || { echo "check-report-html: $html: no such file" >&2; exit 2; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    echo "check-report-html: installing chromium with apt-get" >&2
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq chromium >/dev/null
    browser=$(command -v chromium)
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
timeout 120 "$browser" --headless=new --no-sandbox --disable-gpu --user-data-dir="$profile" \
    --window-size=1300,1400 --screenshot="$out" "file://$(realpath "$html")" >/dev/null 2>&1 || true
[ -s "$out" ] || { echo "check-report-html: no screenshot written by $browser" >&2; exit 1; }
# A blank page compresses to a few KB; the table and charts make it far larger.
size=$(stat -c %s "$out")
[ "$size" -gt 20000 ] || { echo "check-report-html: $out is only $size bytes: the page looks blank" >&2; exit 1; }
grep -q '<svg' "$html" || { echo "check-report-html: $html has no inline SVG chart" >&2; exit 1; }
echo "check-report-html: $out ($size bytes)"
