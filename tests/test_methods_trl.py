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
    from datasets import Dataset
    from transformers import Qwen2ForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    path, state = checkpoint
    args = GRPOConfig(
        output_dir=path + "/out", report_to=[], use_cpu=True, bf16=False,
        num_generations=G, per_device_train_batch_size=P * G, max_completion_length=8,
        beta=beta, loss_type=loss_type, temperature=temperature, save_strategy="no",
        use_bias_correction_kl=correction)
    trainer = GRPOTrainer(
        model=path, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
        train_dataset=Dataset.from_dict({"prompt": ["t2 t3"] * (P * G)}))
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; one micro-batch
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

    loss_err = abs(loss.item() - trl_loss.item()) / max(abs(trl_loss.item()), 1e-2)
    grad_err = _rel(_flat_grad(native), _flat_grad(trl_model))
    record_property("loss_rel_err", loss_err)
    record_property("grad_rel_err", grad_err)
    print(f"{loss_type} beta={beta} T={temperature} corr={correction}: loss {loss.item():.6g} vs "
          f"{trl_loss.item():.6g} (rel {loss_err:.1e}), grad rel {grad_err:.1e}")
    assert loss_err < TOL
    assert grad_err < TOL
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
