"""Every kind of component is a registry, the single source of its names: a method, a policy
loss, a controller, a task source and an executor registered from this module (no project
file edited) are accepted by the spec, listed by `harness components` and `harness
spec-schema`, and run: the method and policy loss through `backward_loss` on a tiny model,
the controller's `plan`, the task source's splits, the executor through the executor
registry. Every registration is undone after the tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
from pydantic import Field
from test_methods import make_batch, tiny_model

from harness.cli import main
from harness.controllers import CONTROLLERS, Controller, History, Plan, make_controller
from harness.controllers.base import ControllerParams
from harness.errors import SpecError, UserError
from harness.executors import (
    EXECUTORS,
    Executor,
    ExecutorOptions,
    ExecutorSettings,
    describe,
    executor_settings,
    get_executor,
)
from harness.methods import METHODS, POLICY_LOSSES, Method, MethodParams, backward_loss
from harness.methods.losses import PolicyInputs, PolicyLoss, PolicyTerms, pg_per_token
from harness.registry import Registry, first_sentence
from harness.spec import expand_cells, load_spec
from harness.spec.schema import MethodSpec, TasksSpec
from harness.tasks import STYLES, TASK_SOURCES, Style, Task, load_selection, source_version

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 1.0]])


# --------------------------------------------------------------------------- the toys
class ScaleParams(MethodParams):
    scale: float = Field(2.0, gt=0, description="Advantage = scale x reward.")


def scaled_reward(rewards: torch.Tensor, spec: MethodSpec) -> torch.Tensor:
    """Toy: advantage = scale x reward."""
    return rewards.float() * spec.params["scale"]


def doubled_pg(inp: PolicyInputs, params: dict[str, Any]) -> PolicyTerms:
    """Toy: twice the reinforce term."""
    return PolicyTerms(2 * pg_per_token(inp.logp, inp.advantages, inp.old_logp))


class FixedParams(ControllerParams):
    budget: int = Field(2, ge=1, description="Steps of every campaign.")


class FixedBudget(Controller):
    """Toy: always the initial policy, a fixed budget."""

    Params = FixedParams
    params: FixedParams

    def plan(self, history: History) -> Plan:
        return Plan(start_from="init", budget=min(self.params.budget, history.max_steps),
                    lr=history.base_lr, reason=f"toy: budget {self.params.budget}")


class EchoSource:
    """Toy: one stdin/stdout echo problem per task."""

    version = 7

    def __call__(self, tasks: TasksSpec) -> dict[str, list[Task]]:
        sizes = {"train": tasks.train, "eval": tasks.eval, "test": tasks.test}
        return {split: [Task(task_id=f"echo/{split}/{i}", prompt="# echo\n", code_prefix="# echo\n",
                             style="stdio", entry_point=None,
                             tests=({"input": f"{i}\n", "output": f"{i}\n"},), test_code=None,
                             reference="print(input())\n") for i in range(n)]
                for split, n in sizes.items()}


class MarkOptions(ExecutorSettings):
    exit_code: int = Field(0, description="What every cell exits with.")


class MarkExecutor(Executor):
    name = "toy_exec"
    description = "toy: marks each cell directory, runs nothing."
    Options = MarkOptions

    def describe(self, options: ExecutorOptions) -> dict[str, Any]:
        return {"name": self.name, "exit_code": self.settings(options).exit_code}

    def run(self, cells: dict[str, Path], jobs: int, on_event: Any,
            options: ExecutorOptions) -> dict[str, int]:
        code = self.settings(options).exit_code
        for cid, cell_dir in cells.items():
            on_event(cid, {"event": "start", "records": []})
            (cell_dir / "ran").write_text(cid)
            on_event(cid, {"event": "exit", "returncode": code, "error": None})
        return dict.fromkeys(cells, code)


TOYS: list[tuple[Registry[Any], str, Any]] = [
    (METHODS, "toy_method", Method(scaled_reward, ScaleParams, description="toy: scale x reward")),
    (POLICY_LOSSES, "toy_loss", PolicyLoss(doubled_pg, description="Toy: twice the reinforce term.")),
    (CONTROLLERS, "toy_ctl", FixedBudget),
    (TASK_SOURCES, "toy_src", EchoSource()),
    (EXECUTORS, "toy_exec", MarkExecutor()),
]


@pytest.fixture
def toys() -> Iterator[None]:
    with ExitStack() as stack:
        for reg, name, obj in TOYS:
            stack.enter_context(reg.registered(name, obj))
        yield
    for reg, name, _ in TOYS:
        assert name not in reg, f"{reg.kind} {name} still registered"


SPEC = """\
name: toys
version: 1
models: [tiny]
methods: [{name: toy_method, params: {scale: 3}, policy_loss: toy_loss}]
controllers: [{name: toy_ctl, params: {budget: 3}}]
seeds: [0]
chain: {campaigns: 2, steps: 4}
tasks: {source: toy_src, train: 2, eval: 3, test: 1}
"""


# --------------------------------------------------------------------------- the spec
def test_a_spec_using_the_toys_validates_and_plans(toys: None, tmp_path: Path) -> None:
    (tmp_path / "toys.yaml").write_text(SPEC)
    spec, _ = load_spec(str(tmp_path / "toys.yaml"))
    method, controller = spec.methods[0], spec.controllers[0]
    assert method.params == {"scale": 3.0} and method.policy_loss == "toy_loss"
    assert controller.params == {"budget": 3}
    (cell,) = expand_cells(spec)
    assert cell.cell_id.startswith("tiny_toy_method_toy_ctl_s0_")
    assert cell.config["method"]["params"] == {"scale": 3.0}


def test_the_toys_params_are_checked_with_did_you_mean(toys: None, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(SPEC.replace("{scale: 3}", "{scal: 3}")
                                       .replace("{budget: 3}", "{budget: 0}"))
    with pytest.raises(SpecError) as e:
        load_spec(str(tmp_path / "bad.yaml"))
    text = "\n".join(str(p) for p in e.value.problems)
    assert "methods[0]: params.scal: unknown parameter (did you mean 'scale'?)" in text
    assert "method toy_method takes: scale" in text
    assert "controllers[0]: params.budget:" in text


def test_unregistered_toys_are_unknown_names(tmp_path: Path) -> None:
    (tmp_path / "toys.yaml").write_text(SPEC)
    with pytest.raises(SpecError) as e:
        load_spec(str(tmp_path / "toys.yaml"))
    text = "\n".join(str(p) for p in e.value.problems)
    for kind in ("method 'toy_method'", "policy loss 'toy_loss'", "controller 'toy_ctl'",
                 "task source 'toy_src'"):
        assert f"unknown {kind}" in text, text


def test_spec_schema_and_components_list_the_registered_names(
        toys: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec-schema"]) == 0
    defs = json.loads(capsys.readouterr().out)["$defs"]
    method = defs["MethodSpec"]["properties"]
    assert "toy_method" in method["name"]["enum"] and "toy_loss" in method["policy_loss"]["enum"]
    assert "toy_method: scale=2.0" in method["params"]["description"]
    assert "toy_ctl" in defs["ControllerSpec"]["properties"]["name"]["enum"]
    assert "toy_src" in defs["TasksSpec"]["properties"]["source"]["enum"]
    assert defs["RolloutSpec"]["properties"]["backend"]["enum"] == ["hf", "lean", "vllm"]
    assert defs["MethodSpec"]["properties"]["loss_agg"]["enum"] == [
        "seq_mean", "seq_sum", "token_mean", "token_sum_norm"]
    assert defs["KLConfig"]["properties"]["estimator"]["enum"] == ["k1", "k3"]

    assert main(["components", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert list(found) == ["methods", "policy losses", "loss aggregations", "KL estimators",
                           "controllers", "task sources", "rollout backends", "executors",
                           "distributed configurations", "guard signals"]
    assert found["guard signals"]["eval_drop"]["description"].startswith("A credible drop")
    assert found["methods"]["toy_method"] == {"description": "toy: scale x reward",
                                              "params": {"scale": 2.0}}
    assert found["methods"]["reinforce"]["params"] == {"baseline": "none"}
    assert found["policy losses"]["toy_loss"]["description"] == "Toy: twice the reinforce term."
    assert found["controllers"]["toy_ctl"] == {
        "description": "Toy: always the initial policy, a fixed budget.", "params": {"budget": 2}}
    assert found["task sources"]["toy_src"]["description"] == (
        "Toy: one stdin/stdout echo problem per task.")
    assert found["executors"]["toy_exec"]["options"] == {"exit_code": 0}
    assert set(found["distributed configurations"]) == {"none", "zero2-3b", "zero2-7b"}
    for kind, entries in found.items():
        for name, entry in entries.items():
            assert entry["description"] and "\n" not in entry["description"], (kind, name)

    assert main(["components"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "methods:" in lines and "executors:" in lines
    assert any(ln.split()[:1] == ["toy_exec"] and "marks each cell" in ln for ln in lines)
    assert any(ln.split()[:1] == ["reinforce"] and '[baseline="none"]' in ln for ln in lines)


# --------------------------------------------------------------------------- running them
def _grads(spec: MethodSpec, **kw: Any) -> list[torch.Tensor]:
    model = tiny_model(0)
    batch = make_batch([3, 5], [[4, 2, 6, 5], [1, 3, 6, 2]])
    backward_loss(spec, model, batch, REWARDS, **kw)
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("micro_batch_size", [None, 3])
def test_toy_method_and_policy_loss_run_through_backward_loss(
        toys: None, micro_batch_size: int | None) -> None:
    reference = _grads(MethodSpec(name="reinforce"), micro_batch_size=micro_batch_size)
    toy = _grads(MethodSpec(name="toy_method", params={"scale": 3}),
                 micro_batch_size=micro_batch_size)
    both = _grads(MethodSpec(name="toy_method", params={"scale": 3}, policy_loss="toy_loss"),
                  micro_batch_size=micro_batch_size)
    assert len(reference) == len(toy) == len(both) > 0
    for r, t, b in zip(reference, toy, both, strict=True):
        torch.testing.assert_close(t, 3 * r, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(b, 6 * r, rtol=1e-4, atol=1e-6)


def test_toy_controller_plans(toys: None) -> None:
    history = History(campaigns=(), summaries=(), checkpoints=("init",), max_steps=20,
                      base_lr=1e-3)
    plan = make_controller("toy_ctl", {"budget": 5}).plan(history)
    assert (plan.start_from, plan.budget, plan.lr, plan.reason) == ("init", 5, 1e-3,
                                                                    "toy: budget 5")
    with pytest.raises(UserError, match="toy_ctl"):
        make_controller("toy_ctl", {"budget": 0})


def test_toy_task_source_gives_its_splits(toys: None) -> None:
    selection = load_selection(TasksSpec(source="toy_src", train=2, eval=3, test=1))
    assert {k: [t.task_id for t in v] for k, v in selection.splits.items()} == {
        "train": ["echo/train/0", "echo/train/1"],
        "eval": ["echo/eval/0", "echo/eval/1", "echo/eval/2"], "test": ["echo/test/0"]}
    assert source_version("toy_src") == "7"


def test_toy_executor_runs_through_the_registry(toys: None, tmp_path: Path) -> None:
    cells = {}
    for cid in ("a", "b"):
        cells[cid] = tmp_path / "cells" / cid
        cells[cid].mkdir(parents=True)
    settings = executor_settings("toy_exec", {"exit_code": "3"})  # strings, as from the CLI
    options = ExecutorOptions(run_dir=tmp_path, settings=settings)
    assert describe("toy_exec", options) == {"name": "toy_exec", "exit_code": 3}
    events: list[tuple[str, str]] = []
    codes = get_executor("toy_exec")(cells, 1, lambda cid, ev: events.append((cid, ev["event"])),
                                     options)
    assert codes == {"a": 3, "b": 3}
    assert events == [("a", "start"), ("a", "exit"), ("b", "start"), ("b", "exit")]
    assert (cells["b"] / "ran").read_text() == "b"
    # no settings: the executor's defaults
    assert describe("toy_exec", ExecutorOptions(run_dir=tmp_path)) == {"name": "toy_exec",
                                                                       "exit_code": 0}
    with pytest.raises(UserError, match=r"no option 'exit_cod' \(did you mean 'exit_code'\?\)"):
        executor_settings("toy_exec", {"exit_cod": "1"})
    with pytest.raises(UserError, match="option exit_code"):
        executor_settings("toy_exec", {"exit_code": "x"})


def test_bench_executor_flags_fill_the_chosen_executors_options(
        toys: None, capsys: pytest.CaptureFixture[str]) -> None:
    """Checked before the spec is read: nothing runs."""
    assert main(["bench", "tiny-smoke", "--executor", "toy_exec", "--address", "auto"]) == 1
    assert "--address is not an option of executor 'toy_exec' (it takes: exit_code)" in (
        capsys.readouterr().err)
    assert main(["bench", "tiny-smoke", "--executor", "toy_exec",
                 "--executor-option", "exit-codes=2"]) == 1
    assert "did you mean 'exit_code'" in capsys.readouterr().err
    assert main(["bench", "tiny-smoke", "--executor", "toy_exec",
                 "--executor-option", "exit_code"]) == 1
    assert "write KEY=VALUE" in capsys.readouterr().err
    assert main(["bench", "tiny-smoke", "--executor", "nope"]) == 1
    assert "unknown executor 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------- registries
def test_registry_registers_unregisters_and_describes() -> None:
    reg: Registry[Any] = Registry("widget")

    def fn() -> None:
        """Does a thing. More text."""

    class Base:
        """Base docstring, not a description of subclasses."""

    class Sub(Base):
        pass

    reg.add("fn", fn)
    reg.add("sub", Sub)
    reg.add("given", Sub, description="given at registration")
    assert reg.description("fn") == "Does a thing."
    assert reg.description("given") == "given at registration"
    # not Base's docstring: the first sentence of its module's (this one's)
    assert reg.description("sub") == first_sentence(__doc__)
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("fn", fn)
    with reg.registered("tmp", fn):
        assert "tmp" in reg
    assert "tmp" not in reg and reg.names() == ["fn", "given", "sub"]
    assert reg.unregister("fn") is fn and "fn" not in reg
    with pytest.raises(KeyError, match="unknown widget 'fn'"):
        reg.unregister("fn")


def test_a_description_does_not_end_at_an_abbreviation() -> None:
    # `harness components` showed "dr_grpo  Dr." and cut "(Yu et al." mid-parenthesis
    assert first_sentence("Dr. GRPO: no std (Liu et al. 2025). More.") == (
        "Dr. GRPO: no std (Liu et al. 2025).")
    assert first_sentence("A signal (eq. 2, e.g. here). Next.") == "A signal (eq. 2, e.g. here)."
    assert first_sentence("One. Two.") == "One."
    assert first_sentence("Ends with et al.") == "Ends with et al."
    from harness.methods import METHODS

    assert METHODS.description("dr_grpo").startswith("Dr. GRPO: ")
    assert all(d.count("(") == d.count(")") for d in (
        METHODS.description(n) for n in METHODS.names())), "a description cut inside (...)"


def test_old_flat_method_keys_say_where_they_moved(tmp_path: Path) -> None:
    for key, value in (("baseline", "batch_mean"), ("eps", "0.001")):
        (tmp_path / "old.yaml").write_text(
            SPEC.replace("{name: toy_method, params: {scale: 3}, policy_loss: toy_loss}",
                         f"{{name: reinforce, {key}: {value}}}")
            .replace("{name: toy_ctl, params: {budget: 3}}", "naive")
            .replace("source: toy_src", "source: synthetic"))
        with pytest.raises(SpecError) as e:
            load_spec(str(tmp_path / "old.yaml"))
        (problem,) = e.value.problems
        assert f"method.{key} moved to method.params.{key}" in str(problem)
        assert problem.line == 4


def test_task_styles_are_the_graders() -> None:
    import grader_sandbox.schema

    assert STYLES is grader_sandbox.schema.STYLES
    assert set(get_args(Style)) == set(STYLES)
