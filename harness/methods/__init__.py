"""Methods: how a step turns rewards into an update (docs/design.md section 2, Methods).

`METHODS` maps a method name (`MethodSpec.name`) to its `Method`: the advantage estimator
`(rewards [P, G], spec) -> advantages [P, G]` and the `Params` model of `MethodSpec.params`.
The per-token policy loss (`MethodSpec.policy_loss`), the loss aggregation
(`MethodSpec.loss_agg`) and the KL estimator (`KLConfig.estimator`) are looked up the same way,
in `POLICY_LOSSES`, `AGGREGATIONS` and `KL_ESTIMATORS`. The runner makes an optimizer per campaign and calls, per step:

    optimizer = make_optimizer(model, lr=lr, betas=betas, weight_decay=wd)  # per campaign
    optimizer.zero_grad(set_to_none=True)
    metrics = backward_loss(spec, model, batch, rewards, ref_model=ref, ewc=ewc_state,
                            micro_batch_size=micro_batch_size,
                            after_backward=getattr(optimizer, "accumulate_grads", None))
    grad_norm = apply_gradients(model, optimizer, grad_clip)

`compute_loss` + `optimizer_step` are the same step on the whole batch, returning the loss.

Adding a method is one function registered with `@method(name, Params)` in `advantages.py`
plus a test (docs/components.md).
"""

from typing import Any

from harness.methods.advantages import (
    METHODS,
    Method,
    MethodParams,
    grpo,
    method,
    reinforce,
    rloo,
)
from harness.methods.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    aggregate,
    kl_k1,
    kl_k3,
    kl_per_token,
    pg_per_token,
    seq_mean,
    seq_sum,
    token_mean,
)

# The registries above (imported with their modules, which import torch only when they run:
# harness.lazy) are what reading a spec needs; the update machinery is imported on first use.
_LAZY = {
    "token_logprobs": "logprobs",
    "MasterWeightsAdamW": "precision",
    "make_optimizer": "precision",
    "EWCState": "regularizers",
    "estimate_fisher": "regularizers",
    "make_reference": "regularizers",
    "aggregation_weights": "step",
    "apply_gradients": "step",
    "backward_loss": "step",
    "compute_loss": "step",
    "optimizer_step": "step",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"harness.methods.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "METHODS",
    "POLICY_LOSSES",
    "EWCState",
    "MasterWeightsAdamW",
    "Method",
    "MethodParams",
    "aggregate",
    "aggregation_weights",
    "apply_gradients",
    "backward_loss",
    "compute_loss",
    "estimate_fisher",
    "grpo",
    "kl_k1",
    "kl_k3",
    "kl_per_token",
    "make_optimizer",
    "make_reference",
    "method",
    "optimizer_step",
    "pg_per_token",
    "reinforce",
    "rloo",
    "seq_mean",
    "seq_sum",
    "token_logprobs",
    "token_mean",
]
