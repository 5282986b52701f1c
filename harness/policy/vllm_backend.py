"""The `vllm` rollout backend: sampling with a vLLM engine colocated in the cell's process.

**Unverified against a real vLLM in this repository.** vLLM needs a CUDA GPU and its wheel is
too large to carry to the GPU machine this project is lent, so only the fallback path (no
vLLM or no GPU: the `hf` backend, with one warning line) and this module's glue (against a
stand-in engine, `tests/test_rollout_backends.py`) are tested. The code follows vLLM's
documented offline API (`LLM`, `SamplingParams`, `LLM.generate`, `LLM.reset_prefix_cache`)
and the colocated weight update of TRL's GRPOTrainer (`vllm_mode="colocate"`, TRL 1.16 with
vLLM 0.22-0.31, V1 engine):

- the engine is built with `distributed_executor_backend="external_launcher"`, which keeps
  vLLM's engine and its model inside this process (no engine-core subprocess), on the same
  GPU as the policy being trained, with `gpu_memory_utilization` of that GPU
  (`$HARNESS_VLLM_GPU_MEMORY`, default 0.3) for its weights and KV cache;
- before every `generate` the policy's current weights are pushed into the engine:
  `llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(
  model.named_parameters())` (vLLM's model classes map Hugging Face parameter names, e.g.
  q/k/v projections into their fused `qkv_proj`), then `llm.reset_prefix_cache()` so no KV
  cache computed with the old weights is reused. Every update, rollback and checkpoint load
  of the runner is therefore seen by the next rollout, whatever changed the weights;
- prompts go in as token ids (`encode_prompt`, as the `hf` backend encodes them), the
  engine's own tokenizer is never loaded (`skip_tokenizer_init`: the tiny policy's character
  tokenizer is not one `AutoTokenizer` rebuilds), generation stops at the policy's eos token
  (`stop_token_ids`), and completions are decoded with the policy's tokenizer, so the
  `Rollouts` contract (ids up to and including the first eos) is the `hf` backend's;
- each prompt gets its own sampling seed derived from the call's seed (reproducible; vLLM
  seeds per request), so a vllm cell is reproducible, but its samples are not the `hf`
  backend's (another sampler): a spec's backend is part of its cells' identity.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from harness.errors import UserError
from harness.lazy import lazy_module
from harness.policy.backends import ROLLOUT_BACKENDS, Warn
from harness.policy.rollout import HFGenerateBackend, RolloutBackend, Rollouts, encode_prompt

if TYPE_CHECKING:
    from harness.policy.loading import Policy

torch = lazy_module("torch")  # imported on first use: reading a spec needs none

GPU_MEMORY_ENV = "HARNESS_VLLM_GPU_MEMORY"
DEFAULT_GPU_MEMORY = 0.3


def vllm_unavailable(policy: Policy | None = None) -> str | None:
    """Why the vLLM backend cannot run here, or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'rl-collapse-harness[gpu]')"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if policy is not None and policy.device.type != "cuda":
        return f"the policy runs on {policy.device}, and vLLM samples on a GPU"
    return None


