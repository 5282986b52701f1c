"""Rollout backends: `vllm` falls back to `hf` (one warning line, identical results) where
vLLM or a GPU is missing; the vLLM glue against a stand-in engine (no real vLLM here)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.policy import HFGenerateBackend, load_policy, make_backend
from harness.policy import vllm_backend as vb
from harness.runner.trace import read_trace, without_timing
from harness.spec.schema import ModelSpec, TinyRecipe

RECIPE = TinyRecipe(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                    warm_steps=3, warm_batch=8, warm_tasks=64)
RECIPE_YAML = ("{hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 2, "
               "warm_steps: 3, warm_batch: 8, warm_tasks: 64}")
PROMPTS = ["# x+3\ndef f(x):\n", "# read x; -x\nx = int(input())\n"]


@pytest.fixture(scope="module")
def policy():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_policy(ModelSpec(id="tiny", tiny=RECIPE))
    torch.set_num_threads(n)


def test_hf_is_the_default_backend():
    assert isinstance(make_backend("hf"), HFGenerateBackend)


@pytest.mark.skipif(vb.importlib.util.find_spec("vllm") is not None, reason="vLLM installed")
def test_vllm_without_vllm_falls_back_to_hf_with_one_warning(policy):
    lines: list[str] = []
    backend = make_backend("vllm", policy, warn=lines.append)
    assert isinstance(backend, HFGenerateBackend)
    assert len(lines) == 1 and lines[0].startswith("warning: rollout backend vllm falls back "
                                                   "to hf") and "not installed" in lines[0]


def test_vllm_unavailable_says_why(monkeypatch: pytest.MonkeyPatch, policy):
    monkeypatch.setattr(vb.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert vb.vllm_unavailable(policy) == "no CUDA GPU is visible"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "the policy runs on cpu" in (vb.vllm_unavailable(policy) or "")


def test_unknown_backend_is_a_user_error():
    from harness.errors import UserError

    with pytest.raises(UserError, match="hf, lean or vllm"):
        make_backend("sglang")


def test_spec_accepts_vllm_and_rejects_others(tmp_path: Path):
    from harness.errors import SpecError
    from harness.spec import load_spec

    base = "name: b\nversion: 1\nmodels: [tiny]\n"
    (tmp_path / "ok.yaml").write_text(base + "rollout: {backend: vllm}\n")
    spec, _ = load_spec(str(tmp_path / "ok.yaml"))
    assert spec.rollout.backend == "vllm"
    (tmp_path / "bad.yaml").write_text(base + "rollout: {backend: sglang}\n")
    with pytest.raises(SpecError, match=r"rollout\.backend"):
        load_spec(str(tmp_path / "bad.yaml"))


@pytest.mark.slow
@pytest.mark.skipif(vb.importlib.util.find_spec("vllm") is not None and
                    torch.cuda.is_available(), reason="vLLM and a GPU: no fallback")
def test_a_vllm_cell_without_vllm_runs_as_hf_and_logs_the_fallback(
        tmp_path: Path, capfd: pytest.CaptureFixture[str], policy):
    """A cell asking for vllm where it cannot run gives the hf cell's trace (timing aside)."""
    from grader_sandbox import GraderPool
    from harness.runner.cell import CellConfig, CellRunner
    from harness.spec import expand_cells, load_spec

    body = (f"version: 1\nmodels: [{{id: tiny, tiny: {RECIPE_YAML}}}]\nseeds: [0]\n"
            "chain: {campaigns: 1, steps: 2}\n"
            "tasks: {source: synthetic, train: 4, eval: 4, test: 4}\n"
            "eval: {samples_per_task: 2, temperature: 1.0, max_new_tokens: 16}\n"
            "optim: {lr: 1.0e-3}\ngrader: {timeout_s: 2, memory_mb: 256, workers: 1}\n")
    traces, errs = {}, {}
    with GraderPool(workers=1) as pool:
        for backend in ("hf", "vllm"):
            path = tmp_path / f"{backend}.yaml"
            path.write_text(f"name: b-{backend}\n" + body + "rollout: {group_size: 2, "
                            "prompts_per_step: 2, temperature: 1.0, max_new_tokens: 16, "
                            f"backend: {backend}}}\n")
            spec, _ = load_spec(str(path))
            (cell,) = expand_cells(spec)
            cell_dir = tmp_path / backend
            cell_dir.mkdir()
            capfd.readouterr()
            CellRunner(CellConfig.from_dict(cell.cell_id, cell.config), cell_dir,
                       grader=pool).run()
            errs[backend] = capfd.readouterr().err
            traces[backend] = [without_timing(r) for r in read_trace(cell_dir / "trace.jsonl")]
    assert "warning" not in errs["hf"]
    warnings = [ln for ln in errs["vllm"].splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "falls back to hf" in warnings[0]
    assert traces["vllm"] == traces["hf"]
    assert sum(r["type"] == "step" for r in traces["hf"]) == 3


# --------------------------------------------------------------------------- stand-in vLLM
class _Model:
    def __init__(self) -> None:
        self.loads: list[list[str]] = []

    def load_weights(self, weights: Any) -> set[str]:
        names = [name for name, t in weights]
        self.loads.append(names)
        return set(names)


class _LLM:
    """What the backend touches of vllm.LLM: generate, reset_prefix_cache, and the model of
    the in-process driver worker (external launcher)."""

    last: _LLM | None = None

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.model = _Model()
        runner = types.SimpleNamespace(model=self.model)
        worker = types.SimpleNamespace(model_runner=runner)
        self.llm_engine = types.SimpleNamespace(
            model_executor=types.SimpleNamespace(driver_worker=worker))
        self.resets = 0
        self.requests: list[tuple[list[int], Any]] = []
        _LLM.last = self

    def reset_prefix_cache(self) -> None:
        self.resets += 1

    def generate(self, prompts: list[dict], sampling_params: list[Any], use_tqdm: bool) -> list:
        out = []
        for p, sp in zip(prompts, sampling_params, strict=True):
            self.requests.append((p["prompt_token_ids"], sp))
            eos = sp.stop_token_ids[0]
            samples = []
            for i in reversed(range(sp.n)):  # out of order: the backend sorts by index
                body = [5 + i, 6, 7][: 1 + i % 3]
                if i % 2 == 0:  # stopped on eos, eos kept in token_ids
                    c = dict(token_ids=[*body, eos, 9], finish_reason="stop", stop_reason=eos)
                elif i % 4 == 1:  # stopped on eos, eos left out of token_ids
                    c = dict(token_ids=body, finish_reason="stop", stop_reason=eos)
                else:  # hit max_tokens
                    c = dict(token_ids=body, finish_reason="length", stop_reason=None)
                samples.append(types.SimpleNamespace(index=i, **c))
            out.append(types.SimpleNamespace(outputs=samples))
        return out


class _SamplingParams:
    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch):
    mod = types.ModuleType("vllm")
    mod.LLM = _LLM
    mod.SamplingParams = _SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    return mod


