#!/usr/bin/env bash
# Start a Docker engine if none answers (the development and CI machines ship only the
# client): no bridge network, no iptables, containers use
# --network none and talk through Unix sockets.
#
#   containers/engine.sh up      start (or reuse) an engine; exit 1 with the reason if impossible
#   containers/engine.sh down    stop the engine this script started
set -euo pipefail
state="${HARNESS_DOCKERD_DIR:-/tmp/harness-dockerd}"
case "${1:-up}" in
  up)
    if docker info >/dev/null 2>&1; then echo "engine: already answering"; exit 0; fi
    if ! command -v dockerd >/dev/null; then
      echo "error: no Docker engine answers and dockerd is not installed; run: apt-get install -y docker.io" >&2; exit 1
    fi
    if [[ "$(id -u)" != 0 ]]; then
      echo "error: no Docker engine answers and starting one needs root; start dockerd or join the docker group" >&2; exit 1
    fi
    mkdir -p "$state"
    setsid dockerd --bridge=none --iptables=false --ip-forward=false \
      --pidfile "$state/dockerd.pid" >"$state/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
      if docker info >/dev/null 2>&1; then echo "engine: started (log $state/dockerd.log)"; exit 0; fi
      sleep 0.5
    done
    echo "error: dockerd did not answer within 30 s; see $state/dockerd.log" >&2; exit 1 ;;
  down)
    if [[ -f "$state/dockerd.pid" ]]; then kill "$(cat "$state/dockerd.pid")" 2>/dev/null || true; fi ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