def _prompt_seed(seed: int, i: int) -> int:
    digest = hashlib.sha256(f"{seed}:vllm:{i}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # vLLM takes a 32-bit seed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gpu_memory() -> float:
    raw = os.environ.get(GPU_MEMORY_ENV, "").strip()
    if not raw:
        return DEFAULT_GPU_MEMORY
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise UserError(f"{GPU_MEMORY_ENV}={raw!r} must be a fraction of the GPU's memory "
                        "between 0 and 1 (e.g. 0.3)")
    return value


def _completion(token_ids: list[int], eos_id: int, finish_reason: str | None,
                stop_reason: Any) -> list[int]:
    """Generated ids up to and including the first eos (the `hf` backend's contract)."""
    if eos_id in token_ids:
        return token_ids[: token_ids.index(eos_id) + 1]
    if finish_reason == "stop" and stop_reason == eos_id:  # stopped on eos, not reported
        return [*token_ids, eos_id]
    return token_ids


class VLLMBackend:
    """n samples per prompt from a colocated vLLM engine, synced to the policy each call."""

    name = "vllm"

    def __init__(self, gpu_memory_utilization: float | None = None) -> None:
        self.gpu_memory_utilization = (gpu_memory_utilization if gpu_memory_utilization
                                       is not None else _gpu_memory())
        self.llm: Any = None
        self.syncs = 0
        self.sync_seconds = 0.0

    def _engine(self, policy: Policy) -> Any:
        if self.llm is not None:
            return self.llm
        from vllm import LLM

        # What TRL's colocate mode sets: a one-process "distributed" group for the external
        # launcher (kept when a launcher such as accelerate already set them).
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                           ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        self.llm = LLM(
            model=policy.path or str(policy.model.name_or_path),
            revision=policy.revision,
            dtype=str(policy.dtype).removeprefix("torch."),
            seed=0,
            gpu_memory_utilization=self.gpu_memory_utilization,
            skip_tokenizer_init=True,
            distributed_executor_backend="external_launcher",
        )
        return self.llm

    def sync_weights(self, policy: Policy) -> None:
        """Load the policy's current weights into the engine (colocated: a copy on the GPU)."""
        t0 = time.perf_counter()
        llm = self._engine(policy)
        target = llm.llm_engine.model_executor.driver_worker.model_runner.model
        with torch.no_grad():
            target.load_weights((name, p.detach()) for name, p in
                                policy.model.named_parameters())
        llm.reset_prefix_cache()
        self.syncs += 1
        self.sync_seconds += time.perf_counter() - t0

    def generate(self, policy: Policy, prompts: list[str], n: int, temperature: float,
                 top_p: float, max_new_tokens: int, seed: int) -> Rollouts:
        from vllm import SamplingParams

        t0 = time.perf_counter()
        encoded = [encode_prompt(policy, p) for p in prompts]
        if not encoded:
            return Rollouts([], [], [], n)
        self.sync_weights(policy)
        eos_id = policy.tokenizer.eos_token_id
        # One request per prompt with n samples; greedy decoding (temperature 0) asks n
        # single-sample requests instead (older vLLM refuses n > 1 without sampling).
        greedy = temperature <= 0
        requests: list[list[int]] = []
        params = []
        for i, ids in enumerate(encoded):
            for j in range(n if greedy else 1):
                requests.append(ids)
                params.append(SamplingParams(
                    n=1 if greedy else n, temperature=0.0 if greedy else temperature,
                    top_p=1.0 if greedy else top_p, max_tokens=max_new_tokens,
                    seed=_prompt_seed(seed, i * n + j), stop_token_ids=[eos_id],
                    detokenize=False))
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in requests],
                                    sampling_params=params, use_tqdm=False)
        prompt_ids: list[list[int]] = []
        completion_ids: list[list[int]] = []
        for ids, out in zip(requests, outputs, strict=True):  # same order as the requests
            for c in sorted(out.outputs, key=lambda c: c.index):
                prompt_ids.append(ids)
                completion_ids.append(_completion(list(c.token_ids), eos_id, c.finish_reason,
                                                  getattr(c, "stop_reason", None)))
        if len(completion_ids) != len(encoded) * n:
            raise RuntimeError(f"vLLM returned {len(completion_ids)} samples for "
                               f"{len(encoded)} prompts x {n}")
        texts = policy.tokenizer.batch_decode(
            [c[:-1] if c and c[-1] == eos_id else c for c in completion_ids],
            skip_special_tokens=True)
        return Rollouts(texts=texts, prompt_ids=prompt_ids, completion_ids=completion_ids,
                        n=n, seconds=time.perf_counter() - t0)


@ROLLOUT_BACKENDS.register(
    "vllm", "a vLLM engine colocated with the policy on its GPU, weights synced before every "
    "rollout; needs the `gpu` extra and a CUDA GPU, else falls back to hf with a warning in "
    "the cell log (not yet verified against a real vLLM).")
def _vllm(policy: Policy | None, warn: Warn) -> RolloutBackend:
    """`vllm` when vLLM is installed and the policy is on a CUDA GPU; otherwise `hf`, said in
    one `warning:` line; the rollouts are then exactly those of a cell with backend hf."""
    why = vllm_unavailable(policy)
    if why is None:
        return VLLMBackend()
    warn(f"warning: rollout backend vllm falls back to hf (transformers generate): {why}")
    return HFGenerateBackend()