def test_vllm_glue_against_a_stand_in_engine(fake_vllm, policy):
    backend = vb.VLLMBackend(gpu_memory_utilization=0.25)
    eos = policy.tokenizer.eos_token_id
    ro = backend.generate(policy, PROMPTS, n=4, temperature=1.0, top_p=0.9, max_new_tokens=8,
                          seed=7)
    llm = _LLM.last
    assert llm is not None
    kw = llm.kwargs
    assert kw["distributed_executor_backend"] == "external_launcher"
    assert kw["skip_tokenizer_init"] is True and kw["gpu_memory_utilization"] == 0.25
    assert kw["model"] == policy.path and kw["dtype"] == "float32"
    # the policy's weights were pushed before sampling, by their HF names, then the cache reset
    names = [n for n, _ in policy.model.named_parameters()]
    assert llm.model.loads == [names] and llm.resets == 1 and backend.syncs == 1
    # one request per prompt, n samples, its own seed, stopping on the policy's eos
    assert [len(ids) for ids, _ in llm.requests] == [len(ids) for ids in ro.prompt_ids[::4]]
    sps = [sp for _, sp in llm.requests]
    assert [sp.n for sp in sps] == [4, 4] and len({sp.seed for sp in sps}) == 2
    assert all(sp.stop_token_ids == [eos] and sp.top_p == 0.9 for sp in sps)
    # prompt-major, sorted by sample index, ids up to and including the first eos
    assert len(ro) == 8 and ro.n == 4
    assert ro.completion_ids[:4] == [[5, eos], [6, 6, eos], [7, 6, 7, eos], [8]]
    assert ro.texts[0] == policy.tokenizer.decode([5], skip_special_tokens=True)
    batch = ro.to_batch(policy.tokenizer.pad_token_id)
    assert int(batch["completion_mask"].sum()) == ro.generated_tokens
    # every call syncs again (after an update, a rollback, a checkpoint load)
    backend.generate(policy, PROMPTS, n=2, temperature=0.0, top_p=0.5, max_new_tokens=8,
                     seed=7)
    assert len(llm.model.loads) == 2 and llm.resets == 2
    greedy = [sp for _, sp in llm.requests[2:]]  # n single-sample requests per prompt
    assert [sp.n for sp in greedy] == [1, 1, 1, 1]
    assert all(sp.temperature == 0.0 and sp.top_p == 1.0 for sp in greedy)


def test_vllm_gpu_memory_setting(monkeypatch: pytest.MonkeyPatch):
    from harness.errors import UserError

    monkeypatch.delenv(vb.GPU_MEMORY_ENV, raising=False)
    assert vb.VLLMBackend().gpu_memory_utilization == vb.DEFAULT_GPU_MEMORY
    monkeypatch.setenv(vb.GPU_MEMORY_ENV, "0.5")
    assert vb.VLLMBackend().gpu_memory_utilization == 0.5
    monkeypatch.setenv(vb.GPU_MEMORY_ENV, "2")
    with pytest.raises(UserError, match=vb.GPU_MEMORY_ENV):
        vb.VLLMBackend()
