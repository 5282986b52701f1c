"""The lean sampler (`rollout.backend: lean`): a decoding loop over the model's own forward.

`model.generate` pays, per generated token, for machinery a rollout does not need: logits
processors and stopping criteria, a KV cache that grows by `torch.cat` (every token copies
the whole cache), and finished rows that keep being computed until the longest one ends. On
the tiny policy that overhead is most of the step. This loop keeps only what sampling needs:

- **one prefill per distinct prompt**: the G samples of a prompt share its prompt, so the
  prompt is run once and its keys and values are copied G times (prefill cost / G);
- **a preallocated KV cache** (`PreallocatedLayer`): keys and values are written in place
  into buffers sized for prompt + `max_new_tokens`, and attention sees only the filled part;
- **finished rows leave the batch**: when a quarter of the rows in the batch have emitted
  eos, the batch (and the cache) is compacted to the rows still running;
- sampling is `softmax(logits / T)` (nucleus-filtered when `top_p < 1`) drawn with
  `torch.multinomial` from one `torch.Generator` seeded by `seed`; temperature 0 is greedy
  (argmax, as `generate` does: the tests check the two agree token for token).

It works for any HF causal LM whose forward takes a `Cache`: models whose layers all use
plain full attention (Llama, Qwen2, Mistral, Gemma 2 without sliding layers, GPT-NeoX, ...)
get the preallocated cache; others (sliding-window or linear-attention layers) keep the
model's own `DynamicCache`, still with shared prefill and compaction where their layers
support batch selection. Draws are reproducible for a seed on one machine; they are not
the same draws as `generate` with that seed (a different order of random numbers).

On a GPU the same loop runs on the device; capturing its decode step in a CUDA graph (a
static cache) is the next step there and is not done yet.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from typing import TYPE_CHECKING, Any

from harness.lazy import lazy_module

if TYPE_CHECKING:
    from torch import Tensor

    from harness.policy.loading import Policy

from harness.policy.backends import ROLLOUT_BACKENDS, Warn
from harness.policy.rollout import Rollouts, encode_prompt

torch = lazy_module("torch")  # imported on first use: reading a spec needs none

# Prefill runs at most this many prompt tokens (rows x padded width) at once, so a long batch
# of prompts never materialises one huge activation tensor (page faults dominate on CPU).
PREFILL_TOKENS = 4096
# Compact the batch when at least this share of its rows has finished.
COMPACT_SHARE = 0.25


def _layer_base() -> type:
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - transformers < 4.54 has no layer classes
        return object
    return DynamicLayer


class KVBuffers:
    """Flat key/value buffers reused from one `generate` call to the next.

    On CPU a fresh multi-megabyte tensor costs page faults on first touch, on every call;
    reusing the buffers removes that cost. Two buffers per layer and kind: a compaction
    copies the rows it keeps from one into the other. On a GPU buffers are not kept (the
    caching allocator already reuses memory, and the memory is better returned to training).
    """

    def __init__(self) -> None:
        self._flat: dict[tuple[str, int, int], Tensor] = {}

    def get(self, key: tuple[str, int, int], shape: tuple[int, ...], like: Tensor) -> Tensor:
        numel = math.prod(shape)
        if like.device.type != "cpu":
            return like.new_empty(shape)
        buf = self._flat.get(key)
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype:
            buf = like.new_empty(numel)
            self._flat[key] = buf
        return buf[:numel].view(shape)


@functools.cache
def _preallocated_layer() -> type:
    """`PreallocatedLayer`, defined on first use: its base class is transformers'
    `DynamicLayer`, and importing transformers is left to the first rollout."""

    class PreallocatedLayer(_layer_base()):  # type: ignore[misc]
        """Keys and values of one full-attention layer in preallocated buffers [B, H, cap, D].

        A `DynamicLayer` (attention sees exactly the tokens written so far: `keys` / `values` are
        views of the filled part) that writes each new token in place instead of concatenating
        it onto the whole cache. `cap` is prompt width + max_new_tokens, so writes never overflow.
        """

        def __init__(self, buffers: KVBuffers, index: int, keys: Tensor, values: Tensor,
                     capacity: int) -> None:
            """`keys`/`values` [B, H, W, D]: the prefilled part (W tokens)."""
            self._buffers, self._index, self._which = buffers, index, 0
            shape = (keys.shape[0], keys.shape[1], capacity, keys.shape[3])
            self._k = buffers.get(("k", index, 0), shape, keys)
            self._v = buffers.get(("v", index, 0), shape, values)
            self.length = keys.shape[2]
            self._k[:, :, : self.length] = keys
            self._v[:, :, : self.length] = values
            self.is_initialized = True
            self.device = keys.device
            self._views()

        def _views(self) -> None:
            self.keys = self._k[:, :, : self.length]
            self.values = self._v[:, :, : self.length]

        def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
            pass  # built initialised

        def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
                   ) -> tuple[Tensor, Tensor]:
            end = self.length + key_states.shape[-2]
            if end > self._k.shape[2]:  # pragma: no cover - capacity covers max_new_tokens
                raise RuntimeError(f"lean sampler: KV cache overflow ({end} > {self._k.shape[2]})")
            self._k[:, :, self.length:end] = key_states
            self._v[:, :, self.length:end] = value_states
            self.length = end
            self._views()
            return self.keys, self.values

        def get_mask_sizes(self, query_length: int, *args: Any) -> tuple[int, int]:
            return self.length + query_length, 0

        def get_seq_length(self) -> int:
            return self.length

        def get_max_length(self) -> int:
            return -1

        def batch_select_indices(self, indices: Tensor) -> None:
            """Keep only the rows `indices` (ascending), copied into the other buffer."""
            other = 1 - self._which
            for kind in ("k", "v"):
                src = getattr(self, f"_{kind}")
                dst = self._buffers.get((kind, self._index, other),
                                        (len(indices), *src.shape[1:]), src)
                torch.index_select(src, 0, indices, out=dst)
                setattr(self, f"_{kind}", dst)
            self._which = other
            self._views()

    return PreallocatedLayer


def __getattr__(name: str) -> Any:
    if name == "PreallocatedLayer":
        return _preallocated_layer()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _forward_kwargs(model: Any) -> dict[str, str | None]:
    """Names the model's forward uses for the cache, positions and last-logits options."""
    params = inspect.signature(model.forward).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    cache = "cache" if "cache" in params else "past_key_values"
    keep = ("logits_to_keep" if "logits_to_keep" in params else
            "num_logits_to_keep" if "num_logits_to_keep" in params else None)
    pos = "position_ids" if "position_ids" in params or accepts_any else None
    return {"cache": cache, "keep": keep, "pos": pos}


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # older transformers: no config argument
        return DynamicCache()


