"""Rollouts and their rewards: sample completions, grade them in the sandbox, score them.

`Sampler.sample_and_grade` is the rollout stage of a step (and of evaluation): sample n
completions per task with the rollout backend, extract each one's code, grade it (through the
verdict cache when the spec enables it), classify each verdict (`runner/verdicts.py`) and turn
it into a reward: 1.0 passed, 0.0 not, NaN for a sample the grader failed on (no reward at
all). `Sampler.evaluate` is pass@1 on a split. With several data-parallel ranks each samples
and grades a share of the tasks and the shares are gathered in task order.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from typing import Any

import torch

from harness.errors import UserError
from harness.runner.seeds import derive_seed
from harness.runner.verdict_cache import VerdictCache
from harness.runner.verdicts import add_counts, count_kinds, is_infra, verdict_kind
from harness.spec.grid import Cell

# Set (by the docker executor) to a grader service's Unix socket: grade there, not in-process.
GRADER_SOCKET_ENV = "HARNESS_GRADER_SOCKET"


class Sampler:
    """Sampling and grading for one cell: its policy, rollout backend, grader and ranks."""

    def __init__(self, cell: Cell, policy: Any, backend: Any, ranks: Any,
                 splits: dict[str, list[Any]], grader: Any | None = None) -> None:
        self.cell, self.policy, self.backend, self.ranks = cell, policy, backend, ranks
        self.splits = splits
        self._grader = grader
        self._owns_grader = False
        self._grader_error: str | None = None
        self.limits = {"timeout_s": cell.grader.timeout_s, "memory_mb": cell.grader.memory_mb,
                       "output_bytes": cell.grader.output_bytes}

    # ------------------------------------------------------------------ the grader
    def grader(self) -> Any:
        """The grader: the one passed in, a grader service (GRADER_SOCKET_ENV) or a pool of
        this process's own, behind the verdict cache when `grader.cache` is on."""
        if self._grader is not None:
            if self.cell.grader.cache and not isinstance(self._grader, VerdictCache):
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
                    workers=max(1, self.cell.grader.workers // self.ranks.world))
        except GraderError as e:
            why = str(e).removeprefix("grader cannot start: ")
            raise UserError(f"cell {self.cell.cell_id}: grader cannot start: {why}") from None
        self._owns_grader = True
        if self.cell.grader.cache:
            self._grader = VerdictCache(self._grader)
        return self._grader

    def close(self) -> None:
        """Close the grader if this sampler started it."""
        if self._owns_grader:
            self._grader.close()

    # ------------------------------------------------------------------ rollouts
    def sample_and_grade(self, tasks: list[Any], n: int, temperature: float, top_p: float,
                         max_new_tokens: int, seed: int, rollouts_needed: bool = True
                         ) -> tuple[list[list[float]], Any, dict[str, Any]]:
        """Sample n completions per task and grade them: rewards [len(tasks)][n], NaN for a
        sample the grader failed on (verdict kind `infra`: runner/verdicts.py), which is no
        reward at all. The third value holds this rank's timings and the verdict-kind counts
        (`kinds`, summed over the ranks).

        With several ranks, each samples (with its own seed) and grades a contiguous share of
        the tasks, and the rewards (and, when `rollouts_needed`, the rollouts) of all shares
        are gathered in task order on every rank; the timings are this rank's."""
        if self.ranks.world == 1:
            return self._here(tasks, n, temperature, top_p, max_new_tokens, seed)
        from harness.policy.rollout import Rollouts

        part = self.ranks.share(len(tasks))
        rewards, ro, t = self._here(tasks[part], n, temperature, top_p, max_new_tokens,
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

    def _here(self, tasks: list[Any], n: int, temperature: float, top_p: float,
              max_new_tokens: int, seed: int) -> tuple[list[list[float]], Any, dict[str, Any]]:
        from harness.policy import completion_code, render_prompt
        from harness.tasks import grader_request

        t0 = time.perf_counter()
        prompts = [render_prompt(self.policy, t) for t in tasks]
        self.policy.model.eval()
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

        share = self.cell.grader.max_infra_share
        grader = self.grader()

        def grade(reqs: list[dict[str, Any]]) -> tuple[list[Any], int]:
            try:
                got = grader.grade(reqs)
            except GraderError as e:  # the grader itself is gone: every sample is infra
                self._grader_error = str(e)
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
                if self._grader_error:
                    why += f"; last grader error: {self._grader_error}"
                raise UserError(
                    f"cell {self.cell.cell_id}: the grader failed on {len(bad)} of "
                    f"{len(requests)} samples ({len(bad) / len(requests):.0%} > "
                    f"grader.max_infra_share {share:.0%}) twice in a row ({why}); check the "
                    f"grader (python -m grader_sandbox check); the trace is kept and a re-run "
                    f"resumes")
            again, sent = grade([requests[i] for i in bad])
            graded += sent
            for i, v in zip(bad, again, strict=True):
                verdicts[i] = v
        return verdicts, graded

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, split: str) -> tuple[float, int, dict[str, Any]]:
        """Unbiased pass@1 (k=1): mean over tasks of passes / n. Returns (pass1, passes,
        timings {generate, grade, model, graded, kinds}).

        Every evaluation of a split uses the same sampling seed (common random numbers): the
        same weights always give the same pass@1, so carryover is exactly zero unless a
        controller rolls back, and step-to-step differences are not inflated by sampling
        noise."""
        e = self.cell.eval
        with torch.no_grad():
            rewards, _, t = self.sample_and_grade(
                self.splits[split], e.samples_per_task, e.temperature, e.top_p,
                e.max_new_tokens, derive_seed(self.cell.seed, "eval", split),
                rollouts_needed=False)
        # samples the grader failed on are not in the denominator (their count is in t["kinds"])
        valid = [[x for x in r if not math.isnan(x)] for r in rewards]
        passes = int(sum(sum(r) for r in valid))
        scored = [sum(r) / len(r) for r in valid if r]
        pass1 = sum(scored) / len(scored) if scored else math.nan
        return pass1, passes, t
