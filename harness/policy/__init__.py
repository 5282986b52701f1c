"""Policies: loading (tiny / local / hub), rollouts, and code extraction."""

from harness.policy import lean, vllm_backend  # noqa: F401  (rollout backend registration)
from harness.policy.backends import ROLLOUT_BACKENDS, make_backend
from harness.policy.extract import extract_code, strip_prose, truncate_at_stops
from harness.policy.loading import Policy, enable_activation_checkpointing, load_policy
from harness.policy.prompting import (
    chat_messages,
    completion_code,
    prompt_record,
    prompt_records,
    render_prompt,
)
from harness.policy.rollout import (
    HFGenerateBackend,
    RolloutBackend,
    Rollouts,
    encode_prompt,
)
from harness.policy.tiny import default_cache_dir, ensure_tiny, recipe_hash

__all__ = [
    "ROLLOUT_BACKENDS",
    "HFGenerateBackend",
    "Policy",
    "RolloutBackend",
    "Rollouts",
    "chat_messages",
    "completion_code",
    "default_cache_dir",
    "enable_activation_checkpointing",
    "encode_prompt",
    "ensure_tiny",
    "extract_code",
    "load_policy",
    "make_backend",
    "prompt_record",
    "prompt_records",
    "recipe_hash",
    "render_prompt",
    "strip_prose",
    "truncate_at_stops",
]
