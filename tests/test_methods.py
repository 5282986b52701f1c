"""Methods: advantage estimators, log-probs, loss aggregation, KL, EWC and the step entry point."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.methods import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    METHODS,
    EWCState,
    MasterWeightsAdamW,
    aggregate,
    aggregation_weights,
    apply_gradients,
    backward_loss,
    compute_loss,
    estimate_fisher,
    kl_k1,
    kl_k3,
    kl_per_token,
    make_optimizer,
    make_reference,
    optimizer_step,
    pg_per_token,
    token_logprobs,
)
from harness.spec.schema import EWCConfig, KLConfig, MethodSpec

torch.set_num_threads(1)
VOCAB = 40


def tiny_model(seed: int = 0) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False)
    return Qwen2ForCausalLM(cfg).float().train()


def make_batch(prompt_lens: list[int], comp_lens: list[list[int]], seed: int = 1) -> dict:
    """Right-padded, prompt-major batch as `Rollouts.to_batch()` gives (padding id 0)."""
    g = torch.Generator().manual_seed(seed)
    seqs, starts = [], []
    for plen, row in zip(prompt_lens, comp_lens, strict=True):
        prompt = torch.randint(2, VOCAB, (plen,), generator=g)
        for clen in row:
            seqs.append(torch.cat([prompt, torch.randint(2, VOCAB, (clen,), generator=g)]))
            starts.append(plen)
    T = max(len(s) for s in seqs) + 1  # at least one padding column
    n = len(seqs)
    ids, am, cm = (torch.zeros(n, T, dtype=torch.long) for _ in range(3))
    for i, (s, p) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, :len(s)] = s
        am[i, :len(s)] = 1
        cm[i, p:len(s)] = 1
    return {"input_ids": ids, "attention_mask": am, "completion_mask": cm}


@pytest.fixture(scope="module")
def batch() -> dict:
    return make_batch([3, 5], [[4, 2, 6, 5], [1, 3, 6, 2]])


REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])


# --------------------------------------------------------------------------- advantages
def test_registry_lists_the_methods_and_the_spec_accepts_them():
    assert METHODS.names() == ["dapo", "dr_grpo", "grpo", "gspo", "reinforce", "rloo"]
    for name in METHODS:
        assert MethodSpec(name=name).name == name
    with pytest.raises(ValueError, match="unknown method"):
        MethodSpec(name="grpoo")


def test_reinforce_advantage_is_the_reward_or_reward_minus_batch_mean():
    r = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert torch.equal(METHODS.get("reinforce")(r, MethodSpec(name="reinforce")), r)
    adv = METHODS.get("reinforce")(r, MethodSpec(name="reinforce",
                                                 params={"baseline": "batch_mean"}))
    assert torch.allclose(adv, torch.tensor([[0.25, -0.75], [0.25, 0.25]]))


def test_grpo_uses_the_unbiased_group_std_plus_eps():
    spec = MethodSpec(name="grpo", params={"eps": 1e-4})
    adv = METHODS.get("grpo")(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), spec)
    std = math.sqrt((0.75**2 + 3 * 0.25**2) / 3)  # Bessel-corrected, as TRL
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25]]) / (std + 1e-4)
    assert torch.allclose(adv, expected)


def test_rloo_subtracts_the_mean_of_the_other_completions():
    adv = METHODS.get("rloo")(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), MethodSpec(name="rloo"))
    assert torch.allclose(adv, torch.tensor([[1 - 1 / 3, -2 / 3, -2 / 3, 1 - 1 / 3]]))


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_all_equal_groups_and_single_completions_get_zero_advantage(name):
    spec = MethodSpec(name=name)
    fn = METHODS.get(name)
    assert torch.equal(fn(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), spec),
                       torch.zeros(2, 3))
    assert torch.equal(fn(torch.tensor([[1.0], [0.0]]), spec), torch.zeros(2, 1))


# --------------------------------------------------------------------------- aggregation
def test_aggregation_modes_give_their_documented_values():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert aggregate(per_token, mask, "token_mean").item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert aggregate(per_token, mask, "seq_mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert aggregate(per_token, mask, "seq_sum").item() == pytest.approx((6.0 + 4.0) / 2)
    assert aggregate(per_token, mask, "token_sum_norm", 8).item() == pytest.approx(
        (1 + 2 + 3 + 4) / (2 * 8))
    assert set(AGGREGATIONS.names()) == {"token_mean", "seq_mean", "seq_sum", "token_sum_norm"}


def test_seq_sum_is_the_classic_reinforce_estimator():
    logp = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    loss = aggregate(pg_per_token(logp, adv), mask, "seq_sum")
    loss.backward()
    classic = -((logp.detach() * mask).sum(-1) * adv).mean()
    assert loss.item() == pytest.approx(-(2.0 * 2 - 1.0 * 1) / 2)  # ratio = 1 in value
    assert torch.allclose(logp.grad, -(adv[:, None] * mask) / 2)
    assert classic.item() == pytest.approx(-(2.0 * -3.0 + -1.0 * -0.5) / 2)


# --------------------------------------------------------------------------- log-probs
def test_token_logprobs_match_a_full_log_softmax_and_are_zero_off_completion(batch):
    model = tiny_model()
    with torch.no_grad():
        logp, ent, mask = token_logprobs(model, **batch, chunk_tokens=5)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    full = torch.log_softmax(logits.float(), -1)[:, :-1]
    ref_logp = full.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    ref_ent = -(full.exp() * full).sum(-1)
    expected_mask = (batch["completion_mask"][:, 1:] * batch["attention_mask"][:, 1:]).float()
    assert logp.shape == ent.shape == mask.shape == (8, batch["input_ids"].size(1) - 1)
    assert torch.equal(mask, expected_mask)
    assert torch.allclose(logp, ref_logp * mask, atol=1e-5)
    assert torch.allclose(ent, ref_ent * mask, atol=1e-5)
    assert torch.all(logp[mask == 0] == 0) and torch.all(ent[mask == 0] == 0)
    assert mask.sum().item() == 29  # completion tokens of the fixture


def test_chunked_log_probs_give_the_full_log_softmax_gradient(batch):
    def grads(chunk_tokens: int | None, plain_head: bool = True) -> list[torch.Tensor]:
        model = tiny_model()
        if not plain_head:  # forces the fallback through the model's own logits
            model.config.final_logit_softcapping = 30.0
        mask = batch["completion_mask"][:, 1:].float()
        if chunk_tokens is None:
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits[:, :-1]
            logp = torch.log_softmax(logits, -1).gather(
                -1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        else:
            logp, _, mask = token_logprobs(model, **batch, chunk_tokens=chunk_tokens)
        (logp * mask * torch.arange(1.0, mask.size(1) + 1)).sum().backward()
        return [p.grad for p in model.parameters()]

    reference = grads(None)
    for got in (grads(3), grads(1024), grads(4, plain_head=False)):
        for a, b in zip(got, reference, strict=True):
            assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_gradients_flow_only_through_completion_tokens(batch):
    model = tiny_model()
    emb = model.get_input_embeddings()
    captured = {}

    def keep(_module, _inputs, out):
        out.retain_grad()
        captured["h"] = out

    emb.register_forward_hook(keep)
    loss, _ = compute_loss(MethodSpec(name="reinforce"), model, batch, torch.ones(2, 4))
    loss.backward()
    # Perturbing a token's embedding can only move the loss through the completion tokens it
    # predicts; the last position and padding predict nothing scored.
    grad = captured["h"].grad.abs().sum(-1)  # [N, T]
    scored_next = torch.zeros_like(batch["completion_mask"])
    scored_next[:, :-1] = batch["completion_mask"][:, 1:]
    causal_reach = scored_next.flip(1).cummax(1).values.flip(1)  # positions before a scored one
    assert torch.all(grad[causal_reach == 0] == 0)
    assert torch.all(grad[batch["attention_mask"] == 0] == 0)
    assert torch.all(grad[causal_reach == 1] > 0)


def test_padding_and_prompt_tokens_do_not_change_the_loss(batch):
    model = tiny_model()
    spec = MethodSpec(name="grpo", loss_agg="seq_mean")
    loss_a, _ = compute_loss(spec, model, batch, REWARDS)
    padded = {k: torch.nn.functional.pad(v, (0, 3)) for k, v in batch.items()}
    padded["input_ids"][:, -3:] = 7  # garbage under padding
    loss_b, _ = compute_loss(spec, model, padded, REWARDS)
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-6)


# --------------------------------------------------------------------------- KL
finite = st.floats(min_value=-30.0, max_value=0.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(finite, finite), min_size=1, max_size=20))
def test_k3_is_never_negative(pairs):
    logp = torch.tensor([p for p, _ in pairs], dtype=torch.float64)
    ref = torch.tensor([r for _, r in pairs], dtype=torch.float64)
    assert torch.all(kl_k3(logp, ref) >= 0)


@settings(max_examples=50, deadline=None)
@given(st.lists(finite, min_size=1, max_size=20))
def test_k1_and_k3_are_zero_when_policy_equals_reference(values):
    logp = torch.tensor(values)
    assert torch.all(kl_k1(logp, logp) == 0)
    assert torch.all(kl_k3(logp, logp) == 0)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_ratio_correction_adds_the_score_function_term_to_the_kl_gradient(estimator):
    ref = torch.tensor([-1.0, -2.0, -0.3])
    logp = torch.tensor([-1.5, -1.0, -0.3], requires_grad=True)
    kl_per_token(logp, ref, estimator, ratio_correction=False).sum().backward()
    plain = logp.grad.clone()
    logp.grad = None
    corrected = kl_per_token(logp, ref, estimator, ratio_correction=True)
    corrected.sum().backward()
    value = KL_ESTIMATORS.get(estimator)(logp.detach(), ref)
    assert torch.allclose(corrected.detach(), value)  # same value, ratio = 1
    assert torch.allclose(logp.grad, plain + value)


def test_kl_penalty_is_zero_against_an_identical_reference_and_positive_otherwise(batch):
    model = tiny_model()
    ref = make_reference(model)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    spec = MethodSpec(name="grpo", kl=KLConfig(beta=0.5, estimator="k3"))
    base, _ = compute_loss(MethodSpec(name="grpo"), model, batch, REWARDS)
    loss, m = compute_loss(spec, model, batch, REWARDS, ref_model=ref)
    assert m["kl_to_ref"] == pytest.approx(0.0, abs=1e-7)
    assert loss.item() == pytest.approx(base.item(), abs=1e-6)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    loss2, m2 = compute_loss(spec, model, batch, REWARDS, ref_model=ref)
    assert m2["kl_to_ref"] > 0 and m2["kl_penalty"] > 0
    assert loss2.item() == pytest.approx(base.item() + m2["kl_penalty"], rel=1e-5)
    with pytest.raises(ValueError, match="ref_model"):
        compute_loss(spec, model, batch, REWARDS)


# --------------------------------------------------------------------------- EWC
def test_fisher_is_finite_and_non_negative_for_any_micro_batch(batch):
    model = tiny_model()
    f1 = estimate_fisher(model, [batch])
    f4 = estimate_fisher(model, [batch], micro_batch=4)
    names = {n for n, _ in model.named_parameters()}
    assert set(f1) == set(f4) == names
    for name, f in f1.items():
        assert f.shape == dict(model.named_parameters())[name].shape
        assert torch.isfinite(f).all() and (f >= 0).all()
        assert torch.isfinite(f4[name]).all() and (f4[name] >= 0).all()
    assert sum(f.sum() for f in f1.values()) > 0
    assert model.training  # train mode restored


def test_ewc_penalty_is_zero_at_the_anchor_and_quadratic_in_displacement():
    model = tiny_model()
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    state = EWCState.from_model(model, fisher)
    assert state.penalty(model).item() == 0.0
    direction = {n: torch.randn_like(p) for n, p in model.named_parameters()}

    def penalty_at(scale: float) -> float:
        moved = tiny_model()
        with torch.no_grad():
            for n, p in moved.named_parameters():
                p.copy_(state.anchor[n] + scale * direction[n])
        return state.penalty(moved).item()

    p1, p2 = penalty_at(0.01), penalty_at(0.02)
    assert p1 > 0 and p2 / p1 == pytest.approx(4.0, rel=1e-3)
    expected = 0.5 * sum((fisher[n] * (0.01 * direction[n]) ** 2).sum() for n in fisher)
    assert p1 == pytest.approx(float(expected), rel=1e-3)


def test_ewc_penalty_enters_the_loss_weighted_by_lambda(batch):
    model = tiny_model()
    state = EWCState.from_model(model, estimate_fisher(model, [batch], micro_batch=8))
    spec = MethodSpec(name="rloo", ewc=EWCConfig(lam=10.0))
    _, m0 = compute_loss(spec, model, batch, REWARDS, ewc=state)
    assert m0["ewc_penalty"] == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    loss, m1 = compute_loss(spec, model, batch, REWARDS, ewc=state)
    assert m1["ewc_penalty"] == pytest.approx(10.0 * state.penalty(model).item(), rel=1e-6)
    assert loss.item() == pytest.approx(m1["pg_loss"] + m1["ewc_penalty"], rel=1e-5, abs=1e-7)
    with pytest.raises(ValueError, match="ewc"):
        compute_loss(spec, model, batch, REWARDS)


# --------------------------------------------------------------------------- the step
def test_compute_loss_reports_every_metric(batch):
    model = tiny_model()
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
    loss, m = compute_loss(MethodSpec(name="rloo", loss_agg="token_mean"), model, batch, rewards)
    assert loss.dim() == 0 and loss.requires_grad
    assert set(m) == {"loss", "pg_loss", "kl_to_ref", "kl_penalty", "ewc_penalty", "entropy",
                      "adv_mean", "adv_abs_mean", "zero_var_groups", "completion_len",
                      "logp_adv_cov"}
    assert m["zero_var_groups"] == 0.5
    assert m["completion_len"] == pytest.approx(29 / 8)
    assert math.isnan(m["kl_to_ref"])
    assert 0 < m["entropy"] <= math.log(VOCAB) + 1e-4
    adv = torch.tensor([0, 0, 0, 0, -1, 1 / 3, 1 / 3, 1 / 3])
    assert m["adv_mean"] == pytest.approx(0.0, abs=1e-7)
    assert m["adv_abs_mean"] == pytest.approx(adv.abs().mean().item())
    # Cov(logp, A) over the completion tokens, each token carrying its sequence's advantage
    logp, _, mask = token_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                   batch["completion_mask"])
    on = mask.bool()
    x, a = logp.detach()[on], adv.unsqueeze(1).expand_as(logp)[on]
    want = float(((x - x.mean()) * (a - a.mean())).mean())
    assert m["logp_adv_cov"] == pytest.approx(want, rel=1e-5, abs=1e-8)
    assert m["logp_adv_cov"] != 0.0
    with pytest.raises(ValueError, match="P\\*G"):
        compute_loss(MethodSpec(name="rloo"), model, batch, rewards[:1])


def test_optimizer_step_returns_the_pre_clip_norm_and_moves_the_policy(batch):
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, _ = compute_loss(MethodSpec(name="reinforce"), model, batch, REWARDS)
    loss.backward()
    expected = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters())).item()
    loss, _ = compute_loss(MethodSpec(name="reinforce"), model, batch, REWARDS)
    norm = optimizer_step(model, opt, loss, grad_clip=1e-3)
    assert norm == pytest.approx(expected, rel=1e-5) and norm > 1e-3
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


def test_optimizer_step_skips_a_non_finite_update(batch):
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss, _ = compute_loss(MethodSpec(name="reinforce"), model, batch, REWARDS)
    norm = optimizer_step(model, opt, loss * float("nan"), grad_clip=1.0)
    assert not math.isfinite(norm)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


# --------------------------------------------------------------------------- micro-batches
def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def _moved(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """A copy of `model` a little away from it (so KL and EWC terms are not zero)."""
    import copy

    moved = copy.deepcopy(model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return moved


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean", "seq_sum"])
@pytest.mark.parametrize("micro", [1, 3, 5])
@pytest.mark.parametrize("penalties", ["none", "kl+ewc"])
def test_micro_batched_backward_gives_the_whole_batch_gradient(loss_agg, micro, penalties):
    # uneven micro-batches (8 rows in 3s and 5s), unequal lengths, one row without completion
    batch = make_batch([3, 5], [[4, 2, 0, 5], [1, 3, 6, 2]])
    model = tiny_model()
    ref = ewc = None
    kw = {}
    if penalties != "none":
        ref = make_reference(_moved(model))
        ewc = EWCState.from_model(_moved(model, 0.01),
                                  estimate_fisher(model, [batch], micro_batch=8))
        kw = {"kl": KLConfig(beta=0.3), "ewc": EWCConfig(lam=5.0)}
    spec = MethodSpec(name="grpo", loss_agg=loss_agg, **kw)

    loss, whole = compute_loss(spec, model, batch, REWARDS, ref_model=ref, ewc=ewc)
    loss.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    split = backward_loss(spec, model, batch, REWARDS, ref_model=ref, ewc=ewc,
                          micro_batch_size=micro)
    for got, want in zip(_grads(model), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert set(split) == set(whole)
    for key, value in whole.items():
        if math.isnan(value):
            assert math.isnan(split[key]), key
        else:
            assert split[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    if penalties != "none":
        assert whole["kl_penalty"] > 0 and whole["ewc_penalty"] > 0


def test_one_micro_batch_is_exactly_the_whole_batch_step(batch):
    model = tiny_model()
    spec = MethodSpec(name="rloo")
    loss, whole = compute_loss(spec, model, batch, REWARDS)
    loss.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    assert backward_loss(spec, model, batch, REWARDS, micro_batch_size=8) == whole
    assert all(torch.equal(a, b) for a, b in zip(_grads(model), expected, strict=True))


def test_accumulated_gradients_update_like_optimizer_step(batch):
    spec = MethodSpec(name="reinforce")
    a, b = tiny_model(), tiny_model()
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2)
    loss, _ = compute_loss(spec, a, batch, REWARDS)
    norm_a = optimizer_step(a, opt_a, loss, grad_clip=0.5)
    opt_b.zero_grad(set_to_none=True)
    backward_loss(spec, b, batch, REWARDS, micro_batch_size=2)
    norm_b = apply_gradients(b, opt_b, grad_clip=0.5)
    assert norm_b == pytest.approx(norm_a, rel=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in b.parameters())


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean", "seq_sum"])
def test_aggregation_weights_reproduce_the_aggregate(loss_agg, batch):
    mask = (batch["completion_mask"][:, 1:] * batch["attention_mask"][:, 1:]).float()
    w = aggregation_weights(mask, loss_agg)
    x = torch.randn(mask.shape)
    assert (w * x).sum().item() == pytest.approx(aggregate(x, mask, loss_agg).item(), rel=1e-5)
    assert (w[mask == 0] == 0).all()


def test_a_non_linear_aggregation_cannot_be_split(batch):
    from harness.errors import UserError

    AGGREGATIONS.add("rms_test", lambda x, m, _max=0: ((x * m) ** 2).sum().sqrt())
    try:
        with pytest.raises(UserError, match=r"'rms_test' is not linear.*micro_batch_size: null"):
            aggregation_weights(batch["completion_mask"][:, 1:], "rms_test")
    finally:
        AGGREGATIONS._items.pop("rms_test")


def test_gradient_checkpointing_gives_the_same_gradient(batch):
    spec = MethodSpec(name="grpo")
    plain, ckpt = tiny_model(), tiny_model()
    from harness.policy import enable_activation_checkpointing

    assert enable_activation_checkpointing(ckpt)
    layers = [m for m in ckpt.modules() if type(m).__name__.endswith("DecoderLayer")]
    assert len(layers) == 2 and all(m.gradient_checkpointing for m in layers)
    calls = {}
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        calls[name] = 0
        # a module inside the layer: the recompute replays the layer's forward, not its hooks
        layer = next(m for m in model.modules() if type(m).__name__.endswith("DecoderLayer"))

        def count(*_: object, name: str = name) -> None:
            calls[name] += 1

        layer.mlp.register_forward_pre_hook(count)  # (the recompute stops early, in mlp)
        backward_loss(spec, model, batch, REWARDS, micro_batch_size=3)
    # 3 micro-batches; with checkpointing each layer runs again in each backward pass
    assert calls == {"plain": 3, "ckpt": 6}
    for a, b in zip(_grads(plain), _grads(ckpt), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- master weights
def _changed_fraction(before: list[torch.Tensor], model: torch.nn.Module) -> float:
    changed = sum(int((a != p).sum()) for a, p in zip(before, model.parameters(), strict=True))
    return changed / sum(p.numel() for p in model.parameters())


def test_plain_adamw_loses_small_updates_on_bf16_weights_and_master_weights_keep_them(batch):
    """The reason master weights exist: at lr 1e-6 a step on bf16 weights rounds away."""
    lost, kept = tiny_model().bfloat16(), tiny_model().bfloat16()
    plain = make_optimizer(lost, lr=1e-6, betas=(0.9, 0.999), weight_decay=0.0,
                           master_weights="none")
    master = make_optimizer(kept, lr=1e-6, betas=(0.9, 0.999), weight_decay=0.0)
    assert isinstance(plain, torch.optim.AdamW) and isinstance(master, MasterWeightsAdamW)
    spec = MethodSpec(name="reinforce")
    before = [p.detach().clone() for p in lost.parameters()]
    for model, opt in ((lost, plain), (kept, master)):
        for _ in range(50):
            opt.zero_grad(set_to_none=True)
            backward_loss(spec, model, batch, REWARDS, micro_batch_size=4)
            apply_gradients(model, opt, grad_clip=1.0)
    # 50 steps of ~1e-6 each: bf16 weights of magnitude ~0.02 are 1.2e-4 apart. Measured:
    # plain AdamW 2.4% of the weights changed after 1 step and still 2.4% after 50 (only
    # those near zero ever move); master weights 2.4% after 1, 15% after 10, 54% after 50.
    assert _changed_fraction(before, lost) < 0.05
    assert _changed_fraction(before, kept) > 0.3
    moved = sum(float((m - b.float()).abs().sum())
                for m, b in zip(master.masters, before, strict=True))
    assert moved > 0
    for p, m in zip(kept.parameters(), master.masters, strict=True):
        assert p.dtype == torch.bfloat16 and m.dtype == torch.float32
        assert torch.equal(p, m.to(torch.bfloat16))  # the model is the rounded master


def test_master_weights_step_like_float32_adamw_on_the_same_gradients(batch):
    model = tiny_model().bfloat16()
    opt = make_optimizer(model, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    shadow = [p.detach().float().clone().requires_grad_(True) for p in model.parameters()]
    ref = torch.optim.AdamW(shadow, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        backward_loss(MethodSpec(name="grpo"), model, batch, REWARDS)
        for s, p in zip(shadow, model.parameters(), strict=True):
            s.grad = p.grad.float()
        norm_ref = float(torch.nn.utils.clip_grad_norm_(shadow, 0.5))
        ref.step()
        norm = apply_gradients(model, opt, grad_clip=0.5)
        assert norm == pytest.approx(norm_ref, rel=1e-6)
        for s, m in zip(shadow, opt.masters, strict=True):
            assert torch.equal(s.detach(), m)
    assert all(p.grad is None for p in model.parameters())
    assert all(m.grad is None for m in opt.masters)


def test_master_weights_skip_a_non_finite_update(batch):
    model = tiny_model().bfloat16()
    opt = make_optimizer(model, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    masters = [m.clone() for m in opt.masters]
    loss, _ = compute_loss(MethodSpec(name="reinforce"), model, batch, REWARDS)
    assert not math.isfinite(optimizer_step(model, opt, loss * float("nan"), grad_clip=1.0))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(torch.equal(a, m) for a, m in zip(masters, opt.masters, strict=True))


def test_float32_models_get_plain_adamw():
    model = tiny_model()
    opt = make_optimizer(model, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    assert type(opt) is torch.optim.AdamW
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in model.parameters()]


def test_master_weights_sum_micro_batch_gradients_in_float32(batch):
    model = tiny_model().bfloat16()
    exact = tiny_model().float()  # the same (bf16-representable) weights in float32
    exact.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    spec = MethodSpec(name="grpo")
    backward_loss(spec, exact, batch, REWARDS, micro_batch_size=3)
    opt = make_optimizer(model, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    calls = []

    def after() -> None:
        opt.accumulate_grads()
        calls.append(all(p.grad is None for p in model.parameters()))

    backward_loss(spec, model, batch, REWARDS, micro_batch_size=3, after_backward=after)
    assert calls == [True, True, True]  # 8 rows in 3s: the 16-bit gradients freed each time
    got = torch.cat([m.grad.flatten() for m in opt.masters])
    want = torch.cat([p.grad.flatten() for p in exact.parameters()])
    assert got.dtype == torch.float32
    # bf16 forward passes: within bf16 rounding of the float32 gradient (measured ~0.5%)
    assert float((got - want).norm() / want.norm()) < 0.02


def test_master_weights_step_moves_model_gradients_itself(batch):
    a, b = tiny_model().bfloat16(), tiny_model().bfloat16()
    opt_a = make_optimizer(a, lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0)
    opt_b = make_optimizer(b, lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0)
    for model in (a, b):
        backward_loss(MethodSpec(name="reinforce"), model, batch, REWARDS)
    opt_a.step()  # without master_grads first
    apply_gradients(b, opt_b, grad_clip=1e9)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(m, p.float()) for m, p in
               zip(opt_a.masters, tiny_model().bfloat16().parameters(), strict=True))


def test_fisher_chunks_and_checkpointing_keep_the_estimate(batch):
    from harness.policy import enable_activation_checkpointing

    model = tiny_model()
    whole = estimate_fisher(model, [batch], micro_batch=4)
    ckpt = tiny_model()
    assert enable_activation_checkpointing(ckpt)
    layer = next(m for m in ckpt.modules() if type(m).__name__.endswith("DecoderLayer"))
    calls = []
    layer.mlp.register_forward_pre_hook(lambda *_: calls.append(layer.mlp.training))
    chunked = estimate_fisher(ckpt, [batch], micro_batch=4, chunk=3)
    for name, f in whole.items():
        torch.testing.assert_close(chunked[name], f, rtol=1e-4, atol=1e-10)
    # 2 micro-batches of 4 in chunks of 3 and 1: 4 passes, each recomputed once, all in
    # eval mode (no dropout); the model is back in train mode afterwards
    assert len(calls) == 8 and not any(calls)
    assert ckpt.training and all(m.training for m in ckpt.modules())
