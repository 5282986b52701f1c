"""The method zoo's own parts (issue #20), each against its definition: Clip-Cov and KL-Cov
on hand-computed cases from the paper's formulas (verl is their reference; TRL does not ship
them), DAPO's overlong penalty, the placebo, method defaults, inner iterations and the
options in a real cell on the built-in tiny policy. The TRL-shipped losses are checked
against TRL itself in test_methods_trl.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from harness.methods.losses import POLICY_LOSSES, PolicyInputs
from harness.methods.shaping import overlong_penalty, placebo_rewards
from harness.runner.trace import read_trace
from harness.spec import expand_cells, load_spec
from harness.spec.schema import MethodSpec

# Two sequences of three completion tokens; the second's last token is padding.
LOGP = [[-0.1, -2.0, -0.5], [-1.0, -0.2, -3.0]]
ADV = [1.0, -1.0]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
# Over the 5 real tokens: mean A = 0.2, mean logp = -0.76, so the covariance terms
# (A - 0.2)(logp + 0.76) are [[0.528, -0.992, 0.208], [0.288, -0.672, -]].
COV = [[0.528, -0.992, 0.208], [0.288, -0.672, 0.0]]


def _inputs(old_offset: dict[tuple[int, int], float], seed: int = 0) -> PolicyInputs:
    logp = torch.tensor(LOGP, requires_grad=True)
    old = torch.tensor(LOGP)
    for (i, t), d in old_offset.items():
        old[i, t] += d
    return PolicyInputs(logp, old, torch.tensor(ADV), torch.tensor(MASK), seed)


def _loss(name: str, inp: PolicyInputs, **params: float):
    spec = MethodSpec(name="grpo", policy_loss=name, policy_loss_params=params)
    return POLICY_LOSSES.get(name)(inp, spec.policy_loss_params)


def test_the_covariance_terms_are_the_papers():
    from harness.methods.losses import _covariance

    cov = _covariance(_inputs({}))
    assert torch.allclose(cov * torch.tensor(MASK), torch.tensor(COV), atol=1e-6)


def test_clip_cov_cuts_the_gradient_of_a_band_token_that_clipping_did_not_cut():
    # token (0, 0): ratio e^0.5 = 1.65 > 1.2 with A > 0, so the clip already cuts it; its
    # covariance 0.528 is in the band (0.25, 0.6) but it is not a candidate. Token (1, 0)
    # (0.288) is the only candidate: cut. n_cut = max(int(0.5 * 5), 1) = 2, one candidate.
    inp = _inputs({(0, 0): -0.5})
    terms = _loss("clip_cov", inp, ratio=0.5, cov_lb=0.25, cov_ub=0.6)
    cut = terms.flags["cov_selected"]
    assert cut.tolist() == [[False, False, False], [True, False, False]]
    assert terms.flags["clip_high"][0, 0] and not terms.flags["clip_high"][0, 1]
    per_token = terms.per_token * inp.mask
    # -min(r A, clip(r) A): clipped 1.2 at (0, 0), -A elsewhere (ratio 1), 0 where cut
    expected = torch.tensor([[-1.2, -1.0, -1.0], [0.0, 1.0, 0.0]])
    assert torch.allclose(per_token, expected, atol=1e-6)
    per_token.sum().backward()
    # gradient -A * r on kept unclipped tokens, 0 where clipped, cut or padding
    assert torch.allclose(inp.logp.grad, torch.tensor([[0.0, -1.0, -1.0], [0.0, 1.0, 0.0]]),
                          atol=1e-6)


def test_clip_cov_draws_its_share_of_the_band_seeded_per_step():
    # band (0.1, 0.6): (0, 0), (0, 2), (1, 0); ratio 0.2 -> n_cut = max(int(1.0), 1) = 1
    chosen = set()
    for seed in range(40):
        a = _loss("clip_cov", _inputs({}, seed), ratio=0.2, cov_lb=0.1, cov_ub=0.6)
        b = _loss("clip_cov", _inputs({}, seed), ratio=0.2, cov_lb=0.1, cov_ub=0.6)
        cut = a.flags["cov_selected"]
        assert torch.equal(cut, b.flags["cov_selected"])  # the same seed, the same draw
        assert int(cut.sum()) == 1
        chosen.add(tuple(cut.nonzero()[0].tolist()))
    assert chosen == {(0, 0), (0, 2), (1, 0)}  # every band token, nothing outside it


def test_kl_cov_penalises_the_largest_covariance_tokens_with_the_absolute_log_ratio():
    # k = max(1, int(5 * 0.4)) = 2 largest covariances: (0, 0) 0.528 and (1, 0) 0.288.
    # (1, 0) is off-policy: logp - old = -0.3, r = e^-0.3.
    r = math.exp(-0.3)
    for coef in (1.0, 2.0):
        inp = _inputs({(1, 0): 0.3})
        terms = _loss("kl_cov", inp, ratio=0.4, kl_coef=coef)
        assert terms.flags["cov_selected"].tolist() == [[True, False, False],
                                                        [True, False, False]]
        per_token = terms.per_token * inp.mask
        # -A r everywhere, + coef |logp - old| on the selected tokens
        expected = torch.tensor([[-1.0, -1.0, -1.0], [r + coef * 0.3, 1.0, 0.0]])
        assert torch.allclose(per_token, expected, atol=1e-6)
        per_token.sum().backward()
        # d/dlogp at (1, 0): r (from -A r, A = -1) + coef * sign(logp - old) = r - coef
        grad = torch.tensor([[-1.0, -1.0, -1.0], [r - coef, 1.0, 0.0]])
        assert torch.allclose(inp.logp.grad, grad, atol=1e-6)


def test_overlong_penalty_ramps_to_minus_factor_at_the_cap():
    lengths = torch.tensor([10, 40, 44, 48])
    pen = overlong_penalty(lengths, max_tokens=48, buffer=8, factor=0.5)
    assert pen.tolist() == pytest.approx([0.0, 0.0, -0.25, -0.5])


def test_placebo_permutes_the_rewards_over_the_samples_that_have_one():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, float("nan"), 1.0, 1.0]])
    a, b = placebo_rewards(rewards, 7), placebo_rewards(rewards, 7)
    assert torch.equal(a.isnan(), rewards.isnan()) and math.isnan(a[1, 1])
    assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))  # seeded
    valid = ~rewards.isnan()
    assert sorted(a[valid].tolist()) == sorted(rewards[valid].tolist())  # same rewards
    draws = {tuple(torch.nan_to_num(placebo_rewards(rewards, s)).reshape(-1).tolist())
             for s in range(20)}
    assert len(draws) > 5  # and it does move them


def test_a_methods_defaults_apply_and_the_spec_overrides_them():
    dapo = MethodSpec(name="dapo")
    assert (dapo.policy_loss, dapo.loss_agg) == ("clip", "token_mean")
    assert dapo.policy_loss_params == {"eps_low": 0.2, "eps_high": 0.28, "delta": None}
    assert dapo.dynamic_sampling is not None and dapo.dynamic_sampling.max_rounds == 3
    mine = MethodSpec(name="dapo", policy_loss="reinforce", loss_agg="seq_mean")
    assert (mine.policy_loss, mine.loss_agg, mine.policy_loss_params) == (
        "reinforce", "seq_mean", {})  # clip's params do not follow another loss
    assert MethodSpec(name="dr_grpo").loss_agg == "token_sum_norm"
    with pytest.raises(ValueError, match="eps_hi"):
        MethodSpec(name="grpo", policy_loss="clip", policy_loss_params={"eps_hi": 0.3})


# --------------------------------------------------------------------------- in a real cell
BODY = ("version: 1\nmodels: [tiny]\nseeds: [0]\n"
        "methods: [METHOD]\n"
        "chain: {campaigns: 1, steps: 3}\n"
        "tasks: {source: synthetic, train: 8, eval: 4, test: 4}\n"
        "eval: {samples_per_task: 1, temperature: 1.0, max_new_tokens: 16}\n"
        "rollout: {group_size: 4, prompts_per_step: 4, temperature: 1.0, max_new_tokens: 48}\n"
        "optim: {lr: 3.0e-3}\ngrader: {timeout_s: 2, memory_mb: 256, workers: 1}\n")


def _run(tmp_path: Path, name: str, method: str, pool) -> list[dict]:
    from harness.runner.cell import CellConfig, CellRunner

    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: zoo-{name}\n" + BODY.replace("METHOD", method))
    spec, _ = load_spec(str(path))
    (cell,) = expand_cells(spec)
    cell_dir = tmp_path / name
    cell_dir.mkdir()
    CellRunner(CellConfig.from_dict(cell.cell_id, cell.config), cell_dir, grader=pool).run()
    return [r for r in read_trace(cell_dir / "trace.jsonl") if r["type"] == "step"]


@pytest.fixture(scope="module")
def pool():
    from grader_sandbox import GraderPool

    with GraderPool(workers=1) as p:
        yield p


def test_each_option_records_its_fields_in_a_real_cell(tmp_path: Path, pool):
    method = ("{name: dapo, mini_batches: 2, overlong: {buffer: 8}, "
              "entropy: {coef: 0.01, adaptive: true, target: 1.0, top_quantile: 0.5}, "
              "kl: {beta: 0.05}, resets: {every: 2}}")
    steps = _run(tmp_path, "options", method, pool)
    train = [r for r in steps if r["step"] > 0]
    assert len(train) == 3
    for r in train:
        assert 0 <= r["groups_kept"] <= 4 and 0 <= r["sample_rounds"] <= 3
        if r["groups_kept"]:
            for key in ("clip_low_frac", "clip_high_frac", "entropy_tokens_frac",
                        "entropy_acting", "entropy_coef"):
                assert math.isfinite(r[key]), (key, r)
            # adaptive: no bonus before an entropy at or below the target has been seen
            assert ("entropy_bonus" in r) == (r["step"] > 1 and r["entropy_coef"] > 0), r
            assert 0 < r["entropy_tokens_frac"] <= 1
    # adaptive: the coefficient moves by coef_delta from step to step (entropy is far below
    # the target of 1 nat, so it rises)
    coefs = [r["entropy_coef"] for r in train if "entropy_coef" in r]
    assert coefs == sorted(coefs) and coefs[-1] > coefs[0]
    assert [r.get("reset") for r in train] == [None, 1.0, None]  # every 2 steps


def test_placebo_trains_on_other_rewards_than_the_true_ones(tmp_path: Path, pool):
    plain = _run(tmp_path, "plain", "{name: reinforce}", pool)
    placebo = _run(tmp_path, "placebo", "{name: reinforce, placebo: true}", pool)
    # the same samples at step 1 (same seeds): the recorded train reward is the true one
    assert placebo[1]["train_reward"] == plain[1]["train_reward"]
    assert placebo[1]["pg_loss"] != plain[1]["pg_loss"]  # but the update saw other rewards


def test_inner_iterations_take_mu_times_mini_batches_optimizer_steps(monkeypatch):
    """mu x mini_batches optimizer steps a batch. The first is on-policy (ratio 1: nothing
    clipped, even at eps 1e-6); mini-batch 1's old log-probs are taken before the first step,
    so its first pass, after that step, is off-policy, and so is every later pass."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import harness.methods as hm
    from harness.runner.update import LocalUpdate, Regularizers
    from harness.spec.schema import OptimSpec

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).train()
    g = torch.Generator().manual_seed(0)
    n, t = 8, 12
    batch = {"input_ids": torch.randint(3, 40, (n, t), generator=g),
             "attention_mask": torch.ones(n, t, dtype=torch.long),
             "completion_mask": torch.zeros(n, t, dtype=torch.long)}
    batch["completion_mask"][:, 4:] = 1
    rewards = [[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]]
    seen: list[dict[str, float]] = []
    real = hm.backward_loss

    def spy(*args, **kw):
        seen.append(real(*args, **kw))
        return seen[-1]

    monkeypatch.setattr(hm, "backward_loss", spy)
    method = MethodSpec(name="grpo", policy_loss="clip", loss_agg="token_mean", mu=2,
                        mini_batches=2, policy_loss_params={"eps_low": 1e-6})
    update = LocalUpdate(method, OptimSpec(lr=1e-2), model, 1e-2, Regularizers(None, None),
                         1.0)
    result = update.step(batch, rewards, lr=1e-2, seed=1)
    assert len(seen) == 4  # mu 2 x 2 mini-batches, each one backward pass
    clipped = [s["clip_low_frac"] + s["clip_high_frac"] for s in seen]
    assert clipped[0] == 0 and all(c > 0 for c in clipped[1:]), clipped
    assert {int(s["step"]) for s in update.optimizer.state.values()} == {4}
    assert math.isfinite(result.grad_norm)
    # the step's metrics: the first pass's means; the clip shares: means over all four
    assert result.metrics["clip_low_frac"] + result.metrics["clip_high_frac"] == (
        pytest.approx(sum(clipped) / 4))
