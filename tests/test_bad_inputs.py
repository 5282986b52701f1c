"""Bad input where users meet the harness, on a real tiny-smoke run: each case is one error
line naming the problem and the fix (no traceback), a non-zero exit, and a gate that does
not pass what it could not check (a run whose every cell crashed, a mistyped baselines
directory, a seedless comparison)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "benchmarks" / "baselines" / "tiny-smoke.json"


def _harness(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err, cap.err
    return rc, cap.out, cap.err


@pytest.fixture()
def run(tiny_smoke_local_run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(tiny_smoke_local_run, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    return dest


def _trace(run: Path) -> Path:
    (path,) = run.glob("cells/*/trace.jsonl")
    return path


def _fail_every_cell(run: Path) -> None:
    results = json.loads((run / "results.json").read_text())
    for c in results["cells"]:
        c.update(status="failed", error="RuntimeError: boom", end_of_chain=None)
    (run / "results.json").write_text(json.dumps(results))


def test_a_run_whose_every_cell_failed_fails_the_gate(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fail_every_cell(run)
    empty = tmp_path / "no-baselines"
    empty.mkdir()  # nothing registered: before, "nothing gated" passed such a run
    rc, out, _ = _harness(capsys, "gate", str(run), "--baselines", str(empty))
    assert rc == 1, out
    assert "gate: FAIL (no cell of" in out and "RuntimeError: boom" in out


def test_no_worse_without_a_paired_seed_is_inconclusive() -> None:
    from harness.stats.paired import expectation_outcome, paired_comparison

    empty = paired_comparison({}, {1: 0.5}, higher_is_better=True)
    assert expectation_outcome(empty, "no_worse")[0] == "inconclusive"
    some = paired_comparison({1: 0.5}, {1: 0.5}, higher_is_better=True)
    assert expectation_outcome(some, "no_worse")[0] == "pass"  # one seed, no regression


@pytest.mark.parametrize("where", ["missing", "file"])
def test_a_mistyped_baselines_directory_is_an_error_not_a_pass(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    path = tmp_path / "typo"
    if where == "file":
        path.write_text("")
    for args in (["--baselines", str(path)], []):
        if not args:
            monkeypatch.setenv("HARNESS_BASELINES", str(path))
        for cmd in (["gate", str(run)], ["compare", str(run), "--against", "registered"]):
            rc, out, err = _harness(capsys, *cmd, *args)
            assert rc == 2, (cmd, out, err)
            assert err.count("error:") == 1 and f"baselines directory {path}" in err, err


def test_compare_against_registered_reads_this_platforms_variant(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "baselines"
    store.mkdir()
    mine = json.loads((run / "environment.json").read_text())["cpu"]["capability"]
    assert main(["baseline", "register", str(run), "--baselines", str(store), "--mode",
                 "exact"]) == 0
    path = store / "tiny-smoke.json"
    doc = json.loads(path.read_text())
    other = json.loads(json.dumps(doc["arms"][0]))
    other["provenance"]["environment"]["cpu"]["capability"] = f"NOT-{mine}"
    for p in other["per_seed"]:
        p["metrics"] = {k: (v - 0.25 if isinstance(v, float) else v)
                        for k, v in p["metrics"].items()}
    doc["arms"].insert(0, other)  # another machine's variant first, with other figures
    path.write_text(json.dumps(doc))
    capsys.readouterr()
    rc, out, err = _harness(capsys, "compare", str(run), "--against", "registered",
                            "--baselines", str(store))
    assert rc == 0, out + err
    row = next(ln for ln in out.splitlines() if "(reg)" in ln and "test p@1" in ln)
    assert "+0.000" in row, out  # its own variant: the run's own figures, no difference


def test_bench_over_a_finished_cell_with_a_corrupt_trace_says_so(
        run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_MLFLOW", "off")
    trace = _trace(run)
    trace.write_text(trace.read_text() + "{junk\n")
    n = len(trace.read_text().splitlines())
    rc, out, err = _harness(capsys, "bench", "tiny-smoke", "--out", str(run))
    assert rc == 1, out + err
    assert err.count("error:") == 1 and f"{trace}:{n}: not a JSON line" in err, err


def test_bench_refuses_a_run_directory_it_cannot_identify(
        run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_MLFLOW", "off")
    spec = run / "resolved_spec.json"
    before = spec.read_text()[:50]
    spec.write_text(before)
    rc, out, err = _harness(capsys, "bench", "tiny-smoke", "--out", str(run))
    assert rc == 1 and "cannot be read" in err and "choose another --out" in err, out + err
    assert spec.read_text() == before  # left as it was: nothing written into it
    afile = run / "afile"
    afile.write_text("")
    rc, _, err = _harness(capsys, "bench", "tiny-smoke", "--out", str(afile))
    assert rc == 1 and "is a file, not a directory" in err, err


def test_guard_on_a_cut_off_trace_and_a_bad_out_path(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _trace(run)
    whole = trace.read_text()
    lines = whole.splitlines()
    trace.write_text(whole[: len(whole) // 2])
    cut = len(trace.read_text().split("\n"))
    for cmd in ("score", "tune"):
        rc, _, err = _harness(capsys, "guard", cmd, str(run), "--controller", "any")
        assert rc == 1 and f"{trace}:{cut}: the last line is cut off" in err, err
    trace.write_text(whole)
    assert len(lines) > 3
    afile = run / "afile"
    afile.write_text("")
    for out, says in ((run, "is a directory"), (afile / "g.json", "is a file, not a directory")):
        rc, _, err = _harness(capsys, "guard", "tune", str(run), "--controller", "any",
                              "--out", str(out))
        assert rc == 1 and err.count("error:") == 1 and says in err, err
    assert afile.read_text() == ""
    rc, _, err = _harness(capsys, "guard", "score", str(run), "--seeds", "5-1")
    assert rc == 1 and "--seeds '5-1'" in err
    rc, _, err = _harness(capsys, "guard", "score", str(run), "--seeds", "77")
    assert rc == 1 and "with seeds 77" in err


def test_a_boolean_seed_is_a_spec_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nversion: 1\nmodels: [tiny]\nseeds: [0, true]\n")
    rc, _, err = _harness(capsys, "validate", str(path))
    assert rc == 2 and f"{path}:4: seeds[1]" in err, err


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HARNESS_MLFLOW": "off", **env})


BODY = ("name: pre\nversion: 1\nmodels: [MODEL]\ntasks: {source: synthetic, train: 2, eval: 2, "
        "test: 2}\nchain: {campaigns: 1, steps: 1}\n")


def test_a_model_directory_whose_tokenizer_is_broken_is_refused_before_any_cell(
        tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    d = tmp_path / "m"
    Qwen2ForCausalLM(Qwen2Config(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1)).save_pretrained(d)
    PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")),
        eos_token="b", pad_token="a").save_pretrained(d)
    (d / "tokenizer.json").write_text("{}")
    spec = tmp_path / "pre.yaml"
    spec.write_text(BODY.replace("MODEL", "./m"))
    for args in (["validate", "--offline", str(spec)],
                 ["bench", str(spec), "--out", str(tmp_path / "run")]):
        r = _cli(*args, cwd=tmp_path, env={})
        assert r.returncode == 2, r.stderr
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "its tokenizer does not load" in errors[0], r.stderr
    assert not list((tmp_path / "run").glob("cells/*/trace.jsonl"))


def test_a_hub_model_that_cannot_be_resolved_is_refused_before_any_cell(tmp_path: Path) -> None:
    """With the hub allowed (no HF_HUB_OFFLINE): a model neither in the cache nor known to
    the hub (here the hub is unreachable, or says it has no such model) is one line in
    seconds, before any cell starts."""
    spec = tmp_path / "pre.yaml"
    spec.write_text(BODY.replace("MODEL", "nobody-xyz/no-such-model-123"))
    out = tmp_path / "run"
    r = _cli("bench", str(spec), "--out", str(out), cwd=tmp_path,
             env={"HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "nobody-xyz/no-such-model-123" in errors[0], r.stderr
    assert "is not on the hub" in errors[0] or "hub cannot be reached" in errors[0]
    assert not list(out.glob("cells/*/trace.jsonl"))


def test_a_spec_that_is_not_utf8_names_its_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_bytes(b"name: s\nversion: 1\n# caf\xe9\nmodels: [tiny]\n")
    rc, _, err = _harness(capsys, "validate", str(path))
    assert rc == 2 and f"{path}:3: not UTF-8 text (byte 0xe9); save the file as UTF-8" in err


def test_a_run_path_that_is_a_file_and_a_missing_benchmarks_dir(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    for cmd in ("gate", "compare", "report"):
        rc, _, err = _harness(capsys, cmd, str(afile))
        assert rc == 2 and "is a file, not a run directory" in err, (cmd, err)
    monkeypatch.setenv("HARNESS_BENCHMARKS", str(tmp_path / "nowhere"))
    for args in (["list"], ["bench", "tiny-smoke"]):
        rc, _, err = _harness(capsys, *args)
        assert rc == 1 and err.count("error:") == 1 and "HARNESS_BENCHMARKS=" in err, err


@pytest.mark.parametrize(("body", "line", "says"), [
    ("comparisons:\n  - candidate: {method: reinforce, controller: naive}\n"
     "    baseline: {method: reinforce, controller: naive}\n", 5, "the same arm"),
    ("tasks: {source: synthetic, options: {data_files: x.jsonl}}\n", 4,
     "unknown option(s) ['data_files'] for task source 'synthetic'"),
])
def test_specs_that_would_run_but_mean_nothing_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, line: int,
        says: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nversion: 1\nmodels: [tiny]\n" + body)
    rc, _, err = _harness(capsys, "validate", str(path))
    assert rc == 2 and f"{path}:{line}:" in err and says in err, err


def test_a_record_after_the_final_one_stops_the_gate(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _trace(run)
    lines = trace.read_text().splitlines()
    step = next(ln for ln in lines if json.loads(ln)["type"] == "step")
    trace.write_text("\n".join([*lines, step]) + "\n")
    rc, _, err = _harness(capsys, "gate", str(run))
    assert rc == 2 and f"{trace}:{len(lines) + 1}: a `step` record after" in err, err


def test_run_cell_on_a_broken_config_says_which_part_and_how_to_fix_it(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (cell,) = (run / "cells").iterdir()
    cfg = cell / "config.json"
    good = json.loads(cfg.read_text())
    fix = "delete it and re-run `harness bench` on its spec, which writes it again"
    bad_lr = {**good, "config": {**good["config"],
                                 "optim": {**good["config"]["optim"], "lr": "fast"}}}
    for doc, says in (({"cell_id": "x"}, "has no config (an object)"),
                      ({"config": good["config"]}, "has no cell_id (a string)"),
                      ([1], "is not a JSON object"),
                      (bad_lr, "is not a valid cell config (lr: Input should be a valid number")):
        cfg.write_text(json.dumps(doc))
        rc, _, err = _harness(capsys, "run-cell", str(cell))
        assert rc == 1 and err.count("error:") == 1 and says in err and fix in err, err
    rc, _, err = _harness(capsys, "run-cell", str(cfg))
    assert rc == 1 and "is a file, not a cell directory" in err, err


def test_reading_a_run_a_bench_is_still_writing_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """gate, compare, report and baseline register on a run directory whose bench has not
    written results.json yet: while that bench holds the directory's lock the one line says a
    bench (with its pid) is running and will write it; once it is gone, the usual fix."""
    import fcntl
    import os

    run = tmp_path / "run"
    run.mkdir()
    (run / "resolved_spec.json").write_text("{}")
    commands = (["gate", str(run)], ["compare", str(run)], ["report", str(run)],
                ["baseline", "register", str(run), "--baselines", str(tmp_path)])
    with open(run / ".bench.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()}\n")
        held.flush()
        for args in commands:
            rc, _, err = _harness(capsys, *args)
            assert rc == 2 and err.count("error:") == 1, (args, err)
            assert f"a `harness bench` (pid {os.getpid()}) is running on {run}" in err, err
    for args in commands:  # the lock is free: no bench is running
        rc, _, err = _harness(capsys, *args)
        assert rc == 2 and "does not exist;" in err and "is running" not in err, (args, err)


def test_a_results_file_with_no_cell_cannot_be_gated(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # before, an empty `cells` list skipped the "no cell finished" check and could pass
    results = json.loads((run / "results.json").read_text())
    results["cells"] = []
    (run / "results.json").write_text(json.dumps(results))
    empty = tmp_path / "no-baselines"
    empty.mkdir()
    rc, _, err = _harness(capsys, "gate", str(run), "--baselines", str(empty))
    assert rc == 2 and err.count("error:") == 1 and "lists no cell" in err, err


def test_the_ci_column_is_labelled_with_its_level(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _harness(capsys, "compare", str(run), "--against", str(run), "--alpha", "0.01")
    assert rc == 0 and "99% CI" in out and "95% CI" not in out, out
    rc, out, _ = _harness(capsys, "compare", str(run), "--against", str(run))
    assert rc == 0 and "95% CI" in out, out
