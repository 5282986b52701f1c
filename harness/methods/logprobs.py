"""Per-token log-probabilities and entropies of completions, without materialising all logits.

A policy's `[N, T, V]` logits are large (Qwen2.5: V = 151,936; 128 sequences of 1,024 tokens
is 80 GB in float32). `token_logprobs` runs the transformer backbone once, then projects only
the completion positions through the LM head in chunks; under autograd each chunk is
checkpointed, so the backward pass recomputes one chunk's logits at a time instead of keeping
them all. Position t of every output scores token t+1 (the usual causal shift).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

DEFAULT_CHUNK_TOKENS = 512  # Qwen2.5 vocab: ~0.3 GB of float32 logits per chunk


def _score_chunk(
    hidden: Tensor, weight: Tensor | None, bias: Tensor | None, labels: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """hidden [M, H], weight [V, H], labels [M] -> (log p(label) [M], entropy [M]), float32.

    With weight None, `hidden` already holds the logits [M, V].
    """
    logits = hidden if weight is None else F.linear(hidden, weight, bias)
    logits = logits.float() / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - lse
    probs = torch.exp(logits - lse.unsqueeze(-1))
    entropy = lse - (probs * logits).sum(-1)
    return logp, entropy


def _has_plain_lm_head(model: nn.Module) -> bool:
    """True when logits = lm_head(last hidden state): no soft-capping or logit scaling."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "get_output_embeddings"):
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scaled = any(
        getattr(text, key, None) not in (None, 1.0)
        for key in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")
    )
    head = model.get_output_embeddings()
    backbone = getattr(model, "base_model", model)
    return not scaled and isinstance(head, nn.Linear) and backbone is not model


def token_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
) -> tuple[Tensor, Tensor, Tensor]:
    """Log-probability and entropy of every completion token under `model`.

    Args:
        model: a causal LM (HF `PreTrainedModel`).
        input_ids: [N, T] right-padded prompt + completion token ids.
        attention_mask: [N, T] 1 on real tokens, 0 on padding.
        completion_mask: [N, T] 1 on completion tokens (0 on prompt and padding).
        temperature: logits are divided by it before the softmax; pass the sampling
            temperature to score the distribution the completions were drawn from (TRL does).
        chunk_tokens: completion positions projected through the LM head at once.

    Returns:
        logp: [N, T-1] float32; logp[i, t] = log pi(input_ids[i, t+1] | input_ids[i, :t+1]).
        entropy: [N, T-1] float32; entropy of the full next-token distribution at t.
        mask: [N, T-1] float32; 1 where token t+1 is a completion token. logp and entropy are
            exactly 0 (and carry no gradient) where mask is 0.
    """
    if not (input_ids.shape == attention_mask.shape == completion_mask.shape):
        raise ValueError(
            f"input_ids {tuple(input_ids.shape)}, attention_mask {tuple(attention_mask.shape)} and "
            f"completion_mask {tuple(completion_mask.shape)} must have the same shape [N, T]")
    mask = (completion_mask[:, 1:].bool() & attention_mask[:, 1:].bool())
    labels = input_ids[:, 1:][mask]

    if _has_plain_lm_head(model):
        hidden = model.base_model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state[:, :-1][mask]
        head = model.get_output_embeddings()
        weight, bias = head.weight, head.bias
    else:  # unusual heads: take the model's own logits (materialised in full) and score them
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        hidden = logits[:, :-1][mask]
        weight = bias = None

    use_ckpt = torch.is_grad_enabled() and hidden.requires_grad
    logps, entropies = [], []
    for start in range(0, hidden.size(0), chunk_tokens):
        args = (hidden[start:start + chunk_tokens], weight, bias,
                labels[start:start + chunk_tokens], temperature)
        if use_ckpt:
            lp, ent = checkpoint(_score_chunk, *args, use_reentrant=False)
        else:
            lp, ent = _score_chunk(*args)
        logps.append(lp)
        entropies.append(ent)
    if not logps:  # no completion token at all: an empty result still attached to the graph
        logps = entropies = [hidden.float().sum(-1) * 0]
    flat_logp, flat_ent = torch.cat(logps), torch.cat(entropies)

    # masked_scatter keeps the result connected to the graph even when no token is a completion
    zeros = torch.zeros(mask.shape, dtype=torch.float32, device=input_ids.device)
    logp = zeros.masked_scatter(mask, flat_logp)
    entropy = zeros.masked_scatter(mask, flat_ent)
    return logp, entropy, mask.float()
