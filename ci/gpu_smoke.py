"""The GPU smoke test behind `ci/gpu-smoke.sh` (read its header for the settings).

One cell of a one-campaign spec is run in this process with the harness's own cell runner
(`CellRunner`, what `harness run-cell` runs; no MLflow), on CUDA when a GPU is visible. Then:

- checks: every step's loss, policy-gradient loss and gradient norm are finite; every pass@1
  (per step, end of chain, oracles) lies in [0, 1] and, for the tiny policy, is above zero
  at the campaign's best step and at the end; the campaign checkpoints the cell wrote exist,
  load (safetensors) with the model's keys, dtypes and finite values, and load into the model
  strictly; the policy ran on the GPU (in bfloat16 unless asked otherwise) when one is there;
  the whole smoke stayed within its time budget;
- figures (means over the campaign's training steps, from the trace's `time` records): step
  time, generation tokens/s (training rollouts: `tokens_generated` / `time.generate`), the
  share of a step spent grading (training + eval samples), evaluating, updating, inside the
  model, and the device, torch and transformers versions.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
T_START = time.perf_counter()

# Top-level imports a smoke run makes (the cell runner, the policy, the grader's parent side,
# the spec); pyseccomp is checked by the grader's own start below.
REQUIRED = {"torch": "torch", "transformers": "transformers", "safetensors": "safetensors",
            "numpy": "numpy", "yaml": "pyyaml", "pydantic": "pydantic", "rich": "rich"}


def say(msg: str = "") -> None:
    print(msg, flush=True)


def env_int(name: str, default: int) -> int:
    v = os.environ.get(name, "").strip()
    return int(v) if v else default


def preflight_imports() -> None:
    missing = []
    for mod, pkg in REQUIRED.items():
        try:
            importlib.import_module(mod)
        except ImportError as e:
            missing.append(f"{pkg} ({e})")
    if missing:
        say("error: missing Python packages: " + "; ".join(missing))
        say("       install them (or carry wheels and put them on PYTHONPATH) and re-run")
        sys.exit(2)


def grader_check(timeout: float = 120.0) -> tuple[bool, str]:
    """`python -m grader_sandbox check` in a child: (ok, what it said)."""
    try:
        p = subprocess.run([sys.executable, "-m", "grader_sandbox", "check"], cwd=REPO,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"`python -m grader_sandbox check` did not finish in {timeout:.0f} s"
    text = (p.stdout + p.stderr).strip()
    ok = p.returncode == 0 and '"benign": "passed"' in p.stdout
    if not ok:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        text = (lines[-1] if lines else f"exit status {p.returncode}")
        # The grader's workers run `python -I`: PYTHONPATH (carried wheels) does not reach them.
        probe = subprocess.run([sys.executable, "-I", "-c", "import pyseccomp"],
                               capture_output=True, text=True)
        if probe.returncode != 0:
            why = (probe.stderr.strip().splitlines() or ["?"])[-1]
            text += (f" [pyseccomp is not importable by `{sys.executable} -I` ({why}): the "
                     "grader's workers ignore PYTHONPATH; install it into that interpreter "
                     "(pip install --no-deps pyseccomp-*.whl)")
            if "libseccomp" in why.lower():
                text += "; and libseccomp.so.2 (apt-get install libseccomp2)"
            text += "]"
    return ok, text


def model_dir() -> tuple[Path, bool]:
    """(the model directory, whether it is a tiny-policy build)."""
    from harness.policy.loading import is_tiny_dir

    given = os.environ.get("MODEL_DIR", "").strip()
    if given:
        path = Path(given).expanduser().resolve()
        if not (path / "config.json").is_file():
            say(f"error: MODEL_DIR {given!r} is not a saved HF model directory "
                "(no config.json)")
            sys.exit(2)
        return path, is_tiny_dir(path)
    from harness.policy.tiny import default_cache_dir, ensure_tiny, tiny_dir
    from harness.spec.schema import TinyRecipe

    recipe = TinyRecipe()
    if not (tiny_dir(recipe) / "recipe.json").is_file():
        say(f"building the tiny policy in {tiny_dir(recipe)} (first use: about 2-3 minutes "
            "on 2 CPU cores; set HARNESS_CACHE or MODEL_DIR to reuse one)")
    path = ensure_tiny(recipe)
    say(f"model: the tiny policy from {default_cache_dir()}")
    return path, True


def write_spec(work: Path, model: Path, device: str, dtype: str, steps: int, workers: int,
               threads: int, backend: str) -> Path:
    import yaml

    # SMOKE_MAX_NEW_TOKENS: longer generations than the tiny specs' 48 (to time a larger model)
    tokens = {"max_new_tokens": int(os.environ["SMOKE_MAX_NEW_TOKENS"])} \
        if os.environ.get("SMOKE_MAX_NEW_TOKENS", "").strip() else {}
    # SMOKE_MICRO_BATCH_SIZE / SMOKE_GRADIENT_CHECKPOINTING: the update's memory options
    optim: dict[str, Any] = {}
    if os.environ.get("SMOKE_MICRO_BATCH_SIZE", "").strip():
        optim["micro_batch_size"] = int(os.environ["SMOKE_MICRO_BATCH_SIZE"])
    if os.environ.get("SMOKE_GRADIENT_CHECKPOINTING", "").strip() not in ("", "0"):
        optim["gradient_checkpointing"] = True
    spec = {
        "name": "gpu-smoke", "version": 1,
        "description": "ci/gpu-smoke.sh: one campaign on a local model (not a registered spec)",
        # the tiny specs' tasks, eval, rollout, optim and grader limits (calibrated for the
        # tiny policy; fine for any model as a smoke)
        "extends": str(REPO / "benchmarks" / "include" / "tiny.yaml"),
        "models": [{"id": str(model), "label": "smoke", "dtype": dtype, "device": device}],
        "methods": [{"name": "reinforce", "loss_agg": "seq_sum"}],
        "controllers": ["naive"],
        "seeds": [0],
        "chain": {"campaigns": 1, "steps": steps},
        "rollout": {"backend": backend, **tokens},
        "eval": tokens,
        "optim": optim,
        "grader": {"workers": workers},
        "resources": {"cpus_per_cell": threads},
    }
    path = work / "gpu-smoke.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class Checks:
    def __init__(self) -> None:
        self.rows: list[tuple[bool, str]] = []

    def __call__(self, ok: bool, what: str) -> bool:
        self.rows.append((bool(ok), what))
        say(f"  [{'ok' if ok else 'FAIL'}] {what}")
        return bool(ok)

    @property
    def failed(self) -> int:
        return sum(1 for ok, _ in self.rows if not ok)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _in01(x: Any) -> bool:
    return _finite(x) and 0.0 <= x <= 1.0


def check_run(check: Checks, runner: Any, records: list[dict[str, Any]], steps: int,
              tiny: bool, want_cuda: bool, dtype: str) -> None:
    import torch
    from safetensors.torch import load_file

    step_recs = [r for r in records if r["type"] == "step"]
    train = [r for r in step_recs if r["step"] > 0]
    final = next((r for r in records if r["type"] == "final"), None)
    check(len(step_recs) == steps + 1 and [r["step"] for r in step_recs] == list(
        range(steps + 1)), f"trace holds steps 0..{steps} of campaign 0 "
        f"(got {[r['step'] for r in step_recs]})")
    for key in ("loss", "pg_loss", "grad_norm", "entropy"):
        vals = [r[key] for r in train]
        check(bool(vals) and all(_finite(v) for v in vals), f"{key} finite at every step: "
              + ", ".join("nan/inf" if v is None else f"{v:.4g}" for v in vals))
    check(all((r["tokens_generated"] or 0) > 0 for r in train),
          "every step generated tokens: " + ", ".join(str(r["tokens_generated"]) for r in train))
    curve = [r["eval_pass1"] for r in step_recs]
    check(all(_in01(v) for v in curve), "eval pass@1 in [0, 1] at every step: "
          + ", ".join(f"{v:.3f}" for v in curve))
    check(final is not None, "a final (end-of-chain) record was written")
    if final is not None:
        vals = {"pass1_test": final["pass1_test"], "pass1_eval": final["pass1_eval"]}
        for kind, o in (final.get("oracles") or {}).items():
            vals[f"{kind}_oracle.pass1_test"] = o.get("pass1_test")
        check(all(_in01(v) for v in vals.values()), "end-of-chain and oracle pass@1 in [0, 1]: "
              + ", ".join(f"{k} {v}" for k, v in vals.items()))
        if tiny:
            check(max(curve) > 0 and final["pass1_test"] > 0,
                  f"tiny policy: pass@1 above zero (best eval {max(curve):.3f}, end-of-chain "
                  f"test {final['pass1_test']:.3f})")
    result = runner.dir / "result.json"
    check(result.is_file() and (json.loads(result.read_text()).get("end_of_chain")
                                is not None), f"{result.name} holds an end-of-chain result")

    # checkpoints: the files the cell wrote for campaign 0
    model = runner.model
    state = model.state_dict()
    ckpts = sorted((runner.dir / "checkpoints").glob("*.safetensors"))
    names = [p.name for p in ckpts]
    check({"c0_last.safetensors", "c0_peak.safetensors"} <= set(names),
          f"campaign checkpoints written: {names}")
    for path in ckpts:
        try:
            sd = load_file(str(path))
        except Exception as e:  # a broken file is a failed check, not a crash
            check(False, f"{path.name} loads: {type(e).__name__}: {e}")
            continue
        same_keys = set(sd) == set(state)
        dtypes_ok = same_keys and all(sd[k].dtype == state[k].dtype for k in sd)
        finite = all(bool(torch.isfinite(t).all()) for t in sd.values() if t.is_floating_point())
        try:
            model.load_state_dict(sd, strict=True)
            loaded = True
        except RuntimeError:
            loaded = False
        size = path.stat().st_size
        check(same_keys and dtypes_ok and finite and loaded,
              f"{path.name} ({size / 2**20:.1f} MiB) loads: keys match {same_keys}, dtypes "
              f"match {dtypes_ok}, finite {finite}, strict load into the model {loaded}")
    param = next(model.parameters())
    if want_cuda:
        check(param.device.type == "cuda", f"the policy ran on the GPU (parameters on "
              f"{param.device})")
        if dtype == "auto":
            check(param.dtype == torch.bfloat16, f"bfloat16 weights on GPU ({param.dtype})")


def figures(records: list[dict[str, Any]], runner: Any, extra: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers

    train = [r for r in records if r["type"] == "step" and r["step"] > 0]
    final = next((r for r in records if r["type"] == "final"), None)
    t = [r["time"] for r in train]

    def total(key: str) -> float:
        return sum(x.get(key, 0.0) for x in t)

    step_total = total("step") or float("nan")
    tokens = sum(r["tokens_generated"] or 0 for r in train)
    steps0 = [r for r in records if r["type"] == "step"]
    cfg = runner.cfg
    dev = runner.policy.device
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "device_type": dev.type,
        "dtype": str(runner.policy.dtype).removeprefix("torch."),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "transformers": transformers.__version__, "python": sys.version.split()[0],
        "model_source": runner.policy.source,
        "rollout_backend": f"{cfg.rollout.backend} (sampled with {runner.backend.name})",
        "params": sum(p.numel() for p in runner.model.parameters()),
        "steps": len(train),
        "rollouts_per_step": cfg.rollout.group_size * cfg.rollout.prompts_per_step,
        "eval_samples_per_step": len(runner.splits["eval"]) * cfg.eval.samples_per_task,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "grader_workers": cfg.grader.workers, "torch_threads": torch.get_num_threads(),
        "update": (f"micro_batch_size {cfg.optim.micro_batch_size or 'whole batch'}, gradient "
                   f"checkpointing {'on' if cfg.optim.gradient_checkpointing else 'off'}, "
                   f"master weights {cfg.optim.master_weights}"),
        "step_s_mean": step_total / max(len(t), 1),
        "step_s_median": statistics.median(x["step"] for x in t) if t else None,
        "generate_s_mean": total("generate") / max(len(t), 1),
        "grade_s_mean": total("grade") / max(len(t), 1),
        "update_s_mean": total("update") / max(len(t), 1),
        "eval_s_mean": total("eval") / max(len(t), 1),
        "eval_grade_s_mean": total("eval_grade") / max(len(t), 1),
        "gen_tokens": tokens,
        "gen_tokens_per_s": tokens / total("generate") if total("generate") else None,
        "gen_tokens_per_step": tokens / max(len(t), 1),
        "share_grading": (total("grade") + total("eval_grade")) / step_total,
        "share_grading_train": total("grade") / step_total,
        "share_generate": total("generate") / step_total,
        "share_update": total("update") / step_total,
        "share_eval": total("eval") / step_total,
        "share_in_model": total("model") / step_total,
        "pass1_eval_curve": [r["eval_pass1"] for r in steps0],
        "pass1_test_end": None if final is None else final["pass1_test"],
        "losses": [r["loss"] for r in train],
        **extra,
    }
    if dev.type == "cuda":
        out["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return out


# What `figures` reports about the set-up (kept when there are no step records to time).
DESCRIPTIVE = ("device", "device_type", "dtype", "torch", "cuda", "transformers", "python",
               "model_source", "rollout_backend", "params", "rollouts_per_step", "eval_samples_per_step",
               "max_new_tokens", "grader_workers", "torch_threads", "update", "gpu_peak_mem_gib")


def print_figures(fig: dict[str, Any]) -> None:
    def f(x: Any, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    say("")
    say("=== figures " + "=" * 60)
    say(f"device            {fig['device']} ({fig['device_type']}, {fig['dtype']}); torch "
        f"{fig['torch']} (cuda {fig['cuda']}), transformers {fig['transformers']}, "
        f"python {fig['python']}")
    say(f"model             {fig['model_source']} ({fig['params']:,} parameters)")
    say(f"rollout backend   {fig['rollout_backend']}")
    say(f"work per step     {fig['rollouts_per_step']} rollouts + {fig['eval_samples_per_step']}"
        f" eval samples, max_new_tokens {fig['max_new_tokens']}; grader workers "
        f"{fig['grader_workers']}, torch threads {fig['torch_threads']}")
    say(f"update            {fig.get('update', '-')}")
    if "step_s_mean" in fig:
        say(f"step time         mean {f(fig['step_s_mean'])} s, median "
            f"{f(fig['step_s_median'])} s over {fig['steps']} steps")
        say(f"  generate        {f(fig['generate_s_mean'])} s   grade {f(fig['grade_s_mean'])}"
            f" s   update {f(fig['update_s_mean'])} s   eval {f(fig['eval_s_mean'])} s "
            f"(of which grading {f(fig['eval_grade_s_mean'])} s)")
        say(f"generation        {f(fig['gen_tokens_per_s'], '.0f')} tokens/s (training "
            f"rollouts, {f(fig['gen_tokens_per_step'], '.0f')} tokens a step)")
        say(f"share of a step   grading {f(fig['share_grading'], '.1%')} (train "
            f"{f(fig['share_grading_train'], '.1%')}), eval {f(fig['share_eval'], '.1%')}, "
            f"update {f(fig['share_update'], '.1%')}, generate "
            f"{f(fig['share_generate'], '.1%')}, inside the model "
            f"{f(fig['share_in_model'], '.1%')}")
        say(f"pass@1            eval curve {[round(x, 3) for x in fig['pass1_eval_curve']]}, "
            f"end-of-chain test {f(fig['pass1_test_end'])}")
    else:  # policy only (no grader)
        say(f"step (no grading) mean {f(fig['policy_step_s_mean'])} s: generate "
            f"{f(fig['generate_s_mean'])} s, update {f(fig['update_s_mean'])} s")
        say(f"generation        {f(fig['gen_tokens_per_s'], '.0f')} tokens/s")
        say("grading share, pass@1: NOT MEASURED (the grader cannot start here)")
    if "gpu_peak_mem_gib" in fig:
        say(f"GPU memory        peak {fig['gpu_peak_mem_gib']:.2f} GiB allocated")
    say(f"wall              total {f(fig['wall_total_s'], '.1f')} s; in the cell outside its "
        f"training steps (policy load, grader start, step-0 eval, end-of-chain tests): "
        f"{f(fig.get('wall_setup_s'), '.1f')} s")
    say("=" * 72)


def policy_only(runner: Any, steps: int) -> dict[str, Any]:
    """Generation and update timings without a grader. The rewards are a fixed 0/1 pattern,
    for timing only: nothing here says anything about pass@1."""
    import torch

    from harness.methods import apply_gradients, backward_loss, make_optimizer
    from harness.policy import render_prompt
    from harness.runner.cell import derive_seed

    cfg = runner.cfg
    runner._setup()
    opt = make_optimizer(runner.model, lr=cfg.optim.lr, betas=cfg.optim.betas,
                         weight_decay=cfg.optim.weight_decay,
                         master_weights=cfg.optim.master_weights)
    rows = []
    for step in range(1, steps + 1):
        tasks = runner._prompts(0, step)
        t0 = time.perf_counter()
        prompts = [render_prompt(runner.policy, tk) for tk in tasks]
        ro = runner.backend.generate(runner.policy, prompts, n=cfg.rollout.group_size,
                                     temperature=cfg.rollout.temperature,
                                     top_p=cfg.rollout.top_p,
                                     max_new_tokens=cfg.rollout.max_new_tokens,
                                     seed=derive_seed(cfg.seed, "train", 0, step))
        t1 = time.perf_counter()
        g = cfg.rollout.group_size
        rewards = torch.tensor([[float(j % 2) for j in range(g)] for _ in tasks])
        runner.model.train()
        batch = ro.to_batch(runner.policy.tokenizer.pad_token_id, device=runner.policy.device)
        opt.zero_grad(set_to_none=True)
        metrics = backward_loss(cfg.method, runner.model, batch, rewards,
                                temperature=max(cfg.rollout.temperature, 1e-5),
                                micro_batch_size=cfg.optim.micro_batch_size,
                                after_backward=getattr(opt, "accumulate_grads", None))
        apply_gradients(runner.model, opt, cfg.optim.grad_clip)
        if runner.policy.device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, ro.generated_tokens, metrics["loss"]))
        say(f"  policy-only step {step}: generate {t1 - t0:.2f} s ({ro.generated_tokens} "
            f"tokens), update {t2 - t1:.2f} s, loss {rows[-1][3]:.4g}")
    gen = sum(r[0] for r in rows)
    return {"generate_s_mean": gen / len(rows), "update_s_mean": sum(r[1] for r in rows)
            / len(rows), "policy_step_s_mean": sum(r[0] + r[1] for r in rows) / len(rows),
            "gen_tokens_per_s": sum(r[2] for r in rows) / gen if gen else None,
            "losses": [r[3] for r in rows]}


def export(out_dir: str | None, files: dict[str, Path], fig: dict[str, Any]) -> None:
    if not out_dir:
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures.json").write_text(json.dumps(fig, indent=2, sort_keys=True) + "\n")
    for name, src in files.items():
        if src.is_file():
            shutil.copyfile(src, out / name)
    say(f"outputs copied to {out}: figures.json, " + ", ".join(
        n for n, s in files.items() if s.is_file()))


def main() -> int:
    preflight_imports()
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    from harness.bench import prepare_run_dir
    from harness.errors import UserError
    from harness.runner.cell import CellConfig, CellRunner
    from harness.runner.trace import read_trace
    from harness.spec import load_spec

    device = os.environ.get("SMOKE_DEVICE", "auto").strip() or "auto"
    dtype = os.environ.get("SMOKE_DTYPE", "auto").strip() or "auto"
    cuda = torch.cuda.is_available() and device != "cpu"
    steps = env_int("SMOKE_STEPS", 6 if cuda else 4)
    cpus = os.cpu_count() or 2
    workers = env_int("SMOKE_WORKERS", max(2, min(8, cpus - 4)) if cuda else 2)
    threads = env_int("SMOKE_THREADS", min(4, cpus) if cuda else 1)
    budget = float(os.environ.get("SMOKE_BUDGET_S", "480"))
    backend = os.environ.get("SMOKE_BACKEND", "hf").strip() or "hf"
    say(f"gpu-smoke: torch {torch.__version__}, transformers {transformers.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name(0) if cuda else 'CPU only'}; {steps} steps, "
        f"{workers} grader workers, {threads} torch threads, rollout backend {backend}")

    grader_ok, grader_said = grader_check()
    say(f"grader: {'ok' if grader_ok else 'CANNOT START'}: {grader_said}")
    model, tiny = model_dir()
    say(f"model: {model}{' (tiny policy build)' if tiny else ''}")

    keep = bool(os.environ.get("SMOKE_WORKDIR"))
    work = Path(os.environ["SMOKE_WORKDIR"]) if keep else Path(tempfile.mkdtemp(
        prefix="gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "run", ignore_errors=True)  # always a fresh cell, never a resumed one
    try:
        spec, _ = load_spec(str(write_spec(work, model, device, dtype, steps, workers,
                                           threads, backend)))
        run_dir, cells = prepare_run_dir(spec, work / "run")
        cell = cells[0]
        cell_dir = run_dir / "cells" / cell.cell_id
        cfg = CellConfig.from_dict(cell.cell_id, cell.config)
        torch.set_num_threads(max(1, int(cfg.resources.cpus_per_cell)))
        say(f"cell {cell.cell_id} in {cell_dir}")
        files = {"trace.jsonl": cell_dir / "trace.jsonl", "result.json": cell_dir / "result.json",
                 "config.json": cell_dir / "config.json"}

        if not grader_ok:
            say("")
            say("GRADER CANNOT START ON THIS MACHINE: " + grader_said)
            say("pass@1, checkpoints and the grading share cannot be checked here; measuring "
                "the policy alone (generation + update, fixed 0/1 rewards for timing only)")
            runner = CellRunner(cfg, cell_dir)
            measured = policy_only(runner, steps)
            fig = {k: v for k, v in figures([], runner, {}).items() if k in DESCRIPTIVE}
            fig.update(measured, grader_ok=False, grader_error=grader_said, checks_failed=None,
                       wall_total_s=time.perf_counter() - T_START)
            print_figures(fig)
            export(os.environ.get("OUT"), files, fig)
            say("RESULT: grader unavailable (exit 3); policy-only figures above")
            return 3

        t_run = time.perf_counter()
        last = [t_run]

        def progress(ev: dict[str, Any]) -> None:
            if ev["event"] == "step":
                now = time.perf_counter()
                say(f"  campaign {ev['campaign']} step {ev['step']}: eval pass@1 "
                    f"{ev['eval_pass1']:.3f}  ({now - last[0]:.1f} s)")
                last[0] = now

        runner = CellRunner(cfg, cell_dir, progress=progress)
        try:
            runner.run()
        except UserError as e:
            say(f"error: {e}")
            return 1
        run_s = time.perf_counter() - t_run
        records = read_trace(cell_dir / "trace.jsonl")
        say("")
        say("checks:")
        check = Checks()
        check_run(check, runner, records, steps, tiny, cuda, dtype)
        wall = time.perf_counter() - T_START
        step_sum = sum(r["time"]["step"] for r in records if r["type"] == "step"
                       and r["step"] > 0)
        check(wall <= budget, f"wall time {wall:.1f} s within the budget of {budget:.0f} s")
        fig = figures(records, runner, {
            "grader_ok": True, "wall_total_s": wall, "wall_cell_s": run_s,
            "wall_setup_s": run_s - step_sum, "checks_failed": check.failed,
            "checks": [{"ok": ok, "check": what} for ok, what in check.rows]})
        print_figures(fig)
        export(os.environ.get("OUT"), files, fig)
        if check.failed:
            say(f"RESULT: {check.failed} check(s) FAILED")
            return 1
        say(f"RESULT: all {len(check.rows)} checks passed")
        return 0
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
