"""Policies: loading (tiny / local / hub), rollouts, and code extraction."""

from harness.policy.extract import extract_code
from harness.policy.loading import Policy, load_policy
from harness.policy.rollout import (
    HFGenerateBackend,
    RolloutBackend,
    Rollouts,
    encode_prompt,
    make_backend,
)
from harness.policy.tiny import default_cache_dir, ensure_tiny, recipe_hash

__all__ = ["HFGenerateBackend", "Policy", "RolloutBackend", "Rollouts", "default_cache_dir",
           "encode_prompt", "ensure_tiny", "extract_code", "load_policy", "make_backend",
           "recipe_hash"]
