"""Policies: loading (tiny / local / hub), rollouts, and code extraction."""

from typing import Any

from harness.policy import lean, vllm_backend  # noqa: F401  (rollout backend registration)
from harness.policy.backends import ROLLOUT_BACKENDS, make_backend
from harness.policy.rollout import HFGenerateBackend, RolloutBackend, Rollouts, encode_prompt

# The rest is imported on first use (loading and the tiny policy's build import transformers);
# the backend modules above import torch only when they run (harness.lazy).
_LAZY = {
    "extract_code": "extract", "strip_prose": "extract", "truncate_at_stops": "extract",
    "Policy": "loading", "enable_activation_checkpointing": "loading",
    "load_policy": "loading", "chat_messages": "prompting", "completion_code": "prompting",
    "prompt_record": "prompting", "prompt_records": "prompting", "render_prompt": "prompting",
    "default_cache_dir": "tiny", "ensure_tiny": "tiny", "recipe_hash": "tiny",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"harness.policy.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
