"""Spec resolution and identity: hashes ignore formatting, follow values, and are stable
across processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.spec import expand_cells, load_spec, registered_specs, spec_hash

REPO = Path(__file__).resolve().parents[1]


def _plan_json(ref: str, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["plan", ref, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_registered_spec_validates(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in (REPO / "benchmarks").glob("*.yaml"))
    assert len(files) >= 7
    assert main(["validate", *files]) == 0
    assert capsys.readouterr().out.count("ok ") == len(files)


def test_study_specs_are_registered() -> None:
    names = set(registered_specs())
    assert {"qwen3b-care-v2", "qwen7b-controllers", "qwen7b-grpo", "qwen3b-constraints",
            "gemma4b-pilot", "tiny-smoke", "tiny-collapse", "tiny-study"} <= names


def test_plan_qwen3b_care_v2(capsys: pytest.CaptureFixture[str]) -> None:
    doc = _plan_json("qwen3b-care-v2", capsys)
    assert doc["n_cells"] == 10 and len(doc["cells"]) == 10
    assert {c["campaigns"] for c in doc["cells"]} == {10}
    assert {c["steps"] for c in doc["cells"]} == {20}
    assert {c["controller"] for c in doc["cells"]} == {"naive", "care_v2"}
    assert sorted({c["seed"] for c in doc["cells"]}) == [0, 1, 2, 3, 4]
    assert len(doc["spec_hash"]) == 64
    assert len({c["cell_id"] for c in doc["cells"]}) == 10


def test_hash_and_cell_ids_stable_across_processes() -> None:
    code = ("import json; from harness.spec import load_spec, spec_hash, expand_cells; "
            "s,_=load_spec('qwen3b-care-v2'); "
            "print(json.dumps([spec_hash(s), [c.cell_id for c in expand_cells(s)]]))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": str(seed), "PATH": "/usr/bin"}
                           ).stdout for seed in (1, 2)]
    assert runs[0] == runs[1]
    h, ids = json.loads(runs[0])
    spec, _ = load_spec("qwen3b-care-v2")
    assert h == spec_hash(spec)
    assert ids == [c.cell_id for c in expand_cells(spec)]


def _reordered_with_comments(data: dict) -> str:
    """The same mapping with keys in reverse order, flow style mixed in, and comments."""
    def rev(x):
        if isinstance(x, dict):
            return {k: rev(x[k]) for k in reversed(list(x))}
        if isinstance(x, list):
            return [rev(v) for v in x]
        return x

    body = yaml.safe_dump(rev(data), sort_keys=False, default_flow_style=None, width=60)
    lines = ["# a comment at the top", ""]
    for line in body.splitlines():
        if line and not line[0].isspace():
            lines.append("# a comment between top-level keys")
        lines.append(line + ("    # trailing comment" if line.endswith(":") else ""))
    return "\n".join(lines) + "\n"


def test_formatting_does_not_change_hash_but_values_do(tmp_path: Path) -> None:
    src = REPO / "benchmarks" / "tiny-smoke.yaml"
    data = yaml.safe_load(src.read_text())
    h0 = spec_hash(load_spec(str(src))[0])

    copy = tmp_path / "copy.yaml"
    copy.write_text(_reordered_with_comments(data))
    assert copy.read_text() != src.read_text()
    assert spec_hash(load_spec(str(copy))[0]) == h0

    # A default written out explicitly is the same resolved spec.
    data_default = dict(data, exclude=[])
    explicit = tmp_path / "explicit.yaml"
    explicit.write_text(yaml.safe_dump(data_default))
    assert spec_hash(load_spec(str(explicit))[0]) == h0

    changed = dict(data, rollout=dict(data["rollout"], group_size=data["rollout"]["group_size"] + 1))
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(changed))
    s_other = load_spec(str(other))[0]
    assert spec_hash(s_other) != h0
    assert {c.cell_id for c in expand_cells(s_other)}.isdisjoint(
        c.cell_id for c in expand_cells(load_spec(str(src))[0]))


def test_extends_overrides_and_inherits(tmp_path: Path) -> None:
    child = tmp_path / "child.yaml"
    child.write_text(f"""
name: child
version: 3
extends: {REPO / 'benchmarks' / 'tiny-smoke.yaml'}
seeds: [5, 6]
rollout: {{group_size: 2}}
""")
    spec, _ = load_spec(str(child))
    parent, _ = load_spec("tiny-smoke")
    assert spec.name == "child" and spec.version == 3
    assert spec.seeds == [5, 6]
    assert spec.rollout.group_size == 2
    # untouched keys of a merged section are inherited
    assert spec.rollout.max_new_tokens == parent.rollout.max_new_tokens
    assert spec.chain == parent.chain
    assert len(expand_cells(spec)) == 2


def test_exclude_drops_cells(tmp_path: Path) -> None:
    f = tmp_path / "x.yaml"
    f.write_text("""
name: x
version: 1
models: [tiny]
methods: [reinforce, grpo]
controllers: [naive, es]
seeds: [0, 1]
exclude:
  - {method: grpo, controller: es}
  - {seed: 1, controller: naive}
""")
    cells = expand_cells(load_spec(str(f))[0])
    combos = {(c.method.arm, c.controller.arm, c.seed) for c in cells}
    assert ("grpo", "es", 0) not in combos and ("reinforce", "naive", 1) not in combos
    assert len(cells) == 8 - 2 - 2


def test_cell_config_carries_everything_that_determines_results() -> None:
    spec, _ = load_spec("tiny-smoke")
    cell = expand_cells(spec)[0]
    for key in ("model", "method", "controller", "seed", "chain", "tasks", "eval", "rollout",
                "optim", "grader"):
        assert key in cell.config
    assert cell.cell_id.startswith("tiny_reinforce_naive_s0_")


def test_spec_schema_command_prints_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["spec-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    props = schema["properties"]
    for key in ("name", "version", "extends", "models",
                "methods", "controllers", "seeds", "exclude", "chain", "tasks", "eval",
                "rollout", "grader", "comparisons"):
        assert key in props
    # every field of the spec and of every section is documented
    for field, info in props.items():
        assert "description" in info, f"Spec.{field} has no description"
    for name, sub in schema["$defs"].items():
        for field, info in sub.get("properties", {}).items():
            assert "description" in info, f"{name}.{field} has no description"


def test_list_shows_registered_specs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "qwen3b-care-v2" in text and "tiny-smoke" in text


def test_hash_matches_resolved_json() -> None:
    spec, _ = load_spec("qwen7b-grpo")
    assert spec_hash(spec) == spec_hash(type(spec).model_validate(spec.model_dump(mode="json")))
