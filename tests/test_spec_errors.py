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
    ("fisher-batches-over-limit", GOOD.replace(
        "[reinforce]", "[{name: reinforce, ewc: {fisher_batches: 100000000}}]"),
     ["methods[0].ewc.fisher_batches", "less than or equal to 10000", "Limits"], 4),
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
    # sizes a spec can ask for are bounded (harness.spec.limits; docs/specs.md, Limits)
    ("steps-1e38", GOOD.replace("steps: 3", "steps: 100000000000000000000000000000000000000"),
     ["chain.steps", "less than or equal to 100000", "docs/specs.md, Limits"], 7),
    ("campaigns-float-huge", GOOD.replace("campaigns: 2", "campaigns: 1.0e+15"),
     ["chain.campaigns", "less than or equal to 1000", "Limits"], 7),
    ("eval-samples-huge", GOOD + "eval: {samples_per_task: 1000000}\n",
     ["eval.samples_per_task", "1024", "Limits"], 8),
    ("max-new-tokens-huge", GOOD + "rollout: {max_new_tokens: 99999999999}\n",
     ["rollout.max_new_tokens", "1048576", "Limits"], 8),
    ("eval-split-huge", GOOD + "tasks: {eval: 1000000000}\n", ["tasks.eval", "Limits"], 8),
    ("group-size-huge", GOOD + "rollout: {group_size: 100000}\n",
     ["rollout.group_size", "Limits"], 8),
    ("grader-workers-huge", GOOD + "grader: {workers: 100000}\n",
     ["grader.workers", "Limits"], 8),
    ("tiny-recipe-huge", GOOD.replace("[tiny]", "[{id: tiny, tiny: {hidden_size: 10000000}}]"),
     ["models[0].tiny.hidden_size", "Limits"], 3),
    ("seed-too-large", GOOD.replace("seeds: [0, 1]", "seeds: [0, 4294967296]"),
     ["seeds[1]", "4294967295", "Limits"], 6),
    ("too-many-seeds", GOOD.replace("seeds: [0, 1]", f"seeds: {list(range(1001))}"),
     ["seeds", "at most 1000 items", "Limits"], 6),
    ("grid-too-large", GOOD.replace("seeds: [0, 1]", f"seeds: {list(range(1000))}").replace(
        "[naive]", "[naive, es, care_v1, care_v2, collapse_guard]").replace(
        "[reinforce]", "[reinforce, grpo, rloo]"),
     ["15,000 cells", "1 x 3 x 5 x 1000", "limit is 10,000", "Limits"], None),
    ("options-too-deep", GOOD + "tasks: {options: " + "{a: " * 40 + "1" + "}" * 41 + "\n",
     ["tasks.options", "more than 32 levels", "Limits"], 8),
    ("recursive-alias", GOOD.replace("models: [tiny]", "models: &m [tiny, *m]"),
     ["recursive YAML alias *m"], 3),
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


