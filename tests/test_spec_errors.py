"""Broken specs end in exit code 2 and one clear line per problem (file, line, key path,
did-you-mean), never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.errors import SpecError
from harness.spec import load_spec

GOOD = """\
name: t
version: 1
models: [tiny]
methods: [reinforce]
controllers: [naive]
seeds: [0, 1]
chain: {campaigns: 2, steps: 3}
"""

# (id, spec text, substrings the error must contain, expected line or None)
BROKEN: list[tuple[str, str, list[str], int | None]] = [
    ("yaml-syntax", "name: t\nversion: 1\nmodels: [tiny\n", ["YAML syntax error"], None),
    ("yaml-tab-indent", "name: t\nversion: 1\nmodels:\n\t- tiny\n", ["YAML syntax error"], 4),
    ("not-a-mapping", "- tiny\n- reinforce\n", ["must be a YAML mapping"], 1),
    ("empty-file", "", ["must be a YAML mapping"], None),
    ("scalar-file", "just text\n", ["must be a YAML mapping"], None),
    ("missing-name", GOOD.replace("name: t\n", ""), ["name", "required key is missing"], None),
    ("missing-version", GOOD.replace("version: 1\n", ""), ["version", "missing"], None),
    ("missing-models", GOOD.replace("models: [tiny]\n", ""), ["models", "missing"], None),
    ("unknown-top-key", GOOD + "seed: [3]\n", ["unknown key 'seed'", "did you mean 'seeds'"], 8),
    ("unknown-nested-key", GOOD + "rollout: {grup_size: 4}\n",
     ["rollout.grup_size", "did you mean 'group_size'"], 8),
    ("unknown-chain-key", GOOD.replace("steps: 3", "stpes: 3"),
     ["chain.stpes", "did you mean 'steps'"], 7),
    ("wrong-type-int", GOOD.replace("steps: 3", "steps: many"), ["chain.steps", "'many'"], 7),
    ("wrong-type-float", GOOD + "optim: {lr: fast}\n", ["optim.lr", "'fast'"], 8),
    ("wrong-type-list", GOOD.replace("seeds: [0, 1]", "seeds: 3"), ["seeds", "list"], 6),
    ("wrong-type-seed-item", GOOD.replace("seeds: [0, 1]", "seeds: [0, x]"), ["seeds[1]"], 6),
    ("negative-steps", GOOD.replace("steps: 3", "steps: -3"), ["chain.steps", "greater than or equal to 1 (got -3)"], 7),
    ("zero-campaigns", GOOD.replace("campaigns: 2", "campaigns: 0"), ["chain.campaigns"], 7),
    ("negative-train-size", GOOD + "tasks: {train: -5}\n", ["tasks.train", "(got -5)"], 8),
    ("negative-lr", GOOD + "optim: {lr: -0.1}\n", ["optim.lr", "greater than 0"], 8),
    ("temperature-negative", GOOD + "rollout: {temperature: -1}\n",
     ["rollout.temperature"], 8),
    ("top-p-above-one", GOOD + "eval: {top_p: 1.5}\n", ["eval.top_p"], 8),
    ("collapse-threshold-range", GOOD.replace("steps: 3", "steps: 3, collapse_threshold: 2"),
     ["chain.collapse_threshold"], 7),
    ("unknown-method", GOOD.replace("[reinforce]", "[reinfroce]"),
     ["methods[0].name", "unknown method 'reinfroce'", "did you mean 'reinforce'"], 4),
    ("unknown-controller", GOOD.replace("[naive]", "[naiv]"),
     ["controllers[0].name", "did you mean 'naive'"], 5),
    ("unknown-model", GOOD.replace("[tiny]", "[tiny-polcy]"), ["models[0].id", "tiny-polcy"], 3),
    ("unknown-task-source", GOOD + "tasks: {source: humaneal}\n",
     ["tasks.source", "unknown task source 'humaneal'"], 8),
    ("bad-loss-agg", GOOD.replace("[reinforce]", "[{name: reinforce, loss_agg: mean}]"),
     ["methods[0].loss_agg"], 4),
    ("bad-kl-estimator", GOOD.replace("[reinforce]", "[{name: reinforce, kl: {estimator: k2}}]"),
     ["methods[0].kl.estimator"], 4),
    ("duplicate-seeds", GOOD.replace("seeds: [0, 1]", "seeds: [0, 1, 1]"),
     ["seeds", "duplicate seeds [1]"], 6),
    ("duplicate-labels", GOOD.replace("[reinforce]", "[reinforce, reinforce]"),
     ["methods[1]", "duplicate method label 'reinforce'"], 4),
    ("duplicate-yaml-key", GOOD + "seeds: [2]\n", ["duplicate key 'seeds'"], 8),
    ("empty-grid", GOOD + "exclude: [{controller: naive}]\n", ["grid is empty"], 8),
    ("exclude-unknown-label", GOOD + "exclude: [{method: grpo}]\n",
     ["exclude[0].method", "unknown method label 'grpo'"], 8),
    ("exclude-empty-rule", GOOD + "exclude: [{}]\n", ["exclude[0]", "at least one"], 8),
    ("exclude-unknown-seed", GOOD + "exclude: [{seed: 7}]\n", ["exclude[0].seed", "seed 7"], 8),
    ("comparison-unknown-arm", GOOD + "comparisons:\n  - candidate: {method: reinforce, "
     "controller: es}\n    baseline: {method: reinforce, controller: naive}\n",
     ["comparisons[0].candidate.controller", "unknown controller label 'es'"], 9),
    ("comparison-bad-metric", GOOD + "comparisons:\n  - candidate: {method: reinforce, "
     "controller: naive}\n    baseline: {method: reinforce, controller: naive}\n"
     "    metric: pass@5\n", ["comparisons[0].metric"], 11),
    ("bad-name", GOOD.replace("name: t", "name: Bad Name!"), ["name", "pattern"], 1),
    ("version-zero", GOOD.replace("version: 1", "version: 0"), ["version"], 2),
    ("empty-models", GOOD.replace("[tiny]", "[]"), ["models", "at least 1"], 3),
    ("tiny-recipe-on-hub-model", GOOD.replace(
        "[tiny]", "[{id: Qwen/Qwen2.5-3B-Instruct, tiny: {num_layers: 2}}]"),
     ["models[0]", "only valid with id: tiny"], 3),
    ("bad-dtype", GOOD.replace("[tiny]", "[{id: tiny, dtype: fp8}]"), ["models[0].dtype"], 3),
]


def _write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_spec_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # every BROKEN case is GOOD with one thing broken: GOOD itself must load as written
    path = _write(tmp_path, GOOD)
    spec, where = load_spec(str(path))
    assert where == path
    assert (spec.name, spec.version, spec.seeds) == ("t", 1, [0, 1])
    assert [m.id for m in spec.models] == ["tiny"]
    assert [m.name for m in spec.methods] == ["reinforce"]
    assert [c.name for c in spec.controllers] == ["naive"]
    assert (spec.chain.campaigns, spec.chain.steps) == (2, 3)
    assert main(["validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and f"ok {path}: t@1, 2 cells" in captured.out


@pytest.mark.parametrize(("text", "needles", "line"), [b[1:] for b in BROKEN],
                         ids=[b[0] for b in BROKEN])
def test_broken_spec_exits_2_with_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, needles: list[str],
    line: int | None,
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as raised:  # a SpecError, not another UserError or a bug
        load_spec(str(path))
    assert raised.value.problems
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert lines, "no error printed"
    assert "Traceback" not in captured.err + captured.out
    assert all(ln.startswith(f"error: {path}") for ln in lines), lines
    joined = "\n".join(lines)
    for n in needles:
        assert n in joined, f"{n!r} not in {joined!r}"
    if line is not None:
        assert any(ln.startswith(f"error: {path}:{line}:") for ln in lines), lines


def test_inheritance_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, GOOD + "extends: b.yaml\n", "a.yaml")
    _write(tmp_path, GOOD.replace("name: t", "name: b") + "extends: a.yaml\n", "b.yaml")
    assert main(["validate", str(tmp_path / "a.yaml")]) == 2
    e = capsys.readouterr().err
    assert "inheritance cycle: a.yaml -> b.yaml -> a.yaml" in e


def test_self_extends_is_a_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, GOOD + "extends: spec.yaml\n")
    assert main(["validate", str(tmp_path / "spec.yaml")]) == 2
    assert "inheritance cycle" in capsys.readouterr().err


def test_extends_missing_parent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, GOOD + "extends: tiny-smok\n")
    assert main(["validate", str(tmp_path / "spec.yaml")]) == 2
    e = capsys.readouterr().err
    assert "extends" in e and "did you mean 'tiny-smoke'" in e


def test_error_in_parent_names_parent_file(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, GOOD.replace("steps: 3", "steps: -1"), "parent.yaml")
    _write(tmp_path, "name: child\nversion: 1\nextends: parent.yaml\n", "child.yaml")
    assert main(["validate", str(tmp_path / "child.yaml")]) == 2
    e = capsys.readouterr().err
    assert f"{(tmp_path / 'parent.yaml').resolve()}:7: chain.steps" in e


def test_unknown_registered_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "qwen3b-care-v3"]) == 2
    assert "did you mean 'qwen3b-care-v2'" in capsys.readouterr().err


def test_several_problems_reported_together(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    text = GOOD.replace("steps: 3", "steps: -3").replace("[naive]", "[naiv]") + "colour: red\n"
    assert main(["validate", str(_write(tmp_path, text))]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 3


def test_cli_subprocess_no_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("seeds: [0, 1]", "seeds: [0, 0]"))
    r = subprocess.run([sys.executable, "-m", "harness.cli", "validate", str(path)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error:") and "duplicate seeds" in r.stderr


# --------------------------------------------------------------------------- fuzzing
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
_keys = st.one_of(st.sampled_from(["name", "version", "models", "methods", "controllers",
                                   "seeds", "exclude", "chain", "tasks", "eval", "rollout",
                                   "grader", "comparisons", "extends", "optim", "id", "steps",
                                   "label", "kl", "params"]), st.text(max_size=8))
_values = st.recursive(_scalars, lambda ch: st.one_of(st.lists(ch, max_size=4),
                                                      st.dictionaries(_keys, ch, max_size=4)),
                       max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.dictionaries(_keys, _values, max_size=8))
def test_fuzz_random_structures_never_crash(tmp_path: Path, data: dict) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        load_spec(str(path))
    except SpecError as e:
        assert e.problems and all(str(p) for p in e.problems)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("abc: -[]{}\n\t#'\"&*!|>%@`0123")),
                    max_size=80))
def test_fuzz_random_yaml_text_never_crashes(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        load_spec(str(path))
    except SpecError as e:
        assert e.problems


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(["chain", "tasks", "eval", "rollout", "optim", "grader"]),
       key=st.sampled_from(["steps", "campaigns", "train", "group_size", "lr", "timeout_s",
                            "temperature", "samples_per_task", "memory_mb"]),
       value=_values)
def test_fuzz_mutated_valid_spec(tmp_path: Path, section: str, key: str, value: object) -> None:
    data = yaml.safe_load(GOOD)
    data[section] = {key: value}
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        load_spec(str(path))
    except SpecError as e:
        assert e.problems
