"""The cell runner: one model x method x controller x seed, a chain of campaigns.

This is the only place that knows the order of a chain (docs/design.md section 2):

    for each campaign k:
        plan = controller.plan(history)            start checkpoint, budget, lr (+ reason)
        load plan.start_from; regularisers (KL reference, EWC); a fresh update (AdamW(lr))
        step 0: eval pass@1 on the eval split
        for step 1..budget:
            rollouts (G per prompt, P prompts) -> sandboxed grading -> rewards
            update: advantages -> method loss (+ KL, EWC) -> one optimizer step
            eval pass@1 on the eval split -> step record in the trace
            controller.should_stop? -> stop early
        summary (start, peak, peak_step, end, gap, collapsed, onset) -> trace
    carried-out policy = where the controller would start campaign C -> test-split pass@1
    trace / hindsight oracle checkpoints (c{k}:peak) -> test-split pass@1

Sampling and grading live in `runner/sampling.py`, the update (one process or data-parallel
ranks) and the regularisers' set-up in `runner/update.py`. Every random draw is seeded from
(cell seed, purpose, campaign, step), the optimizer is fresh per campaign, and checkpoints
are saved at campaign ends, so a cell killed mid-chain resumes from its last finished
campaign and ends with the same results.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from harness.controllers import History, Plan, make_controller, summarise
from harness.distributed.runtime import Ranks
from harness.errors import UserError
from harness.results import build_result, summary_from
from harness.rundir import write_json
from harness.runner.checkpoints import CheckpointStore
from harness.runner.sampling import GRADER_SOCKET_ENV, Sampler
from harness.runner.seeds import derive_seed
from harness.runner.trace import Trace
from harness.runner.update import StepResult, make_update, regularizers
from harness.spec.grid import Cell

__all__ = ["GRADER_SOCKET_ENV", "CellConfig", "CellRunner", "derive_seed", "warmed_lr"]

# The runner takes the grid's cell type (its config parsed): one type for a cell.
CellConfig = Cell

Progress = Callable[[dict[str, Any]], None]

# what a step record keeps of its update (beside eval pass@1, timings and verdict counts);
# None on step 0 and for a value that is not finite
STEP_FIELDS = ("train_reward", "entropy", "kl_to_ref", "grad_norm", "completion_len",
               "zero_var_groups", "loss", "pg_loss", "kl_penalty", "ewc_penalty", "adv_mean",
               "tokens_generated", "logp_adv_cov")
# what a step record keeps only when the method produces it (clipping shares of the clipped
# losses, entropy control, ProRL resets, dynamic sampling), so the records of methods
# without these stay as they were
OPTIONAL_STEP_FIELDS = ("clip_low_frac", "clip_high_frac", "cov_selected_frac",
                        "entropy_bonus", "entropy_coef", "entropy_tokens_frac", "entropy_acting",
                        "reset",
                        "groups_kept", "sample_rounds")


def warmed_lr(lr: float, step: int, warmup_steps: int) -> float:
    """The learning rate of step `step` (1-based) of a campaign: linear warm-up over the first
    `warmup_steps` steps, then `lr`."""
    return lr if warmup_steps <= 0 else lr * min(1.0, step / warmup_steps)


class CellRunner:
    """Runs (or resumes) one cell in `cell_dir`, writing `trace.jsonl` and `result.json`."""

    def __init__(self, cfg: CellConfig, cell_dir: Path, progress: Progress | None = None,
                 grader: Any | None = None, ranks: Ranks | None = None) -> None:
        self.cfg = cfg
        self.dir = cell_dir
        # data-parallel ranks (harness.distributed.runtime); rank 0 writes the cell's files
        self.ranks = ranks or Ranks.single()
        main = self.ranks.main
        self.progress = (progress or (lambda event: None)) if main else (lambda event: None)
        self._grader = grader
        self.trace = Trace(cell_dir / "trace.jsonl", write=main)

    # ------------------------------------------------------------------ parts
    def _setup(self) -> None:
        from harness.policy import (
            enable_activation_checkpointing,
            load_policy,
            make_backend,
            prompt_records,
        )
        from harness.tasks import load_selection

        cfg = self.cfg
        if cfg.resources.distributed != "none":
            from harness.distributed.runtime import check_supported

            check_supported(cfg.resources.distributed, cfg.model.dtype)
            if self.ranks.world == 1:
                raise UserError(f"cell {cfg.cell_id}: resources.distributed: "
                                f"{cfg.resources.distributed} trains on several processes: "
                                "run the cell with `harness run-cell`, which starts them")
            batch = cfg.rollout.prompts_per_step * cfg.rollout.group_size
            if batch % self.ranks.world:  # equal shares: every rank runs as many backward
                # passes, each of which communicates under ZeRO-2
                raise UserError(f"cell {cfg.cell_id}: {batch} sequences a step "
                                f"(prompts_per_step x group_size) do not split evenly over "
                                f"{self.ranks.world} processes: make it a multiple of "
                                "resources.gpus_per_cell")
        self.controller = make_controller(cfg.controller.name, cfg.controller.params)
        try:
            selection = load_selection(cfg.tasks)
        except ValueError as e:
            raise UserError(f"cell {cfg.cell_id}: tasks: {e}") from None
        self.splits = selection.splits
        # Which problems each split holds (and what was dropped, and why) and the exact
        # prompt text of each: re-running selects the same problems.
        main = self.ranks.main
        if main:
            write_json(self.dir / "tasks.json", selection.record())
        self.policy = load_policy(cfg.model)
        if main:
            write_json(self.dir / "prompts.json", prompt_records(self.policy, self.splits))
        self.model = self.policy.model
        if cfg.optim.gradient_checkpointing and not enable_activation_checkpointing(self.model):
            raise UserError(f"cell {cfg.cell_id}: model {cfg.model.id!r} does not support "
                            f"gradient checkpointing: set optim.gradient_checkpointing: false")
        backend = make_backend(cfg.rollout.backend, self.policy)
        self.store = CheckpointStore(self.dir / "checkpoints", self.model, write=main,
                                     sync=self.ranks.broadcast if self.ranks.world > 1 else None)
        self.store.keep_init()
        self.sampler = Sampler(cfg, self.policy, backend, self.ranks, self.splits,
                               grader=self._grader)

    def evaluate(self, split: str) -> tuple[float, int, dict[str, Any]]:
        """pass@1 on a split (`Sampler.evaluate`)."""
        return self.sampler.evaluate(split)

    def _rollouts(self, tasks: list[Any], seed: int) -> tuple[list[list[float]], Any,
                                                               dict[str, Any]]:
        r = self.cfg.rollout
        return self.sampler.sample_and_grade(tasks, r.group_size, r.temperature, r.top_p,
                                             r.max_new_tokens, seed)

    # ------------------------------------------------------------------ history
    def history(self) -> History:
        campaigns, summaries = [], []
        cur: list[dict[str, Any]] = []
        for r in self.trace.records:
            if r["type"] == "step":
                cur.append(r)
            elif r["type"] == "campaign":
                campaigns.append(tuple(cur))
                summaries.append(summary_from(r))
                cur = []
        return History(campaigns=tuple(campaigns), summaries=tuple(summaries),
                       checkpoints=tuple(self.store.names()), max_steps=self.cfg.chain.steps,
                       base_lr=self.cfg.optim.lr)

    def _check_plan(self, plan: Plan, history: History) -> None:
        problems = []
        if plan.start_from not in history.checkpoints:
            problems.append(f"start_from {plan.start_from!r} not in {history.checkpoints}")
        if not 1 <= plan.budget <= history.max_steps:
            problems.append(f"budget {plan.budget} outside [1, {history.max_steps}]")
        if not (plan.lr > 0 and math.isfinite(plan.lr)):
            problems.append(f"lr {plan.lr} is not a positive number")
        if problems:  # a controller bug, not a user error: keep the traceback
            raise RuntimeError(f"controller {self.cfg.controller.name!r} made an invalid plan: "
                               + "; ".join(problems))

    # ------------------------------------------------------------------ the chain
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._setup()
        try:
            done = self.trace.truncate_to_complete_campaigns()
            self.store.restore(self.history().summaries)
            global_step = sum(s.steps_run for s in self.history().summaries)
            for k in range(done, cfg.chain.campaigns):
                global_step = self._campaign(k, global_step)
            if not self.trace.of_type("final"):
                self._final()
        finally:
            self.sampler.close()
        result = build_result(cfg, self.trace.records)
        if self.ranks.main:
            write_json(self.dir / "result.json", result)
        self.progress({"event": "done", "cell_id": cfg.cell_id, "result": result})
        return result

    def _campaign(self, k: int, global_step: int) -> int:
        cfg = self.cfg
        history = self.history()
        plan = self.controller.plan(history)
        self._check_plan(plan, history)
        self.trace.append({"type": "plan", "campaign": k, **plan.to_dict()})
        self.store.load_into(self.model, plan.start_from)
        temperature = max(cfg.rollout.temperature, 1e-5)
        regs = regularizers(
            cfg.method, self.model, lambda: self.store.reference("init"),
            lambda b: self._batch(self._rollouts(self._prompts(k, -1 - b),
                                                 derive_seed(cfg.seed, "fisher", k, b))[1]),
            group_size=cfg.rollout.group_size, chunk=cfg.optim.micro_batch_size,
            temperature=temperature)
        update = make_update(cfg.method, cfg.optim, self.model, plan.lr, regs,
                             temperature=temperature, ranks=self.ranks,
                             distributed=cfg.resources.distributed,
                             n_seq=cfg.rollout.prompts_per_step * cfg.rollout.group_size,
                             max_tokens=cfg.rollout.max_new_tokens)

        t0 = time.perf_counter()
        pass1, passes, t_eval = self.evaluate("eval")
        records = [self._record(k, 0, global_step, pass1, passes, None,
                                {"eval": time.perf_counter() - t0},
                                {"train_samples": 0, "train_graded": 0,
                                 "eval_samples": self._eval_samples(),
                                 "eval_graded": t_eval["graded"]},
                                {"eval": t_eval["kinds"]})]
        curve = [pass1]
        self.store.mark_peak(self.model)
        stopped = None
        for step in range(1, plan.budget + 1):
            ts = time.perf_counter()
            rewards, rollouts, t_gen = self._train_rollouts(k, step)
            tu = time.perf_counter()
            self.model.train()
            done = update.step(self._batch(rollouts), rewards,
                               warmed_lr(plan.lr, step, cfg.optim.warmup_steps),
                               seed=derive_seed(cfg.seed, "update", k, step))
            if "groups_kept" in t_gen:  # train reward: the pass rate of every sample drawn
                done = replace(done, train_reward=t_gen["reward_all"])
                done.metrics.update(groups_kept=t_gen["groups_kept"],
                                    sample_rounds=t_gen["sample_rounds"])
            te = time.perf_counter()
            pass1, passes, t_eval = self.evaluate("eval")
            tend = time.perf_counter()
            # `model` = time inside the model (generation, forward/backward, optimizer step);
            # everything else in `step` is the harness's overhead (grading included).
            timing = {"generate": t_gen["generate"], "grade": t_gen["grade"], "update": te - tu,
                      "eval": tend - te, "eval_grade": t_eval["grade"],
                      "model": t_gen["model"] + (te - tu) + t_eval["model"], "step": tend - ts}
            grading = {"train_samples": t_gen.get("samples", len(rollouts)),
                       "train_graded": t_gen["graded"],
                       "eval_samples": self._eval_samples(), "eval_graded": t_eval["graded"]}
            records.append(self._record(k, step, global_step + step, pass1, passes, done,
                                        timing, grading,
                                        {"train": t_gen["kinds"], "eval": t_eval["kinds"]}))
            if pass1 > max(curve):
                self.store.mark_peak(self.model)
            curve.append(pass1)
            stopped = self.controller.should_stop(records, history)
            if stopped:
                self.trace.append({"type": "stop", "campaign": k, "step": step,
                                   "reason": stopped})
                break
        update.close()
        summary = summarise(k, curve, budget=plan.budget, start_from=plan.start_from,
                            lr=plan.lr, collapse_threshold=cfg.chain.collapse_threshold,
                            stopped_early=stopped, signature_rise=cfg.chain.signature_rise,
                            signature_fall=cfg.chain.signature_fall)
        self.store.finish_campaign(k, self.model, summary.peak)
        self.trace.append({"type": "campaign", **summary.to_dict(), "reason": plan.reason})
        self.store.prune()
        self.progress({"event": "campaign", "cell_id": cfg.cell_id, "summary":
                       summary.to_dict()})
        return global_step + summary.steps_run

    def _train_rollouts(self, k: int, step: int) -> tuple[list[list[float]], Any,
                                                           dict[str, Any]]:
        """A step's train rollouts and rewards. With `method.dynamic_sampling` (DAPO), groups
        whose rewards are all equal are dropped and up to `max_rounds` more rounds of prompts
        are sampled to refill the batch; the kept groups (at most prompts_per_step, in the
        order sampled) are trained on, while the verdict counts and `samples` cover every
        sample drawn."""
        cfg = self.cfg
        rewards, rollouts, t = self._rollouts(self._prompts(k, step),
                                              derive_seed(cfg.seed, "train", k, step))
        ds = cfg.method.dynamic_sampling
        if ds is None:
            return rewards, rollouts, t
        from harness.policy.rollout import Rollouts
        from harness.runner.verdicts import add_counts

        p, n = cfg.rollout.prompts_per_step, cfg.rollout.group_size
        kept: list[tuple[list[float], int, Any]] = []
        total = dict(t, samples=len(rollouts))
        drawn: list[float] = []

        def keep(rs: list[list[float]], ro: Any) -> None:
            drawn.extend(x for r in rs for x in r if not math.isnan(x))
            for i, r in enumerate(rs):
                vals = [x for x in r if not math.isnan(x)]
                if len(kept) < p and len(set(vals)) > 1:
                    kept.append((r, i, ro))

        keep(rewards, rollouts)
        rounds = 0
        while len(kept) < p and rounds < ds.max_rounds:
            rounds += 1
            rs, ro, tr = self._rollouts(self._prompts(k, step, rounds),
                                        derive_seed(cfg.seed, "train", k, step, rounds))
            for key in ("generate", "grade", "model", "graded"):
                total[key] += tr[key]
            total["kinds"] = add_counts(total["kinds"], tr["kinds"])
            total["samples"] += len(ro)
            keep(rs, ro)
        rows = [(ro, i * n + j) for _, i, ro in kept for j in range(n)]
        out = Rollouts(texts=[ro.texts[x] for ro, x in rows],
                       prompt_ids=[ro.prompt_ids[x] for ro, x in rows],
                       completion_ids=[ro.completion_ids[x] for ro, x in rows], n=n)
        total.update(groups_kept=len(kept), sample_rounds=rounds,
                     reward_all=sum(drawn) / len(drawn) if drawn else math.nan)
        return [r for r, _, _ in kept], out, total

    def _batch(self, rollouts: Any) -> dict[str, Any]:
        return rollouts.to_batch(self.policy.tokenizer.pad_token_id, device=self.policy.device)

    def _record(self, k: int, step: int, global_step: int, pass1: float, passes: int,
                update: StepResult | None, timing: dict[str, float],
                grading: dict[str, int] | None = None,
                verdicts: dict[str, Any] | None = None) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "type": "step", "campaign": k, "step": step, "global_step": global_step,
            "eval_pass1": pass1, "eval_passes": passes,
            "eval_samples": self._eval_samples(),
            "time": timing,
        }
        if grading is not None:
            rec["grading"] = grading
        if verdicts is not None:  # verdict kinds (runner/verdicts.py) of train and eval samples
            rec["verdicts"] = verdicts
        train: dict[str, Any] = {} if update is None else {
            **update.metrics, "grad_norm": update.grad_norm,
            "train_reward": update.train_reward, "tokens_generated": update.tokens}
        for key in STEP_FIELDS:
            v = train.get(key)
            rec[key] = None if isinstance(v, float) and not math.isfinite(v) else v
        for key in OPTIONAL_STEP_FIELDS:
            if key in train:
                v = train[key]
                rec[key] = None if isinstance(v, float) and not math.isfinite(v) else v
        self.trace.append(rec)
        self.progress({"event": "step", "cell_id": self.cfg.cell_id, "campaign": k,
                       "step": step, "eval_pass1": pass1})
        return rec

    def _eval_samples(self) -> int:
        return len(self.splits["eval"]) * self.cfg.eval.samples_per_task

    def _prompts(self, k: int, step: int, round_: int = 0) -> list[Any]:
        """The prompts of step `step` of campaign k (round > 0: a dynamic-sampling refill)."""
        import random

        train = self.splits["train"]
        parts = (self.cfg.seed, "prompts", k, step) + ((round_,) if round_ else ())
        rng = random.Random(derive_seed(*parts))
        p = self.cfg.rollout.prompts_per_step
        if p <= len(train):
            return rng.sample(train, p)
        return [rng.choice(train) for _ in range(p)]

    def _final(self) -> None:
        """Test-split pass@1 of the policy the controller would carry out of the chain."""
        history = self.history()
        plan = self.controller.plan(history)
        self._check_plan(plan, history)
        self.store.load_into(self.model, plan.start_from)
        test1, test_passes, _ = self.evaluate("test")
        eval1, _, _ = self.evaluate("eval")
        oracles = self._oracles(history, {plan.start_from: (test1, test_passes)})
        self.trace.append({"type": "final", "carried_from": plan.start_from,
                           "reason": plan.reason, "pass1_test": test1,
                           "test_passes": test_passes, "pass1_eval": eval1,
                           "oracles": oracles})

    def _oracles(self, history: History, tested: dict[str, tuple[float, int]]
                 ) -> dict[str, Any]:
        """The trace and hindsight oracles of this chain (docs/design.md section 2), each with the
        test-split pass@1 of the checkpoint it selects.

        Both select a campaign's peak step (first maximum of eval pass@1, as the store marks
        it), so their policy is `c{k}:peak`, which the store keeps for the last campaign and
        for the best-peak one. `pass1_eval` is the selected (traced) eval value: evaluation
        uses common random numbers, so re-evaluating the checkpoint would reproduce it.
        `tested` caches test results by checkpoint name (the carried-out one included)."""
        from harness.controllers.oracles import hindsight_oracle, trace_oracle

        if not history.campaigns:
            return {}
        out: dict[str, Any] = {}
        for kind, oracle in (("trace", trace_oracle), ("hindsight", hindsight_oracle)):
            o = oracle(history.campaigns)
            name = f"c{o['campaign']}:peak"
            row: dict[str, Any] = {**o, "checkpoint": name, "pass1_eval": o["value"]}
            if name not in tested and name in self.store.names():
                self.store.load_into(self.model, name)
                test1, passes, _ = self.evaluate("test")
                tested[name] = (test1, passes)
            if name in tested:
                row["pass1_test"], row["test_passes"] = tested[name]
            else:  # cannot happen with the store's retention rule; report rather than fail
                row["pass1_test"] = row["test_passes"] = None
                row["error"] = f"checkpoint {name} is not kept ({self.store.names()})"
            out[kind] = row
        return out
