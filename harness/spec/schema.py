"""The benchmark spec schema: one set of pydantic models, the source of the documentation.

`harness spec-schema` prints these models as JSON Schema. Every field has a default and a
description; a spec file only states what differs. Terms follow docs/design.md section 2.

Grid axes (`models`, `methods`, `controllers`, `seeds`) accept a short form (a bare name) or
a mapping with options. Each axis entry has a `label` (defaulting to its name) that names it
in cell ids, `exclude` rules and `comparisons`; labels must be unique within an axis.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

import harness.spec.limits as limits
from harness.spec.base import (  # noqa: F401  (re-exported)
    LABEL_RE,
    REGISTRIES,
    ControllerName,
    KLEstimatorName,
    Label,
    LossAggName,
    MethodName,
    NonNegInt,
    PolicyLossName,
    PositiveInt,
    Registered,
    RolloutBackendName,
    Seed,
    TaskSourceName,
    _at_most,
    _params_by_name,
    _Strict,
    registry,
    resolve_params,
)
from harness.spec.limits import DOC as _LIMITS
from harness.spec.method import (  # noqa: F401  (re-exported)
    MOVED_TO_PARAMS,
    DynamicSamplingSpec,
    EntropySpec,
    EWCConfig,
    KLConfig,
    MethodSpec,
    OverlongSpec,
    ResetSpec,
)

# The built-in policies (everything else is a hub id or a local directory).
BUILTIN_MODELS = ("tiny",)

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------- models
class TinyRecipe(_Strict):
    """Recipe of the built-in tiny policy. The policy is built on first use and cached by
    the hash of this recipe (see `harness.policy.tiny`)."""

    hidden_size: PositiveInt = Field(64, le=limits.MAX_TINY_WIDTH, description="Transformer "
                                     "width." + _at_most(limits.MAX_TINY_WIDTH))
    intermediate_size: PositiveInt = Field(192, le=limits.MAX_TINY_WIDTH, description="MLP "
                                           "width." + _at_most(limits.MAX_TINY_WIDTH))
    num_layers: PositiveInt = Field(4, le=limits.MAX_TINY_LAYERS, description="Decoder "
                                    "layers." + _at_most(limits.MAX_TINY_LAYERS))
    num_heads: PositiveInt = Field(4, le=limits.MAX_TINY_LAYERS, description="Attention heads "
                                   "(and key/value heads)." + _at_most(limits.MAX_TINY_LAYERS))
    warm_steps: NonNegInt = Field(800, le=limits.MAX_TINY_WARM, description="Supervised "
                                  "warm-start steps." + _at_most(limits.MAX_TINY_WARM))
    warm_batch: PositiveInt = Field(32, le=limits.MAX_TINY_BATCH, description="Warm-start "
                                    "batch size (tasks)." + _at_most(limits.MAX_TINY_BATCH))
    warm_lr: float = Field(3e-3, gt=0, description="Warm-start AdamW learning rate.")
    warm_seed: Seed = Field(0, description="Seed of the warm start (init, data order)."
                            + _at_most(limits.MAX_SEED))
    warm_tasks: PositiveInt = Field(
        4096, le=limits.MAX_TINY_WARM, description="Synthetic tasks generated for the warm "
        "start (disjoint seed space from the benchmark splits)."
        + _at_most(limits.MAX_TINY_WARM))
    warm_defect: float = Field(
        0.5, ge=0, lt=1, description="Share of warm-start solutions whose last line (`return "
        "x` / `print(x)`) is left out, so the warm-started policy has a habit that fails the "
        "tests and that reinforcement learning can unlearn (the early rise of a campaign; "
        "docs/tiny-testbed.md).")


class ModelSpec(_Strict):
    """A policy: the built-in tiny model (`tiny`), an HF hub id, or a local directory."""

    id: str = Field(description="`tiny`, a hub id such as `Qwen/Qwen2.5-3B-Instruct`, or a "
                    "path to a local directory holding a saved HF model.")
    label: Label | None = Field(None, description="Name in cell ids; default: last part of id.")
    revision: str | None = Field(None, description="Hub revision (commit) to pin.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto = bfloat16 on GPU, float32 on CPU.")
    device: str = Field("auto", description="`auto`, `cpu`, `cuda`, `cuda:N`.")
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto", description="Wrap prompts in the tokenizer's chat template (auto: when it has one).")
    tiny: TinyRecipe | None = Field(
        None, description="Recipe for id `tiny` (default recipe when omitted).")

    @field_validator("id")
    @classmethod
    def _known_model(cls, v: str) -> str:
        v = v.strip()
        if v in BUILTIN_MODELS or _HUB_ID_RE.match(v) or v.startswith(("/", "./", "../", "~")):
            return v
        raise ValueError(
            f"unknown model {v!r}: use a built-in ({', '.join(sorted(BUILTIN_MODELS))}), "
            "a hub id 'org/name', or a local path starting with / or ./"
        )

    @model_validator(mode="before")
    @classmethod
    def _default_recipe(cls, data: Any) -> Any:
        # The tiny recipe is part of the resolved spec (and so of the hash) even when omitted.
        if isinstance(data, dict) and data.get("id") == "tiny" and data.get("tiny") is None:
            return {**data, "tiny": {}}
        return data

    @model_validator(mode="after")
    def _recipe_only_for_tiny(self) -> ModelSpec:
        if self.tiny is not None and self.id != "tiny":
            raise ValueError("`tiny` recipe is only valid with id: tiny")
        return self

    @property
    def name(self) -> str:
        return self.label or self.id.rstrip("/").split("/")[-1]


# --------------------------------------------------------------------------- controllers
class ControllerSpec(_Strict):
    """What carries from one campaign to the next (docs/design.md section 2, Controllers).

    `params` are the controller's own parameters (its `Params` model: unknown keys are
    errors, defaults are filled in when the spec is validated).
    """

    name: ControllerName = Field(
        description="Registered controller (`harness components`).")
    label: Label | None = Field(None, description="Name in cell ids; default: the name.")
    params: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra=_params_by_name("controller"),
        description="Controller parameters, checked and completed by the controller's Params "
        "model.")

    @model_validator(mode="after")
    def _resolve_params(self) -> ControllerSpec:
        """Check params against the controller's own schema and fill its defaults, so the
        resolved spec (and every hash) states every threshold the controller uses."""
        params_cls = registry("controller").get(self.name).Params
        object.__setattr__(self, "params",
                           resolve_params("controller", self.name, params_cls, self.params))
        return self

    @property
    def arm(self) -> str:
        return self.label or self.name


# --------------------------------------------------------------------------- sections
class ChainSpec(_Strict):
    campaigns: PositiveInt = Field(10, le=limits.MAX_CAMPAIGNS, description="Campaigns per "
                                   "chain (C)." + _at_most(limits.MAX_CAMPAIGNS))
    steps: PositiveInt = Field(20, le=limits.MAX_STEPS, description="Maximum gradient steps "
                               "per campaign (B)." + _at_most(limits.MAX_STEPS))
    collapse_threshold: float = Field(
        0.20, ge=0, le=1, description="A campaign collapsed when peak - end exceeds this.")
    signature_rise: float = Field(
        0.05, ge=0, le=1, description="The study's signature: eval pass@1 peaks at least this "
        "far above the campaign's start ...")
    signature_fall: float = Field(
        0.10, ge=0, le=1, description="... and the campaign's last step ends at least this far "
        "below the peak.")


class TasksSpec(_Strict):
    source: TaskSourceName = Field(
        "synthetic", description="Registered task source (`harness components`).")
    train: PositiveInt = Field(50, le=limits.MAX_PROBLEMS, description="Train-split problems "
                               "(what campaigns optimise)." + _at_most(limits.MAX_PROBLEMS))
    eval: PositiveInt = Field(30, le=limits.MAX_PROBLEMS, description="Eval-split problems "
                              "(per-step pass@1, selection)." + _at_most(limits.MAX_PROBLEMS))
    test: PositiveInt = Field(30, le=limits.MAX_PROBLEMS, description="Test-split problems "
                              "(final numbers only)." + _at_most(limits.MAX_PROBLEMS))
    split_seed: Seed = Field(0, description="Seed of the deterministic split."
                             + _at_most(limits.MAX_SEED))
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="Source-specific options. Dataset sources (humaneval, mbpp, apps, taco, "
        "code_contests, livecodebench) take revision (pinned by default), data_files, "
        "dataset_split, difficulty, max_statement_chars, max_tests, max_test_bytes, "
        "float_tol and their own (docs/task-sources.md); their defaults are filled in. "
        "synthetic: stdio_share, min_ops, max_ops.")

    @field_validator("options", mode="before")
    @classmethod
    def _shallow_options(cls, v: Any) -> Any:
        if limits.value_depth(v) > limits.MAX_VALUE_DEPTH + 1:
            raise ValueError(f"options nest more than {limits.MAX_VALUE_DEPTH} levels deep "
                             f"({_LIMITS}); flatten them")
        return v

    @model_validator(mode="after")
    def _resolve_options(self) -> TasksSpec:
        """Check a dataset source's options and fill their defaults (the pinned dataset
        revision among them), so the resolved spec and every hash state them."""
        from harness.tasks import resolve_options

        object.__setattr__(self, "options", resolve_options(self.source, self.options))
        return self


class EvalSpec(_Strict):
    samples_per_task: PositiveInt = Field(
        8, le=limits.MAX_SAMPLES, description="n completions per eval task (pass@1 = unbiased "
        "estimator, k=1)." + _at_most(limits.MAX_SAMPLES))
    temperature: float = Field(0.7, ge=0, description="Sampling temperature at eval.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling at eval.")
    max_new_tokens: PositiveInt = Field(512, le=limits.MAX_NEW_TOKENS, description="Completion "
                                        "length cap at eval." + _at_most(limits.MAX_NEW_TOKENS))


class RolloutSpec(_Strict):
    group_size: PositiveInt = Field(16, le=limits.MAX_SAMPLES, description="G completions per "
                                    "training prompt." + _at_most(limits.MAX_SAMPLES))
    prompts_per_step: PositiveInt = Field(8, le=limits.MAX_PROMPTS, description="P training "
                                          "prompts per step." + _at_most(limits.MAX_PROMPTS))
    temperature: float = Field(0.7, ge=0, description="Sampling temperature for training.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling for training.")
    max_new_tokens: PositiveInt = Field(512, le=limits.MAX_NEW_TOKENS, description="Completion "
                                        "length cap." + _at_most(limits.MAX_NEW_TOKENS))
    backend: RolloutBackendName = Field(
        "hf", description="Rollout backend (`harness components` says what each one is; "
        "docs/rollout-backends.md). Part of the cell's identity: backends sample differently.")


class OptimSpec(_Strict):
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate (controllers may change it).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    grad_clip: float = Field(1.0, gt=0, description="Global gradient-norm clip.")
    warmup_steps: NonNegInt = Field(
        0, le=limits.MAX_WARMUP_STEPS, description="Linear learning-rate warm-up at the start "
        "of every campaign (the optimizer is fresh per campaign): step s of a campaign uses lr "
        "x min(1, s / N); 0: none." + _at_most(limits.MAX_WARMUP_STEPS))
    micro_batch_size: PositiveInt | None = Field(
        None, le=limits.MAX_PROMPTS, description="Sequences per forward/backward pass of the update; their gradients "
        "accumulate into one optimizer step, with the loss normalised over the whole batch (the "
        "same gradient up to summation order; peak memory scales with this, not the batch). "
        "Also bounds the EWC Fisher's passes (same estimate). null: the whole batch (P*G "
        "sequences) in one pass." + _at_most(limits.MAX_PROMPTS))
    master_weights: Literal["float32", "none"] = Field(
        "float32", description="float32: when the model's weights are 16-bit (bfloat16 or "
        "float16), AdamW steps float32 copies of them and writes them back rounded after every "
        "step (mixed precision, as DeepSpeed's bf16 mode); no effect on float32 weights. none: "
        "AdamW steps the 16-bit weights themselves, where updates smaller than half their "
        "spacing are lost (at lr 1e-6, almost all of them).")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward pass instead of "
        "keeping them (HF gradient checkpointing): far less activation memory for about a "
        "third more update time; the same gradient.")


class GraderSpec(_Strict):
    timeout_s: float = Field(5.0, gt=0, le=limits.MAX_GRADER_TIMEOUT_S, description="Wall-"
                             "clock limit per sample." + _at_most(limits.MAX_GRADER_TIMEOUT_S))
    memory_mb: PositiveInt = Field(512, le=limits.MAX_GRADER_MEMORY_MB, description="Address-"
                                   "space limit per sample (MiB)."
                                   + _at_most(limits.MAX_GRADER_MEMORY_MB))
    output_bytes: PositiveInt = Field(1 << 20, le=limits.MAX_GRADER_OUTPUT_BYTES,
                                      description="Output cap per sample."
                                      + _at_most(limits.MAX_GRADER_OUTPUT_BYTES))
    workers: PositiveInt = Field(2, le=limits.MAX_GRADER_WORKERS, description="Sandbox worker "
                                 "processes per cell." + _at_most(limits.MAX_GRADER_WORKERS))
    cache: bool = Field(
        True, description="Grade each distinct program once per cell process: passed, wrong "
        "answer and error verdicts are kept by the request's sha256 and reused (a policy "
        "repeats its programs); timeouts, memory, output-limit, violation and crash verdicts "
        "are graded every time. Same verdicts either way; false grades every sample.")
    max_infra_share: float = Field(
        0.05, ge=0, le=1, description="Largest share of a step's train or eval samples the "
        "grader may fail on (sandbox set-up failed, a worker or the judge died, the grader "
        "unreachable) before the step's grading is retried once; a second such failure stops "
        "the cell with one error line (a re-run resumes). Those samples are never a reward "
        "of 0: they are masked out of the update and of pass@1, and counted.")


class ArmRef(_Strict):
    """One arm of the grid: labels on each axis (an omitted model means every model)."""

    method: str = Field(description="Method label.")
    controller: str = Field(description="Controller label.")
    model: str | None = Field(None, description="Model label; omitted: compare per model.")


class ComparisonSpec(_Strict):
    candidate: ArmRef = Field(description="The arm under test.")
    baseline: ArmRef = Field(description="The arm it is compared with, paired by seed.")
    metric: Literal[
        "end_of_chain_pass1_test", "end_of_chain_pass1_eval", "mean_peak", "mean_end",
        "mean_gap", "collapse_rate",
    ] = Field("end_of_chain_pass1_test", description="Per-seed metric compared.")
    expect: Literal["improves", "no_worse", "no_difference"] = Field(
        "improves", description="What the study found / what the gate expects.")
    gate: bool = Field(False, description="A regression here fails `harness gate`.")
    note: str = Field("", description="Where the expectation comes from.")

    @model_validator(mode="after")
    def _two_arms(self) -> ComparisonSpec:
        if self.candidate == self.baseline:
            raise ValueError("candidate and baseline are the same arm: a comparison pairs two "
                             "different arms")
        return self


class ExcludeRule(_Strict):
    """Drop every cell matching all given keys (labels; seed as an integer)."""

    model: str | None = Field(None, description="Model label to match.")
    method: str | None = Field(None, description="Method label to match.")
    controller: str | None = Field(None, description="Controller label to match.")
    seed: Seed | None = Field(None, description="Seed to match.")

    @model_validator(mode="after")
    def _not_empty(self) -> ExcludeRule:
        if all(v is None for v in (self.model, self.method, self.controller, self.seed)):
            raise ValueError("an exclude rule needs at least one of model, method, controller, seed")
        return self


class ResourcesSpec(_Strict):
    gpus_per_cell: float = Field(0, ge=0, le=limits.MAX_RESOURCES, description="GPUs requested "
                                 "per cell (ray/docker); with `distributed`, also the number of "
                                 "processes." + _at_most(limits.MAX_RESOURCES))
    cpus_per_cell: float = Field(
        1, gt=0, le=limits.MAX_RESOURCES, description="CPUs per cell: its torch threads (whole "
        "CPUs, at least 1; part of the cell's identity), docker's --cpus, ray's CPU request."
        + _at_most(limits.MAX_RESOURCES))
    distributed: str = Field(
        "none", json_schema_extra=lambda schema: schema.update(enum=_distributed_names()),
        description="How one cell trains: `none` (one process) or a DeepSpeed "
        "configuration shipped in harness/distributed: data-parallel training on "
        "gpus_per_cell processes (one GPU each; CPU processes where no GPU is visible), "
        "started by `harness run-cell`: zero2-3b (ZeRO-2, 2 GPUs, models up to ~4B), "
        "zero2-7b (ZeRO-2, 4 GPUs, 7B). docs/distributed.md.")

    @field_validator("distributed")
    @classmethod
    def _known_distributed(cls, v: str) -> str:
        from harness import distributed

        known = _distributed_names()
        if v not in known:
            from harness.registry import did_you_mean

            raise ValueError(f"unknown distributed configuration {v!r}"
                             f"{did_you_mean(v, known)}; known: {', '.join(known)}")
        if v != distributed.NONE:
            distributed.load(v)  # a broken shipped file is reported here, not at launch
        return v

    @model_validator(mode="after")
    def _whole_gpus(self) -> ResourcesSpec:
        if self.distributed != "none" and (self.gpus_per_cell < 2
                                           or self.gpus_per_cell != int(self.gpus_per_cell)):
            raise ValueError(f"distributed: {self.distributed} runs one process per GPU: "
                             f"gpus_per_cell must be a whole number >= 2, not "
                             f"{self.gpus_per_cell:g} (one GPU: distributed: none)")
        return self


def _distributed_names() -> list[str]:
    from harness import distributed

    return [distributed.NONE, *distributed.available()]


# --------------------------------------------------------------------------- the spec
def _short_form(v: Any, key: str) -> Any:
    """Short form: a bare string is the entry's `name` (or `id` for models)."""
    if isinstance(v, list):
        return [{key: x} if isinstance(x, str) else x for x in v]
    return v


