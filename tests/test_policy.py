"""The tiny policy (tokenizer, cached deterministic build), loading, and rollouts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from harness.errors import UserError
from harness.policy import (
    HFGenerateBackend,
    Rollouts,
    ensure_tiny,
    load_policy,
    recipe_hash,
)
from harness.policy import tiny as tiny_mod
from harness.policy.loading import _ensure_special_tokens
from harness.policy.tokenizer import build_char_tokenizer
from harness.spec.schema import ModelSpec, TinyRecipe

# A recipe small enough to build in about a second.
RECIPE = TinyRecipe(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                    warm_steps=3, warm_batch=8, warm_tasks=64)
PROMPTS = ["# x+3\ndef f(x):\n", "# read x; -x\nx = int(input())\n"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: extra threads only add contention on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("harness-cache")


@pytest.fixture(autouse=True)
def _harness_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(cache))


@pytest.fixture(scope="module")
def policy(cache: Path):
    return load_policy(ModelSpec(id="tiny", tiny=RECIPE), cache_dir=cache)


def test_char_tokenizer_round_trips_through_auto_tokenizer(tmp_path: Path):
    from transformers import AutoTokenizer

    tok = build_char_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "# x+3, x*x\ndef f(x):\n    x += 3\n    return x\n"
    ids = loaded(text)["input_ids"]
    assert ids == tok(text)["input_ids"]
    assert ids[0] == loaded.bos_token_id and len(ids) == len(text) + 1
    assert loaded.decode(ids, skip_special_tokens=True) == text
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token) == ("<pad>", "<bos>", "<eos>")


def test_tiny_build_lands_in_the_cache_under_the_recipe_hash(cache: Path):
    path = ensure_tiny(RECIPE)
    assert path == cache / "tiny" / recipe_hash(RECIPE)
    assert {"config.json", "recipe.json", "tokenizer.json"} <= {p.name for p in path.iterdir()}
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]


def test_tiny_second_call_reuses_the_cache(monkeypatch: pytest.MonkeyPatch):
    ensure_tiny(RECIPE)

    def no_build(*_a, **_k):
        raise AssertionError("rebuilt a cached tiny policy")

    monkeypatch.setattr(tiny_mod, "_build", no_build)
    assert ensure_tiny(RECIPE).is_dir()


def test_tiny_build_is_deterministic(tmp_path: Path, cache: Path):
    a = ensure_tiny(RECIPE)
    b = ensure_tiny(RECIPE, cache_dir=tmp_path)
    assert a != b
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_concurrent_builds_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import threading

    calls: list[Path] = []
    real_build = tiny_mod._build

    def counting_build(recipe, out, progress):
        calls.append(out)
        real_build(recipe, out, progress)

    monkeypatch.setattr(tiny_mod, "_build", counting_build)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_tiny(RECIPE, tmp_path)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 2 and results[0] == results[1]


def test_recipe_hash_depends_on_the_recipe():
    assert recipe_hash(RECIPE) != recipe_hash(RECIPE.model_copy(update={"warm_seed": 1}))
    assert recipe_hash(RECIPE) == recipe_hash(TinyRecipe(**RECIPE.model_dump()))


def test_tiny_loads_with_auto_classes():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ensure_tiny(RECIPE))
    assert model.config.tie_word_embeddings and model.config.model_type == "qwen2"


def test_load_policy_tiny(policy):
    assert policy.source == f"tiny:{recipe_hash(RECIPE)}"
    assert policy.device.type in ("cpu", "cuda")
    assert policy.format_prompt("x") == "x"  # no chat template


def test_load_policy_tiny_tokenizer_keeps_whitespace(policy):
    """Regression: AutoTokenizer maps the cached tiny directory (model_type qwen2) to a
    Qwen2Tokenizer that drops spaces and newlines."""
    text = "# x+3, x*x\ndef f(x):\n"
    assert policy.tokenizer(text)["input_ids"] == build_char_tokenizer()(text)["input_ids"]


def test_a_tiny_build_given_as_a_local_directory_loads_as_itself(tmp_path: Path):
    """A copy of a tiny build passed as a path (what ci/gpu-smoke.sh does) keeps the character
    tokenizer (AutoTokenizer would give Qwen2Tokenizer, which drops whitespace) and so samples
    exactly what `id: tiny` samples."""
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(ensure_tiny(RECIPE), copy)
    local = load_policy(ModelSpec(id=str(copy)))
    tiny = load_policy(ModelSpec(id="tiny", tiny=RECIPE))
    text = "def f(x):\n    return x + 1\n"
    assert local.tokenizer(text)["input_ids"] == tiny.tokenizer(text)["input_ids"]
    assert local.source == f"local:{copy.resolve()}"
    backend = HFGenerateBackend()
    a = backend.generate(local, PROMPTS, n=2, temperature=1.0, top_p=1.0, max_new_tokens=8,
                         seed=3)
    b = backend.generate(tiny, PROMPTS, n=2, temperature=1.0, top_p=1.0, max_new_tokens=8,
                         seed=3)
    assert a.texts == b.texts


def test_generate_is_reproducible_from_the_seed(policy):
    gen = HFGenerateBackend()
    a = gen.generate(policy, PROMPTS, 3, 1.0, 1.0, 12, seed=7)
    b = gen.generate(policy, PROMPTS, 3, 1.0, 1.0, 12, seed=7)
    c = gen.generate(policy, PROMPTS, 3, 1.0, 1.0, 12, seed=8)
    assert len(a) == 6 and a.completion_ids == b.completion_ids and a.texts == b.texts
    assert a.completion_ids != c.completion_ids


def test_generate_leaves_the_global_rng_alone(policy):
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    HFGenerateBackend().generate(policy, PROMPTS, 2, 1.0, 1.0, 4, seed=3)
    assert torch.equal(torch.rand(1), expected)


def test_greedy_samples_of_a_prompt_are_identical(policy):
    r = HFGenerateBackend().generate(policy, PROMPTS, 2, 0.0, 1.0, 10, seed=0)
    assert r.completion_ids[0] == r.completion_ids[1]
    assert r.prompt_ids[0] == r.prompt_ids[1] != r.prompt_ids[2]  # prompt-major order
    assert all(len(c) <= 10 for c in r.completion_ids) and r.generated_tokens > 0


def test_completions_stop_at_the_first_eos(policy):
    r = HFGenerateBackend().generate(policy, PROMPTS, 4, 1.0, 1.0, 30, seed=1)
    eos = policy.tokenizer.eos_token_id
    for ids, text in zip(r.completion_ids, r.texts, strict=True):
        assert eos not in ids[:-1]
        assert text == policy.tokenizer.decode(ids, skip_special_tokens=True)


def test_to_batch_masks():
    r = Rollouts(texts=["a", "bc"], prompt_ids=[[1, 5, 6], [1, 7]],
                 completion_ids=[[8, 2], [9, 10, 11]], n=1)
    b = r.to_batch(pad_id=0)
    assert b["input_ids"].tolist() == [[1, 5, 6, 8, 2], [1, 7, 9, 10, 11]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert b["completion_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    r = Rollouts(texts=["", "x"], prompt_ids=[[1, 5], [1]], completion_ids=[[], [4]], n=2)
    b = r.to_batch(pad_id=0)
    assert b["input_ids"].tolist() == [[1, 5], [1, 4]]
    assert b["attention_mask"].tolist() == [[1, 1], [1, 1]]
    assert b["completion_mask"].tolist() == [[0, 0], [0, 1]]
    assert r.prompt_index(1) == 0 and all(v.dtype == torch.long for v in b.values())


def test_chat_template_is_applied_when_asked(policy):
    from harness.policy import Policy

    tok = build_char_tokenizer()
    tok.chat_template = "{% for m in messages %}U:{{ m['content'] }}\n{% endfor %}A:"
    p = Policy(model=policy.model, tokenizer=tok, device=policy.device, dtype=policy.dtype,
               source="test", use_chat_template=True)
    assert p.format_prompt("hi") == "U:hi\nA:"


def test_missing_pad_token_falls_back_to_eos_and_missing_eos_is_a_user_error():
    tok = build_char_tokenizer()
    tok.pad_token = None
    _ensure_special_tokens(tok, "m")
    assert tok.pad_token == "<eos>"
    tok.eos_token = None
    with pytest.raises(UserError, match=r"'m'.*no eos token"):
        _ensure_special_tokens(tok, "m")


def test_missing_local_directory_is_a_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        load_policy(ModelSpec(id=str(tmp_path / "nope")))


def test_unknown_hub_id_offline_is_a_user_error(monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"cannot be loaded offline.*local directory"):
        load_policy(ModelSpec(id="harness-test/no-such-model"))


def test_tiny_build_writes_save_pretrained_files_without_importing_deepspeed(tmp_path: Path):
    """The build writes what `save_pretrained` would, byte for byte, without importing
    DeepSpeed (save_pretrained does, through accelerate, and DeepSpeed prints an accelerator
    warning into every CPU run that builds the policy)."""
    import subprocess
    import sys

    code = ("import sys, json; from harness.policy.tiny import ensure_tiny; "
            "from harness.spec.schema import TinyRecipe; "
            f"p = ensure_tiny(TinyRecipe(**json.loads({RECIPE.model_dump_json()!r}))); "
            "print(p); print('deepspeed' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "HARNESS_CACHE": str(tmp_path / "c"),
                                         "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    built, imported = r.stdout.split()
    assert imported == "False"
    assert "real_accelerator" not in r.stdout + r.stderr
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(built)
    model.generation_config = type(model.generation_config).from_pretrained(built)
    ref = tmp_path / "ref"
    model.save_pretrained(ref)
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        assert (Path(built) / name).read_bytes() == (ref / name).read_bytes(), name