def _plain(cache: Any) -> bool:
    """True when every layer of `cache` is a plain full-attention `DynamicLayer`."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - transformers < 4.54 has no layer classes
        return False
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _select(cache: Any, indices: Tensor) -> bool:
    """Keep only `indices` of the batch in `cache`; False when the cache cannot."""
    if hasattr(cache, "batch_select_indices"):
        try:
            cache.batch_select_indices(indices)
            return True
        except (AttributeError, NotImplementedError, TypeError):
            return False
    return False


def _sample(logits: Tensor, temperature: float, top_p: float, gen: torch.Generator) -> Tensor:
    """One token per row of `logits` [R, V]: argmax at temperature 0, else a draw."""
    if temperature <= 0:
        return logits.argmax(-1)
    scores = logits.float() / temperature
    if top_p < 1.0:  # nucleus: keep the smallest top set whose mass reaches top_p
        sorted_scores, order = scores.sort(-1, descending=False)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        drop_sorted = cum <= 1 - top_p
        drop_sorted[:, -1] = False
        scores = scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), -float("inf"))
    probs = scores.softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)


class LeanBackend:
    """The lean sampler (module docstring); same interface and `Rollouts` as `hf`."""

    name = "lean"

    def __init__(self) -> None:
        self._buffers = KVBuffers()

    def generate(self, policy: Policy, prompts: list[str], n: int, temperature: float,
                 top_p: float, max_new_tokens: int, seed: int) -> Rollouts:
        t0 = time.perf_counter()
        tok, model = policy.tokenizer, policy.model
        eos_id, pad_id = tok.eos_token_id, tok.pad_token_id
        encoded = [encode_prompt(policy, p) for p in prompts]
        if not encoded or n == 0:
            return Rollouts([], [], [], n)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                completions = self._decode(model, policy.device, encoded, n, temperature,
                                           top_p, max_new_tokens, seed, eos_id, pad_id)
        finally:
            model.train(was_training)
        texts = tok.batch_decode([c[:-1] if c and c[-1] == eos_id else c for c in completions],
                                 skip_special_tokens=True)
        prompt_ids = [ids for ids in encoded for _ in range(n)]
        return Rollouts(texts=texts, prompt_ids=prompt_ids, completion_ids=completions, n=n,
                        seconds=time.perf_counter() - t0)

    # ------------------------------------------------------------------ the loop
    def _prefill(self, model: Any, device: torch.device, encoded: list[list[int]], n: int,
                 capacity: int, pad_id: int, names: dict[str, str | None]
                 ) -> tuple[Tensor, Any, Tensor, Tensor]:
        """Run each distinct prompt once; return (last logits [B, V], cache, attention mask
        [B, width], last positions [B]) for the B = len(encoded) * n rows, prompt-major."""
        p, width = len(encoded), max(len(e) for e in encoded)
        ids = torch.full((p, width), pad_id, dtype=torch.long)
        mask = torch.zeros((p, width), dtype=torch.long)
        for i, e in enumerate(encoded):  # left padding, as generate does
            ids[i, width - len(e):] = torch.tensor(e, dtype=torch.long)
            mask[i, width - len(e):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
        kwargs: dict[str, Any] = {"use_cache": True}
        if names["keep"]:
            kwargs[names["keep"]] = 1

        def run(part: slice) -> tuple[Tensor, Any]:
            cache = _new_cache(model)
            extra = {names["pos"]: pos[part]} if names["pos"] else {}
            out = model(input_ids=ids[part], attention_mask=mask[part],
                        **{names["cache"]: cache}, **extra, **kwargs)
            return out.logits[:, -1].float(), cache

        rows = max(1, PREFILL_TOKENS // width)
        chunks = [slice(s, min(s + rows, p)) for s in range(0, p, rows)]
        first_logits, first = run(chunks[0])
        if not _plain(first):  # the model's own cache: one pass over every prompt
            logits, cache = (first_logits, first) if len(chunks) == 1 else run(slice(0, p))
            cache.batch_repeat_interleave(n)
            return (logits.repeat_interleave(n, dim=0), cache, mask.repeat_interleave(n, dim=0),
                    pos[:, -1].repeat_interleave(n, dim=0))
        parts = [(first_logits, first)] + [run(c) for c in chunks[1:]]
        layers = []
        for i in range(len(first.layers)):
            k = torch.cat([c.layers[i].keys for _, c in parts]).repeat_interleave(n, dim=0)
            v = torch.cat([c.layers[i].values for _, c in parts]).repeat_interleave(n, dim=0)
            layers.append(_preallocated_layer()(self._buffers, i, k, v, capacity))
        cache = first
        cache.layers = layers
        logits = torch.cat([lg for lg, _ in parts]).repeat_interleave(n, dim=0)
        return (logits, cache, mask.repeat_interleave(n, dim=0),
                pos[:, -1].repeat_interleave(n, dim=0))

    def _decode(self, model: Any, device: torch.device, encoded: list[list[int]], n: int,
                temperature: float, top_p: float, max_new_tokens: int, seed: int,
                eos_id: int, pad_id: int) -> list[list[int]]:
        """Completion ids per row (prompt-major), up to and including the first eos."""
        names = _forward_kwargs(model)
        width = max(len(e) for e in encoded)
        logits, cache, mask, pos = self._prefill(model, device, encoded, n,
                                                 width + max_new_tokens, pad_id, names)
        total = logits.shape[0]
        gen = torch.Generator(device=device).manual_seed(seed)
        out = torch.full((total, max_new_tokens), pad_id, dtype=torch.long)
        lengths = torch.zeros(total, dtype=torch.long)
        rows = torch.arange(total)  # the original row of each batch row
        alive = torch.ones(total, dtype=torch.bool)
        # the attention mask gains one column per token: preallocate them all
        mask = torch.cat([mask, mask.new_ones((total, max_new_tokens))], dim=1)
        kwargs: dict[str, Any] = {"use_cache": True}
        if names["keep"]:
            kwargs[names["keep"]] = 1
        for t in range(max_new_tokens):
            nxt = _sample(logits, temperature, top_p, gen)
            nxt_cpu = nxt.cpu()
            live_rows = rows[alive]
            out[live_rows, t] = nxt_cpu[alive]
            lengths[live_rows] = t + 1
            alive &= nxt_cpu != eos_id
            n_alive = int(alive.sum())
            if n_alive == 0 or t + 1 == max_new_tokens:
                break
            # rows that have finished stay in the batch until enough of them have (a
            # compaction copies the cache); what they generate meanwhile is never read
            if len(rows) - n_alive >= COMPACT_SHARE * len(rows):
                keep = alive.nonzero().squeeze(1)
                keep_dev = keep.to(device)
                if _select(cache, keep_dev):
                    rows, alive = rows[keep], alive[keep]
                    nxt, mask, pos = nxt[keep_dev], mask[keep_dev], pos[keep_dev]
            pos = pos + 1
            extra = {names["pos"]: pos[:, None]} if names["pos"] else {}
            step = model(input_ids=nxt[:, None], attention_mask=mask[:, : width + t + 1],
                         **{names["cache"]: cache}, **extra, **kwargs)
            logits = step.logits[:, -1]
        return [out[i, : int(lengths[i])].tolist() for i in range(total)]


@ROLLOUT_BACKENDS.register(
    "lean", "the harness's own decoding loop over the model's forward: one prefill per "
    "distinct prompt, a preallocated KV cache, finished rows leave the batch.")
def _lean(policy: Policy | None, warn: Warn) -> LeanBackend:
    return LeanBackend()
