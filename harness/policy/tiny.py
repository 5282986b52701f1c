"""The built-in tiny policy: a ~0.2M-parameter Qwen2 model over characters, warm-started by
supervised training on solutions of the synthetic task family, half of them with their last
line left out (`TinyRecipe.warm_defect`: a habit that fails the tests, which RL unlearns in
the first steps of a campaign).

Built on first use and cached; later uses load the cached copy. Cache layout:

    <cache>/tiny/<recipe_hash>/      config.json, model.safetensors, generation_config.json,
                                     tokenizer.json, tokenizer_config.json, recipe.json

where <cache> is `$HARNESS_CACHE` if set, else `~/.cache/harness`, and <recipe_hash> is the
first 16 hex digits of sha256 over the canonical JSON of {recipe, synthetic family version,
TINY_CODE_VERSION}. The directory loads with `AutoModelForCausalLM` / `AutoTokenizer` like
any hub model. A build writes to a temporary sibling directory and renames it into place
under a file lock, so concurrent builders neither clash nor see a half-written model.

Determinism: weights depend only on the recipe (seeded init and data order; the build runs on
exactly BUILD_THREADS intra-op threads whatever the machine's cores, so the float summation
order does not depend on the machine).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.lazy import lazy_module
from harness.spec.schema import TinyRecipe
from harness.tasks.synthetic import FAMILY_VERSION, warm_start_tasks

if TYPE_CHECKING:
    from transformers import Qwen2Config

torch = lazy_module("torch")  # imported on first use: reading a spec needs none

# Bump when anything here changes the weights a recipe produces (the cache key includes it).
# 3: warm_defect (defective warm-start solutions).
TINY_CODE_VERSION = 3
MAX_POSITIONS = 256
WARMUP_STEPS = 20
# A fixed count, not "all cores": the split of each matmul (and so its float rounding) depends
# on the thread count, which must not vary from machine to machine. 2 threads build 1.65x
# faster than 1 on a 2-core machine (0.81 vs 1.34 s a step at batch 64).
BUILD_THREADS = 2

Progress = Callable[[int, int, float], None]  # (step, total_steps, loss)


def default_cache_dir() -> Path:
    """`$HARNESS_CACHE` if set, else `~/.cache/harness`."""
    env = os.environ.get("HARNESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "harness"


def recipe_hash(recipe: TinyRecipe) -> str:
    """16 hex digits identifying what a recipe builds (recipe + family + code version)."""
    payload = {"recipe": recipe.model_dump(mode="json"), "family_version": FAMILY_VERSION,
               "code_version": TINY_CODE_VERSION}
    canon = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def tiny_dir(recipe: TinyRecipe, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / "tiny" / recipe_hash(recipe)


def ensure_tiny(recipe: TinyRecipe | None = None, cache_dir: Path | None = None,
                progress: Progress | None = None) -> Path:
    """The directory of the tiny policy for `recipe`, building it first if not cached.

    `progress(step, total, loss)` is called during a build (every 10 steps and at the end).
    """
    recipe = recipe or TinyRecipe()
    final = tiny_dir(recipe, cache_dir)
    if (final / "recipe.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(final.parent / f".{final.name}.lock"):
        if (final / "recipe.json").is_file():  # built by another process meanwhile
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            _build(recipe, tmp, progress)
            make_readable(tmp)  # mkdtemp made it owner-only; others (containers) read the cache too
            if final.exists():  # a stale, incomplete directory (no recipe.json)
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def make_readable(path: Path) -> None:
    """Give a built model directory the modes an ordinary directory gets (umask applies)."""
    umask = 0o022
    with contextlib.suppress(OSError, ValueError, StopIteration):  # Linux: no umask() race
        status = Path("/proc/self/status").read_text().splitlines()
        umask = int(next(ln for ln in status if ln.startswith("Umask:")).split()[1], 8)
    path.chmod(0o777 & ~umask)
    for f in path.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- the build
def tiny_config(recipe: TinyRecipe, vocab_size: int, pad_id: int, bos_id: int, eos_id: int
                ) -> Qwen2Config:
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size, hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads, num_key_value_heads=recipe.num_heads,
        max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True, rope_theta=10000.0,
        pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, use_cache=True)


@contextlib.contextmanager
def _build_threads() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def warm_solution(task: Any, defective: bool) -> str:
    """The warm-start target of a task: its reference, without its last line when
    `defective` (the `return x` / `print(x)` that makes the program answer)."""
    if not defective:
        return task.reference
    lines = task.reference.splitlines(keepends=True)
    return "".join(lines[:-1])


def _encode_examples(tokenizer: Any, recipe: TinyRecipe) -> list[tuple[list[int], int]]:
    """(ids, prompt_len) per warm-start task: <bos> prompt solution <eos>; a share
    `recipe.warm_defect` of the tasks (a seeded draw) gets the defective solution."""
    import random

    rng = random.Random(f"defect|{recipe.warm_seed}")
    out = []
    for task in warm_start_tasks(recipe.warm_tasks, recipe.warm_seed):
        p = tokenizer(task.prompt)["input_ids"]  # adds <bos>
        defective = recipe.warm_defect > 0 and rng.random() < recipe.warm_defect
        c = tokenizer(warm_solution(task, defective), add_special_tokens=False)["input_ids"]
        out.append((p + c + [tokenizer.eos_token_id], len(p)))
    return out


def _collate(examples: list[tuple[list[int], int]], pad_id: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels [B, T]; labels are -100 except on
    solution tokens (and <eos>)."""
    t = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), t), pad_id, dtype=torch.long)
    attn = torch.zeros((len(examples), t), dtype=torch.long)
    labels = torch.full((len(examples), t), -100, dtype=torch.long)
    for i, (ids, plen) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attn[i, : len(ids)] = 1
        labels[i, plen: len(ids)] = torch.tensor(ids[plen:])
    return input_ids, attn, labels


