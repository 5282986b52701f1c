"""The helper scripts the CI workflows call (ci/): which specs the nightly runs, and what a
gate exit code does to a job."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

from harness.spec import registered_specs

REPO = Path(__file__).resolve().parents[1]


def _load_gpu_specs():
    spec = importlib.util.spec_from_file_location("gpu_specs", REPO / "ci" / "gpu_specs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_specs_are_the_registered_specs_not_named_tiny(monkeypatch):
    monkeypatch.delenv("HARNESS_BENCHMARKS", raising=False)
    gpu_specs = _load_gpu_specs()
    assert gpu_specs.registered() == sorted(registered_specs())
    chosen = gpu_specs.gpu_specs([])
    assert chosen and all(not n.startswith("tiny") for n in chosen)
    assert set(chosen) | {n for n in registered_specs() if n.startswith("tiny")} == set(
        registered_specs())


def test_gpu_specs_named_on_dispatch_must_be_registered(capsys):
    gpu_specs = _load_gpu_specs()
    assert gpu_specs.main(["tiny-smoke, qwen7b-grpo tiny-smoke"]) == 0
    assert capsys.readouterr().out.strip() == '["tiny-smoke", "qwen7b-grpo"]'
    with pytest.raises(SystemExit, match="not a registered spec: qwen-typo"):
        gpu_specs.main(["qwen-typo"])


@pytest.mark.parametrize(("gate_rc", "policy", "job_rc", "annotation"), [
    (0, "pass", 0, None),
    (1, "pass", 1, "::error"),
    (3, "pass", 0, "::warning"),
    (3, "fail", 3, "::error"),
    (2, "pass", 2, "::error"),
])
def test_gate_script_turns_the_gate_exit_code_into_the_job_verdict(
        tmp_path: Path, gate_rc: int, policy: str, job_rc: int, annotation: str | None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "harness"
    fake.write_text(f"#!/bin/sh\necho \"gate table for $2\"\nexit {gate_rc}\n")
    fake.chmod(0o755)
    run_dir = tmp_path / "runs" / "spec@1" / "run"
    run_dir.mkdir(parents=True)
    summary = tmp_path / "summary.md"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               GITHUB_STEP_SUMMARY=str(summary))
    out = subprocess.run(["bash", str(REPO / "ci" / "gate.sh"), str(run_dir), "--inconclusive",
                          policy], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == job_rc, out.stdout + out.stderr
    assert (annotation in out.stdout) if annotation else "::" not in out.stdout
    assert (run_dir / "gate.txt").read_text() == f"gate table for {run_dir}\n"
    assert f"exit {gate_rc}" in summary.read_text()
