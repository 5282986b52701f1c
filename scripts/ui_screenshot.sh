#!/usr/bin/env bash
# Check `harness ui` in a real headless browser: start it on RUN, open the URL it prints in
# Chromium (Debian: apt-get install chromium), save a screenshot and list the cell runs the
# page shows (docs/mlflow.md "harness ui").
#
#   scripts/ui_screenshot.sh RUN [OUT.png] [PORT]
set -euo pipefail
run="${1:?usage: scripts/ui_screenshot.sh RUN [OUT.png] [PORT]}"
png="${2:-/tmp/harness-ui.png}"
port="${3:-5077}"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome)" || {
  echo "error: no Chromium here (apt-get install chromium)" >&2; exit 2; }
log="$(mktemp)"
setsid harness ui "$run" --port "$port" >"$log" 2>&1 &  # its own process group: Ctrl-C
ui=$!                                                    # below stops the server with it
trap 'kill -INT -- -"$ui" 2>/dev/null; wait "$ui" 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
url="$(grep -o 'http://[^ ]*' "$log" | head -1)"
opts=(--headless --no-sandbox --disable-gpu --window-size=1900,900 --virtual-time-budget=20000)
"$browser" "${opts[@]}" --screenshot="$png" "$url" 2>/dev/null
echo "harness ui printed: $(head -1 "$log")"
echo "other output of the server: $(tail -n +2 "$log" | wc -l) line(s)"
echo "cell runs on the page:"
"$browser" "${opts[@]}" --dump-dom "$url" 2>/dev/null | grep -o 'tiny_[a-z_]*_s[0-9]*' | sort -u
echo "screenshot: $png"