def test_registered_spec_name_must_be_its_file_name(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # `harness list` shows names and `harness plan NAME` finds files by stem: a registered
    # spec whose name is not its stem was listed under a name no command could find
    reg = tmp_path / "benchmarks"
    reg.mkdir()
    _write(reg, GOOD.replace("name: t", "name: foo"), "bar.yaml")
    _write(reg, GOOD.replace("name: t", "name: ok"), "ok.yaml")
    monkeypatch.setenv("HARNESS_BENCHMARKS", str(reg))
    assert main(["validate", "bar"]) == 2
    e = capsys.readouterr().err
    assert e.count("error:") == 1 and f"{reg / 'bar.yaml'}:1: name: 'foo'" in e, e
    assert "set `name: bar`, or rename the file to foo.yaml" in e, e
    assert main(["list"]) == 2
    captured = capsys.readouterr()
    assert "bar" in captured.out and "invalid" in captured.out and "ok" in captured.out
    assert main(["validate", "ok", str(reg / "ok.yaml")]) == 0
    assert capsys.readouterr().err == ""


def test_copy_that_keeps_a_registered_name_is_warned_about(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a copy of a registered spec, not renamed, would share that spec's runs and baseline
    copy = _write(tmp_path, GOOD.replace("name: t", "name: tiny-smoke"), "mine.yaml")
    assert main(["validate", str(copy)]) == 0
    captured = capsys.readouterr()
    assert f"ok {copy}: tiny-smoke@1" in captured.out
    warned = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(warned) == 1 and warned[0].startswith(f"warning: {copy}: name 'tiny-smoke'")
    assert "baselines/tiny-smoke.json" in warned[0] and "a name of its own" in warned[0]
    registered = Path(__file__).resolve().parents[1] / "benchmarks" / "tiny-smoke.yaml"
    assert main(["validate", "tiny-smoke", str(registered)]) == 0
    assert capsys.readouterr().err == ""


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


# --------------------------------------------------------------------------- limits
# A spec must not exhaust the machine: each of these ends in one error line and exit 2,
# within seconds, in a process whose address space is capped at 1 GiB (the alias bomb alone
# grew past 9.8 GiB before the limits; the 39 MB file of seeds ran for minutes).
MEMORY_CAP = 1 << 30
SECONDS = 30  # the process as a whole, interpreter start included, on a loaded machine

BOMB = "".join(["name: t\nversion: 1\nmodels: [tiny]\n",
                'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n',
                *(f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n"
                  for p, c in zip("abcdefgh", "bcdefghi", strict=True))])


def _nested(depth: int) -> str:
    return "{a: " * depth + "1" + "}" * depth


def _cap_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def _validate_capped(path: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    import time

    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "harness.cli", "validate", str(path)],
                       capture_output=True, text=True, timeout=SECONDS * 4,
                       preexec_fn=_cap_memory)
    return r, time.monotonic() - t0


@pytest.mark.parametrize(("case", "needles"), [
    ("nested-1000", ["nest more than 500 levels deep", "docs/specs.md, Limits"]),
    ("alias-bomb", ["100,000 values with its YAML aliases expanded", "Limits"]),
    ("file-50mb", ["spec file is 47.7 MiB", "1024 KiB", "Limits"]),
    ("seeds-5-million", ["spec file is", "MiB", "1024 KiB", "Limits"]),
    ("steps-1e38", ["chain.steps", "less than or equal to 100000", "Limits"]),
])
def test_spec_cannot_exhaust_the_machine(tmp_path: Path, case: str, needles: list[str]) -> None:
    path = tmp_path / f"{case}.yaml"
    head = "name: t\nversion: 1\nmodels: [tiny]\n"
    if case == "nested-1000":
        path.write_text(head + "x: " + _nested(1000) + "\n")
    elif case == "alias-bomb":
        assert len(BOMB) < 400
        path.write_text(BOMB)
    elif case == "file-50mb":
        path.write_text(head + "description: '" + "x" * 50_000_000 + "'\n")
    elif case == "seeds-5-million":
        path.write_text(head + "seeds: [" + ", ".join(map(str, range(5_000_000))) + "]\n")
        assert path.stat().st_size > 39_000_000
    else:
        path.write_text(head + "chain: {steps: " + "1" + "0" * 38 + "}\n")
    r, seconds = _validate_capped(path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), lines
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert seconds < SECONDS, f"{case} took {seconds:.1f} s"


def test_nesting_300_deep_is_within_the_limit(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """300 levels load as before: the unknown key is the one problem, not the depth."""
    path = _write(tmp_path, GOOD + "colour: " + _nested(300) + "\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'colour'" in err[0], err
    deep_list = _write(tmp_path, GOOD.replace("seeds: [0, 1]", "seeds: [0, 1]\nexclude: "
                                              + "[" * 300 + "]" * 300), "list.yaml")
    assert main(["validate", str(deep_list)]) == 2
    assert "levels deep" not in capsys.readouterr().err


def test_aliases_within_the_limit_still_work(tmp_path: Path) -> None:
    text = (GOOD.replace("[reinforce]", "[&m reinforce, {name: *m, label: again}]")
            .replace("[naive]", "[&n {name: naive}, {<<: *n, label: again}]"))
    spec, _ = load_spec(str(_write(tmp_path, text)))
    assert [m.arm for m in spec.methods] == ["reinforce", "again"]
    assert [c.arm for c in spec.controllers] == ["naive", "again"]


def test_registered_specs_are_within_the_limits(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.spec import registered_specs

    names = list(registered_specs())
    assert {"tiny-smoke", "qwen7b-grpo", "qwen7b-controllers", "qwen3b-care-v2"} <= set(names)
    assert main(["validate", *names]) == 0
    assert capsys.readouterr().err == ""


def test_limits_are_documented() -> None:
    from harness.spec import limits

    doc = (Path(__file__).resolve().parents[1] / "docs" / "specs.md").read_text()
    assert "## Limits" in doc
    for name in ("MAX_SPEC_BYTES", "MAX_DEPTH", "MAX_NODES", "MAX_VALUE_DEPTH", "MAX_CELLS",
                 "MAX_AXIS", "MAX_SEED", "MAX_CAMPAIGNS", "MAX_STEPS", "MAX_PROBLEMS",
                 "MAX_SAMPLES", "MAX_NEW_TOKENS"):
        value = getattr(limits, name)
        shown = f"{value // 1024} KiB" if name == "MAX_SPEC_BYTES" else f"{value:,}"
        assert shown in doc, f"{name} = {shown} is not in docs/specs.md"


# --------------------------------------------------------------------------- files
def test_extends_missing_file_names_the_path_tried(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, GOOD + "extends: parents/base.yaml\n")
    assert main(["validate", str(tmp_path / "spec.yaml")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'spec.yaml'}:8: extends: no such spec file")
    assert str(tmp_path / "parents" / "base.yaml") in line


def test_a_directory_is_not_called_a_missing_file(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, GOOD, "one.yaml")
    for ref in (str(tmp_path), f"{tmp_path}/"):
        assert main(["validate", ref]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "no such spec file" not in line
        assert "is a directory, not a spec file" in line and "one.yaml" in line


def test_error_in_parent_says_which_file_extends_it(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, GOOD.replace("steps: 3", "steps: -1"), "base.yaml")
    _write(tmp_path, "name: mid\nversion: 1\nextends: base.yaml\n", "mid.yaml")
    _write(tmp_path, "name: child\nversion: 1\nextends: mid.yaml\n", "child.yaml")
    assert main(["validate", str(tmp_path / "child.yaml")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {(tmp_path / 'base.yaml').resolve()}:7: chain.steps")
    assert line.endswith(f"(extended by {(tmp_path / 'mid.yaml').resolve()}, extended by "
                         f"{(tmp_path / 'child.yaml').resolve()})")
    # a problem found while reading the parent (here its YAML) says so too
    _write(tmp_path, "name: base\nversion: 1\nmodels: [tiny\n", "base.yaml")
    assert main(["validate", str(tmp_path / "mid.yaml")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "YAML syntax error" in line and f"extended by {(tmp_path / 'mid.yaml').resolve()}" \
        in line


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


def test_an_error_line_that_cannot_be_written_keeps_the_exit_code(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a terminal closed under a bench (SIGHUP) turns every write into EIO: the last line is
    # lost, the exit code must not be (before, the OSError escaped main as a traceback, rc 1)
    import errno
    import io

    from rich.console import Console

    import harness.cli as cli

    class Gone(io.StringIO):
        def write(self, s: str) -> int:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(cli, "err", Console(file=Gone(), soft_wrap=True))
    assert main(["plan", "no-such-spec"]) == 2
