"""Load a policy from a `ModelSpec`: the built-in tiny model, a local directory or a hub id."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.errors import UserError
from harness.spec.schema import ModelSpec, TinyRecipe

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Policy:
    """A causal LM with its tokenizer, ready for rollouts and updates.

    `source` says where it came from: `tiny:<recipe_hash>`, `local:<dir>` or
    `hub:<id>@<revision>`; `path` and `revision` are what `from_pretrained` was given (a
    rollout engine that loads the model itself, such as vLLM, loads the same).
    `use_chat_template` is resolved from `ModelSpec.chat_template`.
    """

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    source: str
    use_chat_template: bool = False
    path: str | None = None  # what from_pretrained loaded: a directory or a hub id
    revision: str | None = None  # the hub revision (None: a directory, or the hub's main)

    def format_prompt(self, text: str) -> str:
        """`text` as one user turn of the chat template (with the generation prompt) when
        the policy uses one, else `text` unchanged."""
        if not self.use_chat_template:
            return text
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"model device {device!r} is not valid ({e}); use auto, cpu or cuda:N"
                        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"model device {device!r} asked for but no CUDA GPU is visible; "
                        "use device: auto or cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[dtype]


def load_policy(spec: ModelSpec, cache_dir: Path | None = None) -> Policy:
    """Load the policy a `ModelSpec` names.

    `tiny` builds (or reuses) the cached tiny model (`cache_dir` overrides the harness cache
    directory); a path loads a saved HF model directory; anything else is a hub id, loaded
    at `spec.revision`. Failures a user can fix raise `UserError` with one line.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    if spec.id == "tiny":
        from harness.policy.tiny import ensure_tiny, recipe_hash

        recipe = spec.tiny or TinyRecipe()
        where: str | Path = ensure_tiny(recipe, cache_dir)
        source, revision = f"tiny:{recipe_hash(recipe)}", None
    elif spec.id.startswith(("/", "./", "../", "~")):
        where = Path(spec.id).expanduser()
        if not where.is_dir():
            raise UserError(f"model directory {spec.id!r} does not exist: pass a directory "
                            "saved with save_pretrained, or a hub id")
        source, revision = f"local:{where.resolve()}", None
    else:
        where, revision = spec.id, spec.revision
        source = f"hub:{spec.id}@{revision or 'main'}"
    try:
        if spec.id == "tiny" or (isinstance(where, Path) and is_tiny_dir(where)):
            # The character tokenizer must load as itself: AutoTokenizer follows config.json's
            # model_type (qwen2) to Qwen2Tokenizer, which drops spaces and newlines. Also when
            # a copy of a tiny build is given as a local directory (the GPU smoke does this).
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(where)
        else:
            tokenizer = AutoTokenizer.from_pretrained(where, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(where, revision=revision, dtype=dtype)
    except (OSError, ValueError) as e:
        raise UserError(_load_failure(spec.id, where, e)) from None
    except Exception as e:  # a damaged file in a directory raises what its parser raises
        if not isinstance(where, Path):
            raise
        raise UserError(_load_failure(spec.id, where, e)) from None
    _ensure_special_tokens(tokenizer, spec.id)
    model.to(device)
    model.eval()
    return Policy(model=model, tokenizer=tokenizer, device=device, dtype=dtype, source=source,
                  use_chat_template=_use_chat_template(spec, tokenizer), path=str(where),
                  revision=revision)


def is_tiny_dir(path: Path) -> bool:
    """True when `path` holds a build of the tiny policy (its `recipe.json` names a recipe
    hash), e.g. a copy of `$HARNESS_CACHE/tiny/<hash>/` passed as a local directory."""
    try:
        meta = json.loads((path / "recipe.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "recipe_hash" in meta and "recipe" in meta


def _load_failure(model_id: str, where: str | Path, err: Exception) -> str:
    if isinstance(where, Path):
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not isinstance(err, (OSError, ValueError)):
            reason = f"{type(err).__name__}: {reason}"
        return (f"model directory {str(where)!r} cannot be loaded ({reason}): it must hold a "
                "model saved with save_pretrained (config.json, weights, tokenizer files)")
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    text = str(err).lower()
    if offline or "offline" in text or "connect" in text or "cache" in text:
        return (f"model {model_id!r} cannot be loaded offline: not in the HF cache; run with "
                "network access once or pass a local directory")
    return (f"model {model_id!r} cannot be loaded from the hub ({type(err).__name__}): check the "
            "id and revision, or pass a local directory")


def _ensure_special_tokens(tokenizer: Any, model_id: str) -> None:
    """Generation needs an eos token to stop and a pad token to batch (pad := eos if absent)."""
    if tokenizer.eos_token is None:
        raise UserError(f"model {model_id!r}: its tokenizer has no eos token, so generation "
                        "cannot stop; set eos_token in its tokenizer_config.json")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _use_chat_template(spec: ModelSpec, tokenizer: Any) -> bool:
    has = bool(getattr(tokenizer, "chat_template", None))
    if spec.chat_template == "always" and not has:
        raise UserError(f"model {spec.id!r} has no chat template but chat_template: always "
                        "was asked for; use auto or never")
    return has if spec.chat_template == "auto" else spec.chat_template == "always"


def enable_activation_checkpointing(model: torch.nn.Module) -> bool:
    """Recompute each decoder layer's activations in the backward pass (HF "gradient
    checkpointing", non-reentrant; active in train mode only). False when the model cannot."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        return False
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return True
