"""Reward integrity: every sample's verdict kind, and samples the grader failed on masked out
of the update and of pass@1 instead of scored as wrong answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_methods import make_batch, tiny_model

from grader_sandbox import Verdict
from harness.methods import backward_loss
from harness.methods.advantages import METHODS, masked_advantages
from harness.runner.trace import read_trace
from harness.runner.verdicts import KINDS, add_counts, count_kinds, is_infra, verdict_kind
from harness.spec.schema import MethodSpec


def _v(status: str, error_type: str | None = None) -> Verdict:
    return Verdict(id="x", passed=status == "passed", status=status, error_type=error_type,
                   tests_passed=0, tests_total=1, wall_s=0.0)


@pytest.mark.parametrize(("verdict", "code", "truncated", "kind"), [
    (_v("passed"), "x = 1", False, "passed"),
    (_v("passed"), "x = 1", True, "passed"),  # a truncated completion that still passes
    (_v("failed"), "x = 1", False, "wrong_answer"),
    (_v("failed"), "x = 1", True, "truncated"),
    (_v("error", "SyntaxError"), "x =", False, "syntax_error"),
    (_v("error", "IndentationError"), "x =", False, "syntax_error"),
    (_v("error", "SyntaxError"), "   ", False, "no_code"),
    (_v("error", "ZeroDivisionError"), "1/0", False, "runtime_error"),
    (_v("crashed", "SIGSEGV"), "boom", False, "runtime_error"),
    (_v("timeout"), "while 1: pass", False, "timeout"),
    (_v("memory", "MemoryError"), "x", False, "memory"),
    (_v("output_limit"), "x", False, "output_limit"),
    (_v("violation", "SeccompKill"), "x", False, "violation"),
    (_v("crashed", "SandboxSetupFailed"), "x", True, "infra"),
    (_v("crashed", "WorkerDied"), "", False, "infra"),
    (_v("crashed", "JudgeDied"), "x", False, "infra"),
    (_v("crashed", "WorkerError:KeyError"), "x", False, "infra"),
    (_v("crashed", "GraderUnreachable"), "x", False, "infra"),
])
def test_each_verdict_gets_its_kind(verdict: Verdict, code: str, truncated: bool,
                                    kind: str) -> None:
    assert verdict_kind(verdict, code, truncated) == kind
    assert is_infra(verdict) is (kind == "infra")


def test_counts_cover_every_kind_add_up_and_break_exceptions_down_by_type() -> None:
    verdicts = [_v("passed"), _v("error", "ValueError"), _v("error", "ValueError"),
                _v("crashed", "SIGSEGV"), _v("crashed", "WorkerDied")]
    kinds = [verdict_kind(v, "code", False) for v in verdicts]
    counts = count_kinds(kinds, verdicts)
    assert set(counts) == {*KINDS, "exceptions"}
    assert sum(counts[k] for k in KINDS) == len(verdicts)
    assert counts["runtime_error"] == 3 and counts["infra"] == 1
    assert counts["exceptions"] == {"SIGSEGV": 1, "ValueError": 2}
    both = add_counts(counts, counts)
    assert both["runtime_error"] == 6 and both["exceptions"]["ValueError"] == 4


@pytest.mark.parametrize("name", ["grpo", "rloo", "reinforce"])
def test_masked_advantages_use_only_the_valid_samples_of_each_group(name: str) -> None:
    spec = MethodSpec(name=name)
    rewards = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    valid = torch.tensor([[True, True, False, True], [True, False, False, False],
                          [True, True, True, True]])
    adv, taking = masked_advantages(rewards, valid, spec)
    fn = METHODS.get(name)
    # group 0: the estimator over its 3 valid samples
    assert torch.equal(adv[0, [0, 1, 3]], fn(rewards[0, [0, 1, 3]].unsqueeze(0), spec)[0])
    assert adv[0, 2] == 0 and not taking[0, 2]
    if name == "reinforce":  # no group statistic: a lone valid sample keeps its reward
        assert taking[1, 0] and adv[1, 0] == 1 and not taking[1, 1:].any()
    else:  # group 1 has one valid sample: no group statistic, no part in the update
        assert not taking[1].any() and not adv[1].any()
    assert torch.equal(adv[2], fn(rewards[2:], spec)[0])
    # every sample valid: exactly the estimator
    full, all_in = masked_advantages(rewards, torch.ones_like(valid), spec)
    assert torch.equal(full, fn(rewards, spec)) and bool(all_in.all())


def test_reinforce_batch_mean_baseline_is_the_mean_of_the_valid_samples() -> None:
    spec = MethodSpec(name="reinforce", params={"baseline": "batch_mean"})
    rewards = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    valid = torch.tensor([[True, False], [True, True]])
    adv, taking = masked_advantages(rewards, valid, spec)
    mean = 2 / 3
    assert torch.allclose(adv, torch.tensor([[1 - mean, 0.0], [1 - mean, -mean]]))
    assert torch.equal(taking, valid)


@pytest.mark.parametrize("loss_agg", ["seq_sum", "seq_mean", "token_mean"])
def test_a_group_without_rewards_changes_nothing_in_the_update(loss_agg: str) -> None:
    """Masking a whole group out gives the gradient of the batch without that group."""
    spec = MethodSpec(name="grpo", loss_agg=loss_agg)
    comp = [[3, 5, 2, 4], [4, 4, 6, 2], [5, 3, 3, 2]]
    full = make_batch([3, 4, 2], comp)
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    valid = torch.ones_like(rewards, dtype=torch.bool)
    valid[1] = False
    model = tiny_model()
    model.zero_grad()
    masked = backward_loss(spec, model, full, rewards, valid=valid)
    got = [p.grad.clone() for p in model.parameters() if p.grad is not None]

    rows = [i for i in range(12) if i // 4 != 1]
    sub = {k: v[rows] for k, v in full.items()}
    model.zero_grad()
    plain = backward_loss(spec, model, sub, rewards[[0, 2]])
    want = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    for key in ("pg_loss", "entropy", "adv_mean", "zero_var_groups", "completion_len"):
        assert masked[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-7), key


# ------------------------------------------------------------------ cells, end to end

SPEC = """\
name: infra-check
version: 1
models: [tiny]
methods:
  - name: reinforce
    loss_agg: seq_sum
