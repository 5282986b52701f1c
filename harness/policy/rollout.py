"""Rollout backends: sample n completions for each prompt.

`HFGenerateBackend` (`hf`, default) batches every sample into one `model.generate` call
(left-padded prompts, KV cache). `VLLMBackend` (`vllm`, `harness.policy.vllm_backend`) samples
with a colocated vLLM engine when vLLM and a GPU are there; `LeanBackend` (`lean`,
`harness.policy.lean`) is the lean sampler. Each registers itself in
`harness.policy.backends.ROLLOUT_BACKENDS`, where `make_backend` picks one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from harness.lazy import lazy_module
from harness.policy.backends import ROLLOUT_BACKENDS, Warn

if TYPE_CHECKING:
    from harness.policy.loading import Policy

torch = lazy_module("torch")  # imported on first use: reading a spec needs none


@dataclass
class Rollouts:
    """N = len(prompts) * n samples, prompt-major (sample i belongs to prompt i // n).

    Attributes:
        texts: decoded completions (up to, not including, the first eos).
        prompt_ids: per sample, the prompt's token ids (no padding).
        completion_ids: per sample, generated ids up to and including the first eos
            (no eos when the sample hit max_new_tokens).
        n: samples per prompt.
        seconds: wall time of generation.
    """

    texts: list[str]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    n: int
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def generated_tokens(self) -> int:
        """Completion tokens produced (for tokens/s)."""
        return sum(len(c) for c in self.completion_ids)

    def prompt_index(self, i: int) -> int:
        return i // self.n

    def to_batch(self, pad_id: int, device: torch.device | str | None = None
                 ) -> dict[str, torch.Tensor]:
        """Right-padded training batch of prompt + completion.

        Returns `input_ids` [N, T] (long, `pad_id` after the sequence), `attention_mask`
        [N, T] (1 on prompt and completion tokens) and `completion_mask` [N, T] (1 on
        completion tokens, including the eos when generated). T = longest prompt+completion.
        The log-prob of token t comes from the logits at t-1.
        """
        lengths = [len(p) + len(c) for p, c in zip(self.prompt_ids, self.completion_ids,
                                                   strict=True)]
        n, t = len(lengths), max(lengths, default=0)
        input_ids = torch.full((n, t), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n, t), dtype=torch.long)
        completion_mask = torch.zeros((n, t), dtype=torch.long)
        for i, (p, c) in enumerate(zip(self.prompt_ids, self.completion_ids, strict=True)):
            input_ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
            attention_mask[i, : len(p) + len(c)] = 1
            completion_mask[i, len(p): len(p) + len(c)] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask,
               "completion_mask": completion_mask}
        return {k: v.to(device) for k, v in out.items()} if device is not None else out


class RolloutBackend(Protocol):
    """Samples completions; implementations: `hf` (HFGenerateBackend), `vllm` (VLLMBackend)."""

    name: str

    def generate(self, policy: Policy, prompts: list[str], n: int, temperature: float,
                 top_p: float, max_new_tokens: int, seed: int) -> Rollouts:
        """n samples per prompt (prompt-major); temperature 0 = greedy; reproducible
        from `seed`. `prompts` are final texts (already through `harness.policy.render_prompt`)."""
        ...


def encode_prompt(policy: Policy, text: str) -> list[int]:
    """Token ids of a prompt; special tokens (e.g. <bos>) are added unless the text already
    starts with the tokenizer's bos token (as a chat template's output does)."""
    tok = policy.tokenizer
    add = not (tok.bos_token and text.startswith(tok.bos_token))
    return list(tok(text, add_special_tokens=add)["input_ids"])


class HFGenerateBackend:
    """All N samples in one batched `generate` call with the KV cache."""

    name = "hf"

    def generate(self, policy: Policy, prompts: list[str], n: int, temperature: float,
                 top_p: float, max_new_tokens: int, seed: int) -> Rollouts:
        t0 = time.perf_counter()
        tok, model = policy.tokenizer, policy.model
        eos_id, pad_id = tok.eos_token_id, tok.pad_token_id
        encoded = [encode_prompt(policy, p) for p in prompts]
        prompt_ids = [ids for ids in encoded for _ in range(n)]
        if not prompt_ids:
            return Rollouts([], [], [], n)
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, ids in enumerate(prompt_ids):  # left padding
            input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, width - len(ids):] = 1
        sample = temperature > 0
        kwargs = {"do_sample": True, "temperature": temperature, "top_p": top_p,
                  "top_k": 0} if sample else {"do_sample": False}
        was_training = model.training
        model.eval()
        devices = [policy.device] if policy.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                out = model.generate(
                    input_ids=input_ids.to(policy.device),
                    attention_mask=attention_mask.to(policy.device),
                    max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id,
                    use_cache=True, **kwargs)
        finally:
            model.train(was_training)
        completion_ids = [_cut_at_eos(row, eos_id) for row in out[:, width:].tolist()]
        texts = tok.batch_decode([c[:-1] if c and c[-1] == eos_id else c
                                  for c in completion_ids], skip_special_tokens=True)
        return Rollouts(texts=texts, prompt_ids=prompt_ids, completion_ids=completion_ids,
                        n=n, seconds=time.perf_counter() - t0)


def _cut_at_eos(row: list[int], eos_id: int) -> list[int]:
    """Tokens up to and including the first eos (the rest is padding)."""
    return row[: row.index(eos_id) + 1] if eos_id in row else row


@ROLLOUT_BACKENDS.register(
    "hf", "transformers generate: every sample of a step in one batched call with the KV "
    "cache (the default).")
def _hf(policy: Policy | None, warn: Warn) -> HFGenerateBackend:
    return HFGenerateBackend()
