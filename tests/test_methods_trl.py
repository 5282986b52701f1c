"""Reference check: native GRPO agrees with TRL's GRPOTrainer on the same batch.

TRL's side runs through TRL's own code: a real `GRPOTrainer` (tiny Qwen2 saved to a temporary
directory, so TRL loads the policy and, with beta > 0, its reference itself) and its
`compute_loss(model, inputs)` on a hand-built `inputs` dict with the keys the installed TRL
reads (prompt_ids/prompt_mask left-padded, completion_ids/completion_mask right-padded,
advantages [N], num_items_in_batch, ref_per_token_logps when beta > 0). The KL term is checked
with and without TRL's `use_bias_correction_kl` (on by default in TRL 1.x), which the native
side calls `ratio_correction`. The native side gets
the same sequences in the harness layout (right-padded prompt + completion). Both the loss
and the gradient of every parameter must agree.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from harness.methods import METHODS, compute_loss
from harness.spec.schema import KLConfig, MethodSpec

trl = pytest.importorskip("trl", reason="trl is not installed: the TRL reference check needs it")

torch.set_num_threads(1)
VOCAB, P, G = 40, 2, 4
PROMPT_LENS = [3, 5]
COMPLETION_LENS = [[4, 2, 6, 5], [1, 3, 6, 2]]
REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])
# relative, on the loss (floored at |loss| = 1e-2: GRPO's loss value is ~0 by construction)
# and on the whole gradient vector (L2 norm of the difference / norm of TRL's gradient)
TOL = 1e-5
MAX_NEW = 8  # TRL max_completion_length, the native max_tokens


def _tiny_checkpoint(path: str) -> dict[str, torch.Tensor]:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg).float()
    model.save_pretrained(path)
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")),
        pad_token="t0", eos_token="t1", unk_token="t0")
    tok.save_pretrained(path)
    return model.state_dict()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, torch.Tensor]]:
    path = str(tmp_path_factory.mktemp("tiny-qwen2"))
    return path, _tiny_checkpoint(path)


def _sequences() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The same P*G sequences in TRL's layout and in the harness layout."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, VOCAB, (n,), generator=g) for n in PROMPT_LENS]
    comps = [[torch.randint(2, VOCAB, (n,), generator=g) for n in row] for row in COMPLETION_LENS]
    n, lp, lc = P * G, max(PROMPT_LENS), max(max(r) for r in COMPLETION_LENS)
    t = lp + lc + 1
    z = lambda *shape: torch.zeros(*shape, dtype=torch.long)  # noqa: E731
    trl_in = {"prompt_ids": z(n, lp), "prompt_mask": z(n, lp),
              "completion_ids": z(n, lc), "completion_mask": z(n, lc)}
    native = {"input_ids": z(n, t), "attention_mask": z(n, t), "completion_mask": z(n, t)}
    for p in range(P):
        for j in range(G):
            i, pr, c = p * G + j, prompts[p], comps[p][j]
            trl_in["prompt_ids"][i, lp - len(pr):] = pr
            trl_in["prompt_mask"][i, lp - len(pr):] = 1
            trl_in["completion_ids"][i, :len(c)] = c
            trl_in["completion_mask"][i, :len(c)] = 1
            seq = torch.cat([pr, c])
            native["input_ids"][i, :len(seq)] = seq
            native["attention_mask"][i, :len(seq)] = 1
            native["completion_mask"][i, len(pr):len(seq)] = 1
    return trl_in, native


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for _, p in sorted(model.named_parameters())])


def _assert_agree(label: str, loss: torch.Tensor, trl_loss: torch.Tensor,
                  native: torch.nn.Module, trl_model: torch.nn.Module, record_property) -> None:
    """The native loss and gradient equal TRL's within TOL (relative; the loss floored at
    |loss| = 1e-2), recorded as test properties."""
    loss_err = abs(loss.item() - trl_loss.item()) / max(abs(trl_loss.item()), 1e-2)
    grad_err = _rel(_flat_grad(native), _flat_grad(trl_model))
    record_property("loss_rel_err", loss_err)
    record_property("grad_rel_err", grad_err)
    print(f"{label}: loss {loss.item():.6g} vs {trl_loss.item():.6g} (rel {loss_err:.1e}), "
          f"grad rel {grad_err:.1e}")
    assert loss_err < TOL
    assert grad_err < TOL


def _spec(loss_agg: str, beta: float, ratio_correction: bool) -> MethodSpec | SimpleNamespace:
    if beta == 0:
        return MethodSpec(name="grpo", loss_agg=loss_agg)
    if "ratio_correction" in KLConfig.model_fields:
        kl = KLConfig(beta=beta, estimator="k3", ratio_correction=ratio_correction)
        return MethodSpec(name="grpo", loss_agg=loss_agg, kl=kl)
    # The schema predates the field: the same spec with the attribute compute_loss reads.
    spec = MethodSpec(name="grpo", loss_agg=loss_agg, kl=KLConfig(beta=beta, estimator="k3"))
    kl = SimpleNamespace(**dict(spec.kl), ratio_correction=ratio_correction)
    return SimpleNamespace(**{**dict(spec), "kl": kl}, arm=spec.arm)


def _trainer(path: str, **config: object):  # -> trl.GRPOTrainer
    """A real GRPOTrainer over the tiny checkpoint, set up for one micro-batch of P*G."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=path + "/out", report_to=[], use_cpu=True, bf16=False,
        num_generations=G, per_device_train_batch_size=P * G, max_completion_length=MAX_NEW,
        save_strategy="no", **config)
    trainer = GRPOTrainer(
        model=path, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
        train_dataset=Dataset.from_dict({"prompt": ["t2 t3"] * (P * G)}))
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; one micro-batch
    return trainer