def _lr_at(step: int, base: float) -> float:
    """Linear warm-up over the first WARMUP_STEPS steps, then constant (so a build of N steps
    is exactly the first N steps of any longer build of the same recipe)."""
    return base * min(1.0, (step + 1) / WARMUP_STEPS)


def _train(recipe: TinyRecipe, tokenizer: Any, progress: Progress | None = None,
           hook: Callable[[int, Any], None] | None = None) -> tuple[Any, float]:
    """Supervised warm start; returns (model, last loss). `hook(step, model)` runs after each
    step (calibration only)."""
    config = tiny_config(recipe, len(tokenizer), tokenizer.pad_token_id,
                         tokenizer.bos_token_id, tokenizer.eos_token_id)
    examples = _encode_examples(tokenizer, recipe)
    loss_value = float("nan")
    with _build_threads(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.warm_seed)
        from transformers import Qwen2ForCausalLM

        model = Qwen2ForCausalLM(config)
        model.train()
        gen = torch.Generator().manual_seed(recipe.warm_seed)
        opt = torch.optim.AdamW(model.parameters(), lr=recipe.warm_lr, betas=(0.9, 0.95),
                                weight_decay=0.0)
        for step in range(recipe.warm_steps):
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, recipe.warm_lr)
            idx = torch.randint(len(examples), (recipe.warm_batch,), generator=gen).tolist()
            input_ids, attn, labels = _collate([examples[i] for i in idx],
                                               tokenizer.pad_token_id)
            loss = model(input_ids=input_ids, attention_mask=attn, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss_value = loss.item()
            if progress and ((step + 1) % 10 == 0 or step + 1 == recipe.warm_steps):
                progress(step + 1, recipe.warm_steps, loss_value)
            if hook is not None:
                model.eval()
                hook(step + 1, model)
                model.train()
    return model, loss_value


def _save_model(model: Any, out: Path) -> None:
    """The files `save_pretrained` writes for this model (config.json, generation_config.json,
    model.safetensors with the tied lm_head left out, metadata format=pt), byte for byte,
    without `save_pretrained` itself: it imports DeepSpeed through accelerate, which prints
    an accelerator warning into every CPU run that builds the policy."""
    from safetensors.torch import save_file

    model.config.architectures = [type(model).__name__]  # as save_pretrained records them
    model.config.dtype = next(model.parameters()).dtype
    model.config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file({k: v.detach().contiguous() for k, v in state.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})


def _build(recipe: TinyRecipe, out: Path, progress: Progress | None) -> None:
    t0 = time.perf_counter()
    from harness.policy.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    model, loss_value = _train(recipe, tokenizer, progress)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    _save_model(model, out)
    tokenizer.save_pretrained(out)
    meta = {
        "recipe": recipe.model_dump(mode="json"), "recipe_hash": recipe_hash(recipe),
        "family_version": FAMILY_VERSION, "code_version": TINY_CODE_VERSION,
        "params": sum(p.numel() for p in model.parameters()),
        "final_loss": loss_value, "build_seconds": round(time.perf_counter() - t0, 2),
        "torch": torch.__version__, "python": platform.python_version(),
    }
    (out / "recipe.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