class Spec(_Strict):
    """A versioned benchmark spec. Bump `version` on any change that alters results."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="Registered name.")
    version: PositiveInt = Field(description="Bumped on any change that alters results.")
    description: str = Field("", description="What the spec measures.")
    extends: str | None = Field(
        None, exclude=True,
        description="Inherit from another spec (registered name or path relative to this "
        "file) and override: mappings merge key by key, lists and scalars replace. `name` and "
        "`version` are never inherited. Applied before validation; not part of the hash.")
    models: list[ModelSpec] = Field(min_length=1, max_length=limits.MAX_AXIS,
                                    description="Model axis of the grid."
                                    + _at_most(limits.MAX_AXIS))
    methods: list[MethodSpec] = Field(
        default_factory=lambda: [MethodSpec(name="reinforce")], min_length=1,
        max_length=limits.MAX_AXIS, description="Method axis of the grid."
        + _at_most(limits.MAX_AXIS))
    controllers: list[ControllerSpec] = Field(
        default_factory=lambda: [ControllerSpec(name="naive")], min_length=1,
        max_length=limits.MAX_AXIS, description="Controller axis of the grid."
        + _at_most(limits.MAX_AXIS))
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1,
                              max_length=limits.MAX_AXIS, description="Seed axis (each "
                              f"0 to {limits.MAX_SEED:,})." + _at_most(limits.MAX_AXIS))
    exclude: list[ExcludeRule] = Field(default_factory=list, max_length=limits.MAX_AXIS,
                                       description="Cells to drop."
                                       + _at_most(limits.MAX_AXIS))
    chain: ChainSpec = Field(default_factory=ChainSpec, description="Chain of campaigns.")
    tasks: TasksSpec = Field(default_factory=TasksSpec, description="Task source and splits.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Per-step eval pass@1.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Training rollouts.")
    optim: OptimSpec = Field(default_factory=OptimSpec, description="Optimizer.")
    grader: GraderSpec = Field(default_factory=GraderSpec, description="Sandbox limits.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec,
                                     description="Resources per cell (executors).")
    comparisons: list[ComparisonSpec] = Field(
        default_factory=list, max_length=limits.MAX_AXIS,
        description="Declared comparisons (candidate vs baseline)." + _at_most(limits.MAX_AXIS))

    @field_validator("models", mode="before")
    @classmethod
    def _short_models(cls, v: Any) -> Any:
        return _short_form(v, "id")

    @field_validator("methods", "controllers", mode="before")
    @classmethod
    def _short_names(cls, v: Any) -> Any:
        return _short_form(v, "name")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        seen: set[int] = set()
        dup = sorted({s for s in v if s in seen or seen.add(s)})
        if dup:
            raise ValueError(f"duplicate seeds {dup}: each seed may appear once")
        return v

    @model_validator(mode="after")
    def _mini_batches_divide(self) -> Spec:
        p = self.rollout.prompts_per_step
        for i, m in enumerate(self.methods):
            if p % m.mini_batches:
                raise ValueError(
                    f"methods.{i}.mini_batches: {m.mini_batches} does not divide "
                    f"rollout.prompts_per_step ({p}); mini-batches hold whole prompt groups")
            if m.loss_agg == "token_sum_norm" and self.rollout.max_new_tokens < 1:
                raise ValueError(f"methods.{i}.loss_agg: token_sum_norm needs "
                                 "rollout.max_new_tokens >= 1")
        return self