CASES = [
    # (native loss_agg, TRL loss_type, beta, temperature, KL ratio correction)
    ("seq_mean", "grpo", 0.0, 1.0, True),
    ("seq_mean", "grpo", 0.2, 1.0, True),
    ("seq_mean", "grpo", 0.2, 1.0, False),
    ("seq_mean", "grpo", 0.2, 0.7, True),
    ("token_mean", "bnpo", 0.0, 1.0, True),
    ("token_mean", "bnpo", 0.2, 1.0, False),
    ("token_mean", "dapo", 0.2, 1.0, True),
]


@pytest.mark.slow
@pytest.mark.parametrize(("loss_agg", "loss_type", "beta", "temperature", "correction"), CASES)
def test_native_grpo_matches_trl_loss_and_gradient(
    checkpoint, loss_agg, loss_type, beta, temperature, correction, record_property
):
    from transformers import Qwen2ForCausalLM

    path, state = checkpoint
    trainer = _trainer(path, beta=beta, loss_type=loss_type, temperature=temperature,
                       use_bias_correction_kl=correction)
    trl_model = trainer.model.train()

    native = Qwen2ForCausalLM.from_pretrained(path).float().train()
    trl_in, batch = _sequences()
    spec = _spec(loss_agg, beta, correction)
    advantages = METHODS.get("grpo")(REWARDS, spec).reshape(-1)
    inputs = {**trl_in, "advantages": advantages,
              "num_items_in_batch": trl_in["completion_mask"].sum()}

    ref_model = None
    if beta > 0:  # a reference that differs from the policy, so the KL term has a gradient
        torch.manual_seed(2)
        ref_state = {k: v + 0.05 * torch.randn_like(v) for k, v in state.items()}
        trainer.ref_model.load_state_dict(ref_state)
        ref_model = Qwen2ForCausalLM.from_pretrained(path).float().eval()
        ref_model.load_state_dict(ref_state)
        with torch.no_grad():  # TRL's own scoring of the reference, as in its rollout step
            inputs["ref_per_token_logps"], _, _ = trainer._get_per_token_logps_and_entropies(
                trainer.ref_model,
                torch.cat([trl_in["prompt_ids"], trl_in["completion_ids"]], 1),
                torch.cat([trl_in["prompt_mask"], trl_in["completion_mask"]], 1),
                trl_in["completion_ids"].size(1))

    trl_loss = trainer.compute_loss(trl_model, inputs)
    trl_loss.backward()
    loss, metrics = compute_loss(spec, native, batch, REWARDS, ref_model=ref_model,
                                 temperature=temperature)
    loss.backward()

    _assert_agree(f"{loss_type} beta={beta} T={temperature} corr={correction}", loss, trl_loss,
                  native, trl_model, record_property)
    if beta > 0:
        trl_kl = trainer._metrics["train"]["kl"][-1]
        assert metrics["kl_to_ref"] == pytest.approx(trl_kl, rel=1e-4)
    assert metrics["entropy"] == pytest.approx(trainer._metrics["train"]["entropy"][-1], rel=1e-4)


