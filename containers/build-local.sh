#!/usr/bin/env bash
# Build the harness images on a machine without a registry (what the tests and CI do):
# start the Docker engine if none answers, make the local Debian base, pre-fetch the CPU
# lock's wheels, build the grader and the CPU trainer image.
#
#   containers/build-local.sh          -> harness-grader:local, harness-trainer:cpu
#
# Needs root for the engine and the base (apt-get install docker.io debootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
base="${BASE_IMAGE:-local/bookworm-py}"
containers/engine.sh up
containers/local-base.sh "$base"
wh=containers/trainer/wheelhouse
mkdir -p "$wh"
# pip checks every hash of the lock; wheels already in pip's cache are not downloaded again.
python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
  --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform linux_x86_64 --implementation cp \
  -r containers/trainer/requirements-cpu.lock -d "$wh" 2> >(grep -v "is ignored: it is neither" >&2)
docker build --quiet --network host -f containers/grader/Dockerfile \
  --build-arg BASE_IMAGE="$base" -t harness-grader:local . >/dev/null
docker build --quiet --network host -f containers/trainer/Dockerfile \
  --build-arg BASE_IMAGE="$base" --build-arg LOCK_FILE=requirements-cpu.lock \
  -t harness-trainer:cpu . >/dev/null
echo "build-local: harness-grader:local $(docker image inspect -f '{{.Id}}' harness-grader:local)"
echo "build-local: harness-trainer:cpu $(docker image inspect -f '{{.Id}}' harness-trainer:cpu)"
