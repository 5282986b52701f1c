#!/usr/bin/env bash
# Compile the trainer image's hashed lock files from requirements.in (needs `uv`, network to
# the package index). Run after changing requirements.in or the project's dependencies.
#
#   requirements-cuda.lock  production (CUDA) image: Python 3.12 (Ubuntu 24.04 base),
#                           torch from PyPI (CUDA build, its CUDA libraries as wheels)
#   requirements-cpu.lock   the CPU image the tests build on a local Debian bookworm base
#                           (Python 3.11): torch's CPU build, and otherwise the versions this
#                           machine has installed (so the docker executor's results equal the
#                           local executor's), passed as constraints: HOST_CONSTRAINTS=FILE
set -euo pipefail
cd "$(dirname "$0")"
common=(--generate-hashes --no-header --python-platform x86_64-manylinux_2_28 --quiet)
uv pip compile requirements.in "${common[@]}" --python-version 3.12 \
  --index-url https://pypi.org/simple -o requirements-cuda.lock
cpu_extra=()
cpu_extra+=(-c "${HOST_CONSTRAINTS:-cpu-constraints.txt}")
uv pip compile requirements.in "${common[@]}" --python-version 3.11 \
  --index-url https://pypi.org/simple --find-links "${TORCH_CPU_WHEELS:-/opt/wheels}" \
  "${cpu_extra[@]}" -o requirements-cpu.lock
echo "lock.sh: wrote requirements-cuda.lock and requirements-cpu.lock"