def test_grpo_advantages_match_trl_group_normalisation():
    from trl.trainer.utils import nanstd

    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    flat = rewards.reshape(-1)
    mean = flat.view(-1, G).mean(1).repeat_interleave(G)
    std = nanstd(flat.view(-1, G), dim=1).repeat_interleave(G)
    trl_adv = (flat - mean) / (std + 1e-4)  # TRL's scale_rewards="group" formula
    ours = METHODS.get("grpo")(rewards, MethodSpec(name="grpo", params={"eps": 1e-4})).reshape(-1)
    assert torch.allclose(ours, trl_adv, atol=1e-6)


def _native_old_logp(trl_old: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """TRL's completion-aligned log-probs [N, Lc] in the harness layout [N, T-1]: completion
    token j of sequence i (at position len(prompt_i) + j) is scored at index len(prompt_i) +
    j - 1."""
    out = torch.zeros(batch["input_ids"].size(0), batch["input_ids"].size(1) - 1)
    for i in range(out.size(0)):
        start = int(batch["completion_mask"][i].nonzero()[0]) - 1
        n = int(batch["completion_mask"][i].sum())
        out[i, start:start + n] = trl_old[i, :n]
    return out


ZOO = {
    # id: (native MethodSpec fields, TRL GRPOConfig fields, scale of the old-policy log-prob
    #      offset: 0 = on-policy, the ratio is 1)
    "clip_higher": (dict(name="grpo", policy_loss="clip", loss_agg="seq_mean",
                         policy_loss_params={"eps_low": 0.2, "eps_high": 0.28}),
                    dict(loss_type="grpo", epsilon=0.2, epsilon_high=0.28), 0.3),
    "clip_two_sided": (dict(name="grpo", policy_loss="clip", loss_agg="token_mean",
                            policy_loss_params={"eps_low": 0.2, "delta": 1.5}),
                       dict(loss_type="bnpo", epsilon=0.2, delta=1.5), 0.5),
    "dapo": (dict(name="dapo"), dict(loss_type="dapo", epsilon=0.2, epsilon_high=0.28), 0.3),
    "gspo": (dict(name="gspo"),
             dict(loss_type="grpo", importance_sampling_level="sequence", epsilon=3e-4,
                  epsilon_high=4e-4), 1e-3),
    "dr_grpo": (dict(name="dr_grpo"), dict(loss_type="dr_grpo", epsilon=0.2), 0.3),
    "entropy_bonus": (dict(name="grpo", loss_agg="seq_mean", entropy={"coef": 0.05}),
                      dict(loss_type="grpo", entropy_coef=0.05), 0.0),
    "top_entropy": (dict(name="grpo", policy_loss="clip", loss_agg="token_mean",
                         entropy={"top_quantile": 0.2}),
                    dict(loss_type="bnpo", top_entropy_quantile=0.2), 0.3),
    "top_entropy_bonus": (dict(name="dapo", entropy={"coef": 0.05, "top_quantile": 0.5}),
                          dict(loss_type="dapo", epsilon=0.2, epsilon_high=0.28,
                               entropy_coef=0.05, top_entropy_quantile=0.5), 0.3),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(ZOO))
def test_method_zoo_matches_trl_loss_and_gradient(checkpoint, case, record_property):
    """Clip-higher, two-sided clipping, DAPO, GSPO's sequence ratio, Dr. GRPO's constant
    normaliser, the entropy bonus and the top-entropy gradient, each against TRL's loss on
    the same batch, off-policy (old log-probs != new, so the ratio and its clipping bind)."""
    from transformers import Qwen2ForCausalLM

    fields, config, offset = ZOO[case]
    path, _ = checkpoint
    trainer = _trainer(path, beta=0.0, **config)
    trl_model = trainer.model.train()
    native = Qwen2ForCausalLM.from_pretrained(path).float().train()
    trl_in, batch = _sequences()
    spec = MethodSpec(**fields)
    advantages = METHODS.get(spec.name)(REWARDS, spec).reshape(-1)
    inputs = {**trl_in, "advantages": advantages,
              "num_items_in_batch": trl_in["completion_mask"].sum()}
    old = None
    if offset:
        with torch.no_grad():
            own, _, _ = trainer._get_per_token_logps_and_entropies(
                trl_model, torch.cat([trl_in["prompt_ids"], trl_in["completion_ids"]], 1),
                torch.cat([trl_in["prompt_mask"], trl_in["completion_mask"]], 1),
                trl_in["completion_ids"].size(1))
        g = torch.Generator().manual_seed(3)
        inputs["old_per_token_logps"] = own + offset * torch.randn(own.shape, generator=g)
        old = _native_old_logp(inputs["old_per_token_logps"], batch)

    trl_loss = trainer.compute_loss(trl_model, inputs)
    trl_loss.backward()
    coef = spec.entropy.coef if spec.entropy is not None else 0.0
    loss, metrics = compute_loss(spec, native, batch, REWARDS, old_logp=old,
                                 entropy_coef=coef, max_tokens=MAX_NEW)
    loss.backward()

    _assert_agree(case, loss, trl_loss, native, trl_model, record_property)
    trl_metrics = trainer._metrics["train"]
    if offset and config.get("importance_sampling_level") != "sequence":
        # TRL counts clipped tokens; at sequence level it counts sequences, the harness tokens
        assert metrics["clip_low_frac"] == pytest.approx(trl_metrics["clip_ratio/low_mean"][-1])
        assert metrics["clip_high_frac"] == pytest.approx(
            trl_metrics["clip_ratio/high_mean"][-1])
        assert metrics["clip_low_frac"] + metrics["clip_high_frac"] > 0  # the clip binds
    if offset:
        assert trl_metrics["clip_ratio/region_mean"][-1] > 0 or case == "gspo"


def test_adaptive_entropy_coefficient_follows_trl_rule(checkpoint):
    """Skywork-OR1's adaptive entropy control: the coefficient the harness applies and keeps,
    step after step, is TRL's (`use_adaptive_entropy`) for the same sequence of entropies."""
    from harness.runner.update import _Entropy

    path, _ = checkpoint
    target = 3.0
    trainer = _trainer(path, beta=0.0, loss_type="bnpo", use_adaptive_entropy=True,
                       entropy_coef=0.02, entropy_target=target, entropy_coef_delta=0.01,
                       entropy_coef_min=0.0, entropy_coef_max=0.03)
    trl_model = trainer.model.train()
    spec = MethodSpec(name="grpo", loss_agg="token_mean",
                      entropy={"coef": 0.02, "adaptive": True, "target": target,
                               "coef_delta": 0.01, "coef_min": 0.0, "coef_max": 0.03})
    native = _Entropy(spec)
    trl_in, _ = _sequences()
    inputs = {**trl_in, "advantages": torch.zeros(P * G),
              "num_items_in_batch": trl_in["completion_mask"].sum()}
    head = trl_model.get_output_embeddings().weight
    original = head.detach().clone()
    seen_below = seen_above = False
    for sharpness in (1.0, 50.0, 50.0, 50.0, 1.0, 1.0, 1.0, 50.0):
        with torch.no_grad():  # a sharper or flatter head moves the entropy across the target
            head.copy_(original * sharpness)
        applied_trl = (trainer.entropy_coef if trainer._last_world_entropy <= target else 0.0)
        assert native.applied() == pytest.approx(applied_trl)
        trainer.compute_loss(trl_model, inputs)
        entropy = trainer._metrics["train"]["entropy"][-1]
        seen_below |= entropy <= target
        seen_above |= entropy > target
        native.observe(entropy)
        assert native.coef == pytest.approx(trainer.entropy_coef)
        assert native.last == pytest.approx(trainer._last_world_entropy)
    assert seen_below and seen_above  # both branches of the rule were taken
