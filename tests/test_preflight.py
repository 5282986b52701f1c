"""`harness validate --offline` and bench's check before its first cell: every model and task
source the spec names must load on this machine, one error line each, exit 2, within
seconds and before any cell starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BODY = ("name: pre\nversion: 1\nmodels: [MODELS]\n"
        "tasks: {TASKS, train: 2, eval: 2, test: 2}\n"
        "chain: {campaigns: 1, steps: 1}\n")


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None
         ) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HARNESS_MLFLOW": "off", **(env or {})})
    return r, time.monotonic() - t0


def _spec(tmp_path: Path, models: str, tasks: str = "source: synthetic") -> Path:
    path = tmp_path / "pre.yaml"
    path.write_text(BODY.replace("MODELS", models).replace("TASKS", tasks))
    return path


def _errors(r: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    return [ln for ln in r.stderr.splitlines() if ln.strip()]


def _saved_model(d: Path) -> Path:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    Qwen2ForCausalLM(Qwen2Config(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1)).save_pretrained(d)
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")),
        eos_token="b", pad_token="a").save_pretrained(d)
    return d


def test_offline_validate_names_each_model_that_cannot_load_here(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    weightless = tmp_path / "weightless"
    _saved_model(weightless)
    for f in weightless.glob("*.safetensors"):
        f.unlink()
    path = _spec(tmp_path, "./empty, ./weightless, ./nowhere, no-such-org/no-such-model-xyz")
    plain, _ = _cli("validate", str(path), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr  # without --offline: only the spec is checked
    r, seconds = _cli("validate", "--offline", str(path), cwd=tmp_path,
                      env={"HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2
    lines = _errors(r)
    assert len(lines) == 4, lines
    assert all(ln.startswith("error: ") for ln in lines)
    assert "'./empty' cannot be loaded (no config.json)" in lines[0]
    assert "'./weightless' cannot be loaded (no weights" in lines[1]
    assert "'./nowhere' does not exist" in lines[2]
    assert "no-such-org/no-such-model-xyz@main is not in the HF cache" in lines[3]
    assert "hf download" in lines[3]
    assert seconds < 60


def test_offline_validate_passes_a_saved_model_and_the_tiny_policy(tmp_path: Path):
    _saved_model(tmp_path / "good")
    r, _ = _cli("validate", "--offline", str(_spec(tmp_path, "tiny, ./good")), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok ")
    r, _ = _cli("validate", "--offline", "tiny-smoke", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_offline_validate_names_a_dataset_that_is_not_here(tmp_path: Path):
    path = _spec(tmp_path, "tiny", "source: apps")
    r, _ = _cli("validate", "--offline", str(path), cwd=tmp_path,
                env={"HF_HOME": str(tmp_path / "hf"),
                     "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")})
    assert r.returncode == 2
    (line,) = _errors(r)
    assert line.startswith(f"error: {path}: tasks (apps) cannot be loaded here")


@pytest.mark.parametrize("models", ["./nowhere", "./empty"])
def test_bench_refuses_before_any_cell_starts(tmp_path: Path, models: str):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    r, seconds = _cli("bench", str(_spec(tmp_path, f"tiny, {models}")), "--out", str(out),
                      cwd=tmp_path)
    assert r.returncode == 2
    lines = _errors(r)
    assert len(lines) == 1 and lines[0].startswith("error: model directory"), lines
    assert not list(out.glob("cells/*/trace.jsonl"))  # no cell started
    assert not list(out.glob("cells/*/log.txt"))
    assert seconds < 120
