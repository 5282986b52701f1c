"""The cell runner: one model x method x controller x seed, a chain of campaigns.

This is the only place that knows the order of a chain (docs/design.md section 2):

    for each campaign k:
        plan = controller.plan(history)            start checkpoint, budget, lr (+ reason)
        load plan.start_from; fresh AdamW(lr)
        step 0: eval pass@1 on the eval split
        for step 1..budget:
            rollouts (G per prompt, P prompts) -> sandboxed grading -> rewards
            method loss (+ KL, EWC) -> one optimizer step
            eval pass@1 on the eval split -> trace
            controller.should_stop? -> stop early
        summary (start, peak, peak_step, end, gap, collapsed, onset) -> trace
    carried-out policy = where the controller would start campaign C -> test-split pass@1
    trace / hindsight oracle checkpoints (c{k}:peak) -> test-split pass@1

Every random draw is seeded from (cell seed, purpose, campaign, step), the optimizer is
fresh per campaign, and checkpoints are saved at campaign ends, so a cell killed mid-chain
resumes from its last finished campaign and ends with the same results.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.controllers import History, Plan, make_controller, summarise
from harness.distributed.runtime import Ranks
from harness.errors import UserError
from harness.results import build_result, summary_from
from harness.rundir import write_json
from harness.runner.checkpoints import CheckpointStore
from harness.runner.trace import Trace
from harness.runner.verdict_cache import VerdictCache
from harness.runner.verdicts import add_counts, count_kinds, is_infra, verdict_kind
from harness.spec.schema import (
    ChainSpec,
    ControllerSpec,
    EvalSpec,
    GraderSpec,
    MethodSpec,
    ModelSpec,
    OptimSpec,
    ResourcesSpec,
    RolloutSpec,
    TasksSpec,
)

# Set (by the docker executor) to a grader service's Unix socket: grade there, not in-process.
GRADER_SOCKET_ENV = "HARNESS_GRADER_SOCKET"

Progress = Callable[[dict[str, Any]], None]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and machines)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def warmed_lr(lr: float, step: int, warmup_steps: int) -> float:
    """The learning rate of step `step` (1-based) of a campaign: linear warm-up over the first
    `warmup_steps` steps, then `lr`."""
    return lr if warmup_steps <= 0 else lr * min(1.0, step / warmup_steps)


@dataclass(frozen=True)
class CellConfig:
    """A resolved cell config (what `cell.config` holds), parsed."""

    cell_id: str
    model: ModelSpec
    method: MethodSpec
    controller: ControllerSpec
    seed: int
    chain: ChainSpec
    tasks: TasksSpec
    eval: EvalSpec
    rollout: RolloutSpec
    optim: OptimSpec
    grader: GraderSpec
    resources: ResourcesSpec
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, cell_id: str, cfg: dict[str, Any]) -> CellConfig:
        return cls(
            cell_id=cell_id, model=ModelSpec(**cfg["model"]), method=MethodSpec(**cfg["method"]),
            controller=ControllerSpec(**cfg["controller"]), seed=int(cfg["seed"]),
            chain=ChainSpec(**cfg["chain"]), tasks=TasksSpec(**cfg["tasks"]),
            eval=EvalSpec(**cfg["eval"]), rollout=RolloutSpec(**cfg["rollout"]),
            optim=OptimSpec(**cfg["optim"]), grader=GraderSpec(**cfg["grader"]),
            resources=ResourcesSpec(**cfg["resources"]), raw=cfg)


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
        self.backend = make_backend(cfg.rollout.backend, self.policy)
        self.store = CheckpointStore(self.dir / "checkpoints", self.model, write=main,
                                     sync=self.ranks.broadcast if self.ranks.world > 1 else None)
        self.store.keep_init()
        self.limits = {"timeout_s": cfg.grader.timeout_s, "memory_mb": cfg.grader.memory_mb,
                       "output_bytes": cfg.grader.output_bytes}

    def _grader_pool(self) -> Any:
        if self._grader is not None:
            if self.cfg.grader.cache and not isinstance(self._grader, VerdictCache):
                self._grader = VerdictCache(self._grader)
            return self._grader
        from grader_sandbox import GraderClient, GraderError, GraderPool

        socket_path = os.environ.get(GRADER_SOCKET_ENV)
        try:
            if socket_path:  # a grader service (the docker executor's grader container)
                self._grader = GraderClient(socket_path)
                self._grader.health()
            else:
                # the ranks grade their shares side by side: the workers are split
                self._grader = GraderPool(
                    workers=max(1, self.cfg.grader.workers // self.ranks.world))
        except GraderError as e:
            raise UserError(f"cell {self.cfg.cell_id}: grader cannot start: {e}") from None
        self._owns_grader = True
        if self.cfg.grader.cache:
            self._grader = VerdictCache(self._grader)
        return self._grader

    def _sample_and_grade(self, tasks: list[Any], n: int, temperature: float, top_p: float,
                          max_new_tokens: int, seed: int, rollouts_needed: bool = True
                          ) -> tuple[list[list[float]], Any, dict[str, Any]]:
        """Sample n completions per task and grade them: rewards [len(tasks)][n], NaN for a
        sample the grader failed on (verdict kind `infra`: runner/verdicts.py), which is no
        reward at all. The third value holds this rank's timings and the verdict-kind counts
        (`kinds`, summed over the ranks).

        With several ranks, each samples (with its own seed) and grades a contiguous share of
        the tasks, and the rewards (and, when `rollouts_needed`, the rollouts) of all shares
        are gathered in task order on every rank; the timings are this rank's."""
        if self.ranks.world > 1:
            from harness.policy.rollout import Rollouts

            part = self.ranks.share(len(tasks))
            rewards, ro, t = self._sample_and_grade_here(
                tasks[part], n, temperature, top_p, max_new_tokens,
                derive_seed(seed, "rank", self.ranks.rank))
            shares = self.ranks.gather((rewards, t["kinds"], (ro.texts, ro.prompt_ids,
                                                              ro.completion_ids)
                                        if rollouts_needed else None))
            rewards = [r for share_rewards, _, _ in shares for r in share_rewards]
            kinds = None
            for _, share_kinds, _ in shares:
                kinds = add_counts(kinds, share_kinds)
            t = {**t, "kinds": kinds}
            if rollouts_needed:
                ro = Rollouts(texts=[x for _, _, s in shares for x in s[0]],
                              prompt_ids=[x for _, _, s in shares for x in s[1]],
                              completion_ids=[x for _, _, s in shares for x in s[2]],
                              n=n, seconds=ro.seconds)
            return rewards, ro, t
        return self._sample_and_grade_here(tasks, n, temperature, top_p, max_new_tokens, seed)

    def _sample_and_grade_here(self, tasks: list[Any], n: int, temperature: float,
                               top_p: float, max_new_tokens: int, seed: int
                               ) -> tuple[list[list[float]], Any, dict[str, Any]]:
        from harness.policy import completion_code, render_prompt
        from harness.tasks import grader_request

        t0 = time.perf_counter()
        prompts = [render_prompt(self.policy, t) for t in tasks]
        self.model.eval()
        rollouts = self.backend.generate(self.policy, prompts, n=n, temperature=temperature,
                                         top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        t1 = time.perf_counter()
        chat = self.policy.use_chat_template
        codes = [completion_code(tasks[i // n], text, chat)
                 for i, text in enumerate(rollouts.texts)]
        requests = [grader_request(tasks[i // n], code, self.limits, f"{i}", chat=chat)
                    for i, code in enumerate(codes)]
        verdicts, graded = self._grade(requests)
        t2 = time.perf_counter()
        eos = self.policy.tokenizer.eos_token_id
        kinds = [verdict_kind(v, codes[i], len(c) >= max_new_tokens and (not c or c[-1] != eos))
                 for i, (v, c) in enumerate(zip(verdicts, rollouts.completion_ids, strict=True))]
        flat = [math.nan if k == "infra" else 1.0 if v.passed else 0.0
                for k, v in zip(kinds, verdicts, strict=True)]
        rewards = [flat[i * n:(i + 1) * n] for i in range(len(tasks))]
        # generate: wall time of the rollout stage; model: the model's own generate() call;
        # graded: samples sent to the sandbox (the rest came from the verdict cache)
        return rewards, rollouts, {"generate": t1 - t0, "grade": t2 - t1,
                                   "model": rollouts.seconds, "graded": graded,
                                   "kinds": count_kinds(kinds, verdicts)}

    def _grade(self, requests: list[dict[str, Any]]) -> tuple[list[Any], int]:
        """Grade, retrying once the samples the grader failed on when they are more than
        `grader.max_infra_share` of the batch; a second such failure stops the cell with one
        line (the trace is kept: a re-run resumes). Returns (verdicts, samples sent to the
        sandbox)."""
        from grader_sandbox import GraderError, Verdict

        share = self.cfg.grader.max_infra_share
        grader = self._grader_pool()

        def grade(reqs: list[dict[str, Any]]) -> tuple[list[Any], int]:
            try:
                got = grader.grade(reqs)
            except GraderError as e:  # the grader itself is gone: every sample is infra
                self.last_grader_error = str(e)
                return [Verdict(id=r["id"], passed=False, status="crashed",
                                error_type="GraderUnreachable", tests_passed=0,
                                tests_total=0, wall_s=0.0) for r in reqs], len(reqs)
            sent = grader.last["graded"] if isinstance(grader, VerdictCache) else len(reqs)
            return got, sent

        verdicts, graded = grade(requests)
        for attempt in (1, 2):
            bad = [i for i, v in enumerate(verdicts) if is_infra(v)]
            if len(bad) <= share * len(requests):
                return verdicts, graded
            if attempt == 2:
                causes = Counter(verdicts[i].error_type for i in bad)
                why = ", ".join(f"{c} x{k}" for c, k in causes.most_common())
                raise UserError(
                    f"cell {self.cfg.cell_id}: the grader failed on {len(bad)} of "
                    f"{len(requests)} samples ({len(bad) / len(requests):.0%} > "
                    f"grader.max_infra_share {share:.0%}) twice in a row ({why}); check the "
                    f"grader (python -m grader_sandbox check); the trace is kept and a re-run "
                    f"resumes")
            again, sent = grade([requests[i] for i in bad])
            graded += sent
            for i, v in zip(bad, again, strict=True):
                verdicts[i] = v
        return verdicts, graded

    def evaluate(self, split: str) -> tuple[float, int, dict[str, float]]:
        """Unbiased pass@1 (k=1): mean over tasks of passes / n. Returns (pass1, passes,
        timings {generate, grade, model}).

        Every evaluation of a split uses the same sampling seed (common random numbers): the
        same weights always give the same pass@1, so carryover is exactly zero unless a
        controller rolls back, and step-to-step differences are not inflated by sampling
        noise."""
        e = self.cfg.eval
        tasks = self.splits[split]
        with torch.no_grad():
            rewards, _, t = self._sample_and_grade(
                tasks, e.samples_per_task, e.temperature, e.top_p, e.max_new_tokens,
                derive_seed(self.cfg.seed, "eval", split), rollouts_needed=False)
        # samples the grader failed on are not in the denominator (their count is in t["kinds"])
        valid = [[x for x in r if not math.isnan(x)] for r in rewards]
        passes = int(sum(sum(r) for r in valid))
        scored = [sum(r) / len(r) for r in valid if r]
        pass1 = sum(scored) / len(scored) if scored else math.nan
        return pass1, passes, t

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
            if getattr(self, "_owns_grader", False):
                self._grader.close()
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

        from harness.methods import (
            EWCState,
            apply_gradients,
            backward_loss,
            estimate_fisher,
            make_optimizer,
            make_reference,
        )

        # The reference for the KL penalty (and the kl_to_ref metric): chain start by default.
        by_campaign = cfg.method.kl is not None and cfg.method.kl.reference == "campaign_start"
        ref_model = make_reference(self.model) if by_campaign else self.store.reference("init")
        ewc = None
        if cfg.method.ewc is not None:
            batches = []
            for b in range(cfg.method.ewc.fisher_batches):
                _, ro, _ = self._sample_and_grade(
                    self._prompts(k, -1 - b), cfg.rollout.group_size, cfg.rollout.temperature,
                    cfg.rollout.top_p, cfg.rollout.max_new_tokens,
                    derive_seed(cfg.seed, "fisher", k, b))
                batches.append(ro.to_batch(self.policy.tokenizer.pad_token_id,
                                           device=self.policy.device))
            fisher = estimate_fisher(self.model, batches, micro_batch=cfg.rollout.group_size,
                                     chunk=cfg.optim.micro_batch_size,
                                     temperature=max(cfg.rollout.temperature, 1e-5))
            ewc = EWCState.from_model(self.model, fisher)
        n_seq = cfg.rollout.prompts_per_step * cfg.rollout.group_size
        engine = None
        if self.ranks.world > 1:  # a fresh DeepSpeed engine (and AdamW) per campaign
            from harness.distributed.runtime import EngineUpdate

            engine = EngineUpdate(self.model, self.ranks, cfg.resources.distributed,
                                  lr=plan.lr, betas=cfg.optim.betas,
                                  weight_decay=cfg.optim.weight_decay,
                                  grad_clip=cfg.optim.grad_clip, batch=n_seq,
                                  micro_batch_size=cfg.optim.micro_batch_size)
        else:
            optimizer = make_optimizer(self.model, lr=plan.lr, betas=cfg.optim.betas,
                                       weight_decay=cfg.optim.weight_decay,
                                       master_weights=cfg.optim.master_weights)

        t0 = time.perf_counter()
        pass1, passes, t_eval0 = self.evaluate("eval")
        records = [self._record(k, 0, global_step, pass1, passes, None,
                                {"eval": time.perf_counter() - t0},
                                {"train_samples": 0, "train_graded": 0,
                                 "eval_samples": self._eval_samples(),
                                 "eval_graded": t_eval0["graded"]},
                                {"eval": t_eval0["kinds"]})]
        curve = [pass1]
        self.store.mark_peak(self.model)
        stopped = None
        for step in range(1, plan.budget + 1):
            ts = time.perf_counter()
            tasks = self._prompts(k, step)
            rewards, rollouts, tgen = self._sample_and_grade(
                tasks, cfg.rollout.group_size, cfg.rollout.temperature, cfg.rollout.top_p,
                cfg.rollout.max_new_tokens, derive_seed(cfg.seed, "train", k, step))
            tu = time.perf_counter()
            self.model.train()
            batch = rollouts.to_batch(self.policy.tokenizer.pad_token_id,
                                      device=self.policy.device)
            reward_t = torch.tensor(rewards, dtype=torch.float32)
            # samples the grader failed on: masked out of the advantages and the loss
            valid = ~torch.isnan(reward_t)
            mask = None if bool(valid.all()) else valid
            reward_t = torch.nan_to_num(reward_t, nan=0.0)
            lr = warmed_lr(plan.lr, step, cfg.optim.warmup_steps)
            if engine is not None:
                engine.set_lr(lr)  # this rank's share of the rows, through the engine
                metrics = backward_loss(cfg.method, self.model, batch, reward_t,
                                        ref_model=ref_model, ewc=ewc, valid=mask,
                                        temperature=max(cfg.rollout.temperature, 1e-5),
                                        micro_batch_size=cfg.optim.micro_batch_size,
                                        rows=self.ranks.share(n_seq), backward=engine.backward,
                                        reduce=self.ranks.sum)
                grad_norm = engine.step()
            else:
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                metrics = backward_loss(
                    cfg.method, self.model, batch, reward_t, ref_model=ref_model, ewc=ewc,
                    valid=mask,
                    temperature=max(cfg.rollout.temperature, 1e-5),
                    micro_batch_size=cfg.optim.micro_batch_size,
                    after_backward=getattr(optimizer, "accumulate_grads", None))
                grad_norm = apply_gradients(self.model, optimizer, cfg.optim.grad_clip)
            te = time.perf_counter()
            pass1, passes, teval = self.evaluate("eval")
            tend = time.perf_counter()
            train = {**metrics, "grad_norm": grad_norm,
                     "train_reward": float(reward_t[valid].mean()) if bool(valid.any())
                     else math.nan,
                     "tokens_generated": int(batch["completion_mask"].sum())}
            # `model` = time inside the model (generation, forward/backward, optimizer step);
            # everything else in `step` is the harness's overhead (grading included).
            timing = {"generate": tgen["generate"], "grade": tgen["grade"], "update": te - tu,
                      "eval": tend - te, "eval_grade": teval["grade"],
                      "model": tgen["model"] + (te - tu) + teval["model"], "step": tend - ts}
            grading = {"train_samples": len(rollouts), "train_graded": tgen["graded"],
                       "eval_samples": self._eval_samples(), "eval_graded": teval["graded"]}
            rec = self._record(k, step, global_step + step, pass1, passes, train, timing,
                               grading, {"train": tgen["kinds"], "eval": teval["kinds"]})
            records.append(rec)
            if pass1 > max(curve):
                self.store.mark_peak(self.model)
            curve.append(pass1)
            stopped = self.controller.should_stop(records, history)
            if stopped:
                self.trace.append({"type": "stop", "campaign": k, "step": step,
                                   "reason": stopped})
                break
        if engine is not None:
            engine.close()
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

    def _record(self, k: int, step: int, global_step: int, pass1: float, passes: int,
                train: dict[str, Any] | None, timing: dict[str, float],
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
        for key in ("train_reward", "entropy", "kl_to_ref", "grad_norm", "completion_len",
                    "zero_var_groups", "loss", "pg_loss", "kl_penalty", "ewc_penalty",
                    "adv_mean", "tokens_generated"):
            v = None if train is None else train.get(key)
            rec[key] = None if isinstance(v, float) and not math.isfinite(v) else v
        self.trace.append(rec)
        self.progress({"event": "step", "cell_id": self.cfg.cell_id, "campaign": k,
                       "step": step, "eval_pass1": pass1})
        return rec

    def _eval_samples(self) -> int:
        return len(self.splits["eval"]) * self.cfg.eval.samples_per_task

    def _prompts(self, k: int, step: int) -> list[Any]:
        import random

        train = self.splits["train"]
        rng = random.Random(derive_seed(self.cfg.seed, "prompts", k, step))
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
