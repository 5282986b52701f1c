#!/usr/bin/env bash
# Make the trainer and grader images present on this Docker host and say exactly which ones.
#
#   ci/images.sh [JSON_OUT]
#
# Per image (trainer: containers/trainer/Dockerfile, grader: containers/grader/Dockerfile,
# built from the repository root; each Dockerfile pins its base by digest in ARG BASE_IMAGE):
# - $TRAINER_IMAGE / $GRADER_IMAGE pinned by digest (name@sha256:...), as a later job of the
#   same nightly gets them: pulled unless present, used as is;
# - else, with $HARNESS_REGISTRY (e.g. ghcr.io/my-lab): pull $HARNESS_REGISTRY/harness-NAME:TAG,
#   or build and push it when the registry does not have it; then named by its registry
#   digest, so every job of the nightly runs byte-identical images;
# - else: reuse the local harness-NAME:TAG, or build it.
# TAG is $IMAGE_TAG, default the checked-out commit. $TRAINER_BASE_IMAGE / $GRADER_BASE_IMAGE
# override BASE_IMAGE (a mirror of the pinned base); $DOCKER_BUILD_NETWORK is passed to
# `docker build --network` (`host` on an engine started without a bridge).
#
# Prints trainer_image=, trainer_id=, grader_image=, grader_id= (the image ID is the sha256 of
# the image's config: what `docker run` ran), appends them to $GITHUB_OUTPUT when set, and
# writes them with the repo digests as JSON to JSON_OUT when given.
set -euo pipefail
cd "$(dirname "$0")/.."

tag="${IMAGE_TAG:-$(git rev-parse HEAD)}"
registry="${HARNESS_REGISTRY:-}"
registry="${registry%/}"
revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"

present() { docker image inspect "$1" >/dev/null 2>&1; }

build() {  # build NAME REF
  local name="$1" ref="$2" base_var args=()
  base_var="$(echo "$name" | tr '[:lower:]' '[:upper:]')_BASE_IMAGE"
  [[ -n "${!base_var:-}" ]] && args+=(--build-arg "BASE_IMAGE=${!base_var}")
  [[ -n "${DOCKER_BUILD_NETWORK:-}" ]] && args+=(--network "$DOCKER_BUILD_NETWORK")
  echo "building $ref from containers/$name/Dockerfile" >&2
  docker build -f "containers/$name/Dockerfile" -t "$ref" \
    --label "org.opencontainers.image.revision=$revision" "${args[@]}" . >&2
}

resolve() {  # resolve NAME -> prints the image reference to run
  local name="$1" given_var ref digest
  given_var="$(echo "$name" | tr '[:lower:]' '[:upper:]')_IMAGE"
  if [[ "${!given_var:-}" == *@sha256:* ]]; then
    ref="${!given_var}"
    present "$ref" || docker pull -q "$ref" >&2
    echo "$ref"
    return
  fi
  if [[ -n "$registry" ]]; then
    ref="$registry/harness-$name:$tag"
    if ! docker pull -q "$ref" >&2 2>/dev/null; then
      build "$name" "$ref"
      docker push -q "$ref" >&2
    fi
    digest="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$ref" \
              | grep -F "$registry/harness-$name@" | head -n1)"
    if [[ -z "$digest" ]]; then
      echo "error: $ref has no repo digest from $registry after pull/push" >&2
      exit 1
    fi
    echo "$digest"
    return
  fi
  ref="harness-$name:$tag"
  present "$ref" || build "$name" "$ref"
  echo "$ref"
}

trainer="$(resolve trainer)"
grader="$(resolve grader)"
trainer_id="$(docker image inspect --format '{{.Id}}' "$trainer")"
grader_id="$(docker image inspect --format '{{.Id}}' "$grader")"

lines="trainer_image=$trainer
trainer_id=$trainer_id
grader_image=$grader
grader_id=$grader_id"
echo "$lines"
[[ -n "${GITHUB_OUTPUT:-}" ]] && echo "$lines" >>"$GITHUB_OUTPUT"

if [[ -n "${1:-}" ]]; then
  digests() { docker image inspect --format '{{json .RepoDigests}}' "$1"; }
  cat >"$1" <<EOF
{"revision": "$revision",
 "trainer": {"image": "$trainer", "id": "$trainer_id", "repo_digests": $(digests "$trainer")},
 "grader": {"image": "$grader", "id": "$grader_id", "repo_digests": $(digests "$grader")}}
EOF
fi
