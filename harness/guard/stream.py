"""The guard outside the harness: over any stream of logged metrics, and as a TRL callback.

`GuardStream` turns metric dicts, one per logging step, into step records the signals read
(`KEYS` maps each trainer's names onto the record's fields) and applies the guard's rule after
each one. `guard_stream(metrics)` runs it over a whole history (an MLflow run's, say) and
returns where it would have fired. `CollapseGuardCallback` is the same for a
`transformers.Trainer` (TRL's `GRPOTrainer` among them): on a firing it sets
`control.should_training_stop` and names the checkpoint to roll back to (the one saved at the
best eval value so far, when the trainer saved one).

The eval_drop signal needs an eval pass rate (TRL: `eval_reward`, when the trainer evaluates
with a binary reward) and the number of eval samples behind it (`eval_samples`, else
`GuardParams.eval_samples`); without eval metrics only the training-side signals (entropy,
KL, zero-variance share, length, truncation) can fire.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.guard.rule import GuardParams, as_params, guard_signals

# record field <- the names trainers log it under (first match wins)
KEYS: dict[str, tuple[str, ...]] = {
    "eval_pass1": ("eval_pass1", "eval_reward", "eval/reward", "eval/pass1", "val/pass1",
                   "val-core/reward/mean@1"),
    "eval_samples": ("eval_samples",),
    "entropy": ("entropy", "actor/entropy", "policy/entropy", "train/entropy"),
    "kl_to_ref": ("kl_to_ref", "kl", "actor/kl_loss", "actor/ppo_kl", "train/kl"),
    "train_reward": ("train_reward", "reward", "critic/score/mean", "train/reward"),
    "zero_var_groups": ("zero_var_groups", "frac_reward_zero_std"),
    "completion_len": ("completion_len", "completions/mean_length",
                       "response_length/mean", "train/response_length"),
    "truncated_share": ("truncated_share", "completions/clipped_ratio",
                        "response_length/clip_ratio"),
    "logp_adv_cov": ("logp_adv_cov",),
}


def to_record(step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """A step record from one logging step's metrics (`KEYS`); unknown names are ignored."""
    rec: dict[str, Any] = {"step": step}
    for fld, names in KEYS.items():
        for name in names:
            if name in metrics and metrics[name] is not None:
                rec[fld] = metrics[name]
                break
    return rec


@dataclass
class GuardStream:
    """The guard applied step by step to a stream of metrics (one campaign)."""

    params: GuardParams = field(default_factory=GuardParams)
    records: list[dict[str, Any]] = field(default_factory=list)
    fired: tuple[int, str] | None = None

    def push(self, step: int, metrics: Mapping[str, Any]) -> str | None:
        """Add one step's metrics; the reason when the guard fires at this step (only the
        first firing is reported). Eval metrics logged separately from the training metrics
        of the same step are merged into that step's record."""
        rec = to_record(step, metrics)
        if self.records and self.records[-1]["step"] == step:
            self.records[-1].update(rec)
        else:
            self.records.append(rec)
        if self.fired is not None:
            return None
        reasons = guard_signals(self.records, len(self.records) - 1, self.params)
        if not reasons:
            return None
        self.fired = (step, "; ".join(reasons))
        return self.fired[1]


def guard_stream(metrics: Iterable[tuple[int, Mapping[str, Any]]],
                 params: GuardParams | Mapping[str, Any] | None = None
                 ) -> tuple[int, str] | None:
    """(step, reason) where the guard first fires over a history of (step, metrics), or None.
    For an MLflow run: `[(m.step, {m.key: m.value}) for m in client.get_metric_history(...)]`
    for each key, in step order (steps with the same number are merged)."""
    g = GuardStream(as_params(params))
    for step, m in sorted(metrics, key=lambda x: x[0]):
        g.push(step, m)
        if g.fired is not None:
            return g.fired
    return None


def _trainer_callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class CollapseGuardCallback(_trainer_callback_base()):  # type: ignore[misc]
    """Stop a `transformers`/TRL trainer when the collapse guard fires.

    After every log the trainer writes (training metrics, and eval metrics when it evaluates),
    the guard's rule runs over the history so far. When it fires: `control.should_training_stop`
    is set, `fired` holds (global step, reason) and `rollback_checkpoint` the checkpoint to
    restart from: `state.best_model_checkpoint` when the trainer tracks a best one (set
    `metric_for_best_model="eval_reward"`, `greater_is_better=True`), else the latest
    checkpoint saved at or before the step of the best eval value seen, else None.
    """

    def __init__(self, params: GuardParams | Mapping[str, Any] | None = None) -> None:
        self.guard = GuardStream(as_params(params))
        self.fired: tuple[int, str] | None = None
        self.rollback_checkpoint: str | None = None
        self._saved: list[tuple[int, str]] = []

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        import os

        self._saved.append((state.global_step,
                            os.path.join(args.output_dir, f"checkpoint-{state.global_step}")))
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> Any:
        if not logs or self.fired is not None:
            return control
        why = self.guard.push(int(state.global_step), logs)
        if why is not None:
            self.fired = self.guard.fired
            control.should_training_stop = True
            self.rollback_checkpoint = state.best_model_checkpoint or self._best_saved()
        return control

    def _best_saved(self) -> str | None:
        evals = [(r["eval_pass1"], r["step"]) for r in self.guard.records
                 if r.get("eval_pass1") is not None]
        if not evals:
            return None
        best = max(v for v, _ in evals)
        at = next(s for v, s in evals if v == best)
        saved = [p for s, p in self._saved if s <= at]
        return saved[-1] if saved else None