controllers: [naive]
seeds: [0]
chain:
  campaigns: 1
  steps: {steps}
tasks:
  source: synthetic
  train: {train}
  eval: {eval}
  test: 16
eval:
  samples_per_task: 2
  max_new_tokens: 48
rollout:
  group_size: 8
  prompts_per_step: 8
  max_new_tokens: 48
  backend: lean
optim:
  lr: 3.0e-3
grader:
  timeout_s: 2
  memory_mb: 256
  workers: 2
"""


def _run(spec: Path, out: Path, share: float | None) -> subprocess.CompletedProcess[str]:
    import os

    env = dict(os.environ)
    env.pop("GRADER_SANDBOX_INJECT_SETUP_FAILURES", None)
    if share is not None:  # the real sandbox fails these samples' set-up (grader_sandbox)
        env["GRADER_SANDBOX_INJECT_SETUP_FAILURES"] = str(share)
    return subprocess.run([sys.executable, "-m", "harness.cli", "bench", str(spec), "--out",
                           str(out)], capture_output=True, text=True, timeout=900, env=env)


def _steps(out: Path) -> list[dict]:
    (trace,) = (out / "cells").glob("*/trace.jsonl")
    return [r for r in read_trace(trace) if r["type"] == "step"]


@pytest.mark.slow
def test_a_grader_failing_on_a_fifth_of_samples_stops_the_cell_in_one_line(
        tmp_path: Path) -> None:
    spec = tmp_path / "infra-check.yaml"
    spec.write_text(SPEC.format(steps=2, train=16, eval=32))
    out = tmp_path / "run"
    r = _run(spec, out, 0.2)
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stdout + r.stderr
    assert "grader.max_infra_share" in errors[0] and "SandboxSetupFailed" in errors[0]
    assert "re-run resumes" in errors[0]
    # the trace is kept, and a re-run with a healthy grader resumes and finishes
    assert (next((out / "cells").iterdir()) / "trace.jsonl").exists()
    again = _run(spec, out, None)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [s["step"] for s in _steps(out)] == [0, 1, 2]


@pytest.mark.slow
def test_a_grader_failing_on_two_percent_masks_and_counts_those_samples(tmp_path: Path) -> None:
    spec = tmp_path / "infra-check.yaml"
    spec.write_text(SPEC.format(steps=3, train=64, eval=240))
    out = tmp_path / "run"
    r = _run(spec, out, 0.02)
    assert r.returncode == 0, r.stdout + r.stderr
    steps = _steps(out)
    assert [s["step"] for s in steps] == [0, 1, 2, 3]
    infra = 0
    for s in steps:
        ev = s["verdicts"]["eval"]
        assert sum(ev[k] for k in KINDS) == s["eval_samples"] == 480
        infra += ev["infra"]
        scored = s["eval_samples"] - ev["infra"]
        # infrastructure failures are out of pass@1's denominator, not wrong answers
        assert s["eval_passes"] == ev["passed"]
        assert 0 <= s["eval_pass1"] <= 1 and scored > 0
        if s["step"] > 0:
            tr = s["verdicts"]["train"]
            assert sum(tr[k] for k in KINDS) == s["grading"]["train_samples"] == 64
            infra += tr["infra"]
            if tr["infra"]:  # the train reward is the mean over the samples with a reward
                assert s["train_reward"] == pytest.approx(
                    tr["passed"] / (64 - tr["infra"]))
    assert infra > 0, "no sample failed: the injection did not reach the sandbox"
    results = json.loads((out / "results.json").read_text())
    assert results["cells"][0]["status"] == "finished"


def test_the_grader_version_is_part_of_every_cells_identity(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    import grader_sandbox
    from harness.spec import expand_cells, load_spec

    spec, _ = load_spec("tiny-smoke")
    before = [c.cell_id for c in expand_cells(spec)]
    assert expand_cells(spec)[0].config["versions"]["grader"] == grader_sandbox.GRADER_VERSION
    monkeypatch.setattr(grader_sandbox, "GRADER_VERSION", "changed")
    after = [c.cell_id for c in expand_cells(spec)]
    assert before != after


def test_the_run_records_the_graders_identity() -> None:
    import grader_sandbox
    from harness.rundir import environment

    env = environment()
    assert env["grader"]["version"] == grader_sandbox.GRADER_VERSION
    assert len(env["grader"]["source_sha256"]) == 64
