#!/usr/bin/env bash
# Start the shared MLflow tracking server with mlflow/server.env (see mlflow/README.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
env_file="${1:-$here/server.env}"
if [[ ! -f "$env_file" ]]; then
  echo "error: $env_file not found; copy $here/server.env.example to it and edit it" >&2
  exit 2
fi
set -a
# shellcheck source=/dev/null
source "$env_file"
set +a
exec python -m mlflow server
