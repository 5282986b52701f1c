"""The lean sampler (`rollout.backend: lean`) against transformers' `generate`.

Under greedy decoding the two must produce the same tokens, on the built-in tiny policy (its
default recipe: completions of different lengths that end at eos, so finished rows leave the
batch) and on small random models of other architectures: GPT-2 (absolute positions; plain
full-attention cache), and a Qwen2 with sliding-window layers (the model's own cache, the
generic path). Sampling is reproducible for a seed.
"""

from __future__ import annotations

import pytest
import torch

from harness.policy import HFGenerateBackend, Policy, load_policy, make_backend
from harness.policy.lean import LeanBackend, PreallocatedLayer
from harness.spec.schema import ModelSpec, TinyRecipe

RECIPE = TinyRecipe(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                    warm_steps=30, warm_batch=16, warm_tasks=256)
PROMPTS = ["# x+3\ndef f(x):\n", "# read x; -x\nx = int(input())\n",
           "# x*7, x%3, abs(x)\ndef f(x):\n", "# x-1\ndef f(x):\n"]


@pytest.fixture(scope="module")
def tiny() -> Policy:
    """A small, barely trained tiny policy (fast to build)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_policy(ModelSpec(id="tiny", tiny=RECIPE))
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def default_tiny() -> Policy:
    """The default tiny policy (built once per cache; the tiny-smoke runs build it too)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_policy(ModelSpec(id="tiny"))
    torch.set_num_threads(n)


def _synthetic_prompts(k: int) -> list[str]:
    from harness.tasks.synthetic import split_tasks

    return [t.prompt for t in split_tasks("eval", k, 0)]


def _random_policy(config, tiny: Policy) -> Policy:
    """A randomly initialised model of `config` with the tiny policy's tokenizer."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return Policy(model=model, tokenizer=tiny.tokenizer, device=torch.device("cpu"),
                  dtype=torch.float32, source="test")


def _gpt2(tiny: Policy) -> Policy:
    from transformers import GPT2Config

    tok = tiny.tokenizer
    return _random_policy(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32,
                                     n_layer=2, n_head=2, bos_token_id=tok.bos_token_id,
                                     eos_token_id=tok.eos_token_id,
                                     pad_token_id=tok.pad_token_id), tiny)


def _qwen2_sliding(tiny: Policy) -> Policy:
    from transformers import Qwen2Config

    tok = tiny.tokenizer
    return _random_policy(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        use_sliding_window=True, sliding_window=8, max_window_layers=1,
        layer_types=["full_attention", "sliding_attention"], bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id), tiny)


@pytest.mark.parametrize("which", ["gpt2", "qwen2_sliding"])
def test_greedy_equals_generate_on_other_architectures(tiny: Policy, which: str) -> None:
    policy = {"gpt2": _gpt2, "qwen2_sliding": _qwen2_sliding}[which](tiny)
    ref = HFGenerateBackend().generate(policy, PROMPTS, 2, 0.0, 1.0, 40, seed=0)
    got = LeanBackend().generate(policy, PROMPTS, 2, 0.0, 1.0, 40, seed=0)
    assert got.completion_ids == ref.completion_ids
    assert got.texts == ref.texts
    assert got.prompt_ids == ref.prompt_ids


@pytest.mark.slow
def test_greedy_equals_generate_on_the_tiny_policy(default_tiny: Policy,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.policy.lean as lean

    prompts = _synthetic_prompts(48)
    ref = HFGenerateBackend().generate(default_tiny, prompts, 2, 0.0, 1.0, 48, seed=0)
    for share in (0.25, 2.0):  # with and without compaction of finished rows
        monkeypatch.setattr(lean, "COMPACT_SHARE", share)
        monkeypatch.setattr(lean, "PREFILL_TOKENS", 512)  # several prefill chunks
        got = LeanBackend().generate(default_tiny, prompts, 2, 0.0, 1.0, 48, seed=0)
        assert got.completion_ids == ref.completion_ids
        assert got.texts == ref.texts
    lengths = {len(c) for c in ref.completion_ids}
    eos = default_tiny.tokenizer.eos_token_id
    assert len(lengths) > 3 and sum(c[-1] == eos for c in ref.completion_ids) > 48


def test_the_plain_path_uses_the_preallocated_cache(tiny: Policy,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []
    orig = PreallocatedLayer.__init__

    def spy(self, *args, **kwargs):
        made.append(1)
        orig(self, *args, **kwargs)

    monkeypatch.setattr(PreallocatedLayer, "__init__", spy)
    LeanBackend().generate(tiny, PROMPTS, 2, 1.0, 1.0, 20, seed=0)
    assert len(made) == RECIPE.num_layers
    made.clear()
    LeanBackend().generate(_qwen2_sliding(tiny), PROMPTS, 2, 1.0, 1.0, 20, seed=0)
    assert made == []  # a sliding-window layer: the model's own cache


def test_sampling_is_reproducible_for_a_seed(tiny: Policy) -> None:
    lean = LeanBackend()
    a = lean.generate(tiny, PROMPTS, 8, 1.0, 1.0, 40, seed=7)
    b = lean.generate(tiny, PROMPTS, 8, 1.0, 1.0, 40, seed=7)
    c = LeanBackend().generate(tiny, PROMPTS, 8, 1.0, 1.0, 40, seed=8)
    assert a.completion_ids == b.completion_ids  # reused buffers change nothing
    assert a.completion_ids != c.completion_ids
    assert len(a) == 4 * 8 and a.n == 8
    # prompt-major: sample i belongs to prompt i // n
    assert all(a.prompt_ids[i] == a.prompt_ids[(i // 8) * 8] for i in range(len(a)))


def test_a_tiny_top_p_is_greedy(tiny: Policy) -> None:
    greedy = LeanBackend().generate(tiny, PROMPTS, 2, 0.0, 1.0, 40, seed=0)
    nucleus = LeanBackend().generate(tiny, PROMPTS, 2, 1.0, 1e-6, 40, seed=3)
    assert nucleus.completion_ids == greedy.completion_ids


def test_completions_stop_at_eos_or_the_cap(tiny: Policy) -> None:
    eos = tiny.tokenizer.eos_token_id
    r = LeanBackend().generate(tiny, PROMPTS, 4, 1.5, 1.0, 12, seed=1)
    for ids in r.completion_ids:
        assert 1 <= len(ids) <= 12
        assert eos not in ids[:-1]  # nothing after the first eos
        assert ids[-1] == eos or len(ids) == 12


def test_make_backend_knows_lean() -> None:
    assert isinstance(make_backend("lean"), LeanBackend)
