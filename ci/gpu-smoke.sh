#!/usr/bin/env bash
# GPU smoke test: one campaign of a few steps on a small model from a local directory (no hub
# access needed), on CUDA when a GPU is visible (CPU otherwise, smaller), asserting that the
# loss, pass@1 and checkpoint paths behave, then printing the figures: step time, generation
# tokens/s, and the shares of a step spent grading, evaluating and updating.
#
#   bash ci/gpu-smoke.sh                 # the tiny policy from $HARNESS_CACHE (built if missing)
#   MODEL_DIR=/models/qwen bash ci/gpu-smoke.sh
#
# Sized to finish well within 8 minutes on one H100 with the tiny policy (about 1-1.5 minutes
# on a 2-core CPU). Settings (environment): MODEL_DIR, SMOKE_STEPS (default 6 on GPU, 4 on
# CPU), SMOKE_DEVICE (auto|cpu|cuda), SMOKE_DTYPE (auto = bfloat16 on GPU, float32 on CPU),
# SMOKE_BACKEND (hf|vllm, default hf), SMOKE_MAX_NEW_TOKENS (rollout and eval; default the tiny
# specs' 48), SMOKE_MICRO_BATCH_SIZE and SMOKE_GRADIENT_CHECKPOINTING=1 (the update's
# memory options, optim.micro_batch_size / optim.gradient_checkpointing; default off),
# SMOKE_WORKERS (grader workers), SMOKE_THREADS (torch threads), SMOKE_BUDGET_S (asserted wall time, default 480), SMOKE_WORKDIR (run directory;
# default a temporary one, removed afterwards), OUT (when set: figures.json, trace.jsonl,
# result.json and config.json are copied there).
#
# Needs: torch, transformers, safetensors, pydantic, pyyaml, rich, numpy; the grader needs
# Linux, root or user namespaces, libseccomp (libseccomp.so.2) and pyseccomp importable by a
# plain `python -I` (the grader's workers ignore PYTHONPATH). No MLflow, datasets or trl.
#
# Exit status: 0 every check passed; 1 a check failed; 2 a package is missing; 3 the grader
# cannot start on this machine (the policy's generation and update are still measured and
# reported, pass@1 and the grading share are not).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export HF_HUB_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false HARNESS_MLFLOW=off
exec "${PYTHON:-python3}" "$repo/ci/gpu_smoke.py" "$@"
