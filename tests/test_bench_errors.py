"""Bad input to `harness bench` / `run-cell`: one clear error line, non-zero exit, nothing
lost."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.runner.trace import Trace, read_trace

SPEC = """\
name: broken-model
version: 1
models: ["{model}"]
chain: {{campaigns: 1, steps: 1}}
tasks: {{train: 4, eval: 4, test: 4}}
eval: {{samples_per_task: 1, max_new_tokens: 8}}
rollout: {{group_size: 2, prompts_per_step: 2, max_new_tokens: 8}}
grader: {{workers: 1}}
"""


def _harness(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, timeout=1200)


def test_missing_local_model_is_refused_before_any_cell_with_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(model=str(tmp_path / "no-such-model")))
    r = _harness("bench", str(spec), "--out", str(tmp_path / "run"))
    assert r.returncode == 2  # like a spec error: found before any cell starts
    out = r.stdout + r.stderr
    assert "Traceback" not in out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out
    assert "no-such-model" in errors[0] and "does not exist" in errors[0]
    assert not list((tmp_path / "run").glob("cells/*/trace.jsonl"))  # no cell started


def test_unknown_hub_model_offline(tmp_path: Path) -> None:
    import os

    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(model="nobody-here/not-a-model"))
    r = subprocess.run([sys.executable, "-m", "harness.cli", "bench", str(spec), "--out",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=1200,
                       env={**os.environ, "HF_HUB_OFFLINE": "1",
                            "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2
    errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "nobody-here/not-a-model" in errors[0]
    assert "not in the HF cache" in errors[0]
    assert "Traceback" not in r.stdout + r.stderr
    assert not list((tmp_path / "run").glob("cells/*/trace.jsonl"))


def test_out_dir_of_another_spec_is_refused(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(model="./m"))
    out = tmp_path / "run"
    out.mkdir()
    (out / "resolved_spec.json").write_text(json.dumps({"spec_hash": "0" * 64,
                                                        "spec": {"name": "x", "version": 1}}))
    r = _harness("bench", str(spec), "--out", str(out))
    assert r.returncode == 1
    assert r.stderr.startswith("error:") and "with another grid" in r.stderr
    assert "Traceback" not in r.stderr


def test_run_cell_without_config(tmp_path: Path) -> None:
    r = _harness("run-cell", str(tmp_path))
    assert r.returncode == 1
    assert r.stderr.startswith(f"error: {tmp_path / 'config.json'} (the cell's config) does not "
                               "exist; delete it and re-run `harness bench`") and "Traceback" \
        not in r.stderr, r.stderr


def test_torn_trace_line_is_ignored_and_partial_campaign_dropped(tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    lines = [{"type": "plan", "campaign": 0}, {"type": "step", "campaign": 0, "step": 0},
             {"type": "campaign", "campaign": 0}, {"type": "plan", "campaign": 1},
             {"type": "step", "campaign": 1, "step": 0}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"type": "st')
    assert len(read_trace(path)) == 5
    t = Trace(path)
    assert t.truncate_to_complete_campaigns() == 1
    assert [r["type"] for r in read_trace(path)] == ["plan", "step", "campaign"]


def test_full_disk_keeps_the_trace_and_says_so(tmp_path: Path) -> None:
    """A run directory on a 512 KiB tmpfs: the trace fits, a campaign checkpoint does not."""
    import pytest

    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
    try:
        spec = tmp_path / "s.yaml"
        spec.write_text(SPEC.format(model="tiny"))
        r = _harness("bench", str(spec), "--out", str(mnt / "run"))
        assert r.returncode == 1
        out = r.stdout + r.stderr
        assert "Traceback" not in out
        errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "No space left on device" in errors[0], out
        assert "free disk space" in errors[0]
        (cell,) = (mnt / "run" / "cells").iterdir()
        steps = [x for x in read_trace(cell / "trace.jsonl") if x["type"] == "step"]
        assert [s["step"] for s in steps] == [0, 1]  # the finished steps are kept
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_read_only_out_directory_is_one_line(tmp_path: Path) -> None:
    """`--out` on an existing directory of a read-only file system: one error line, not the
    traceback of the temporary file's cleanup (which fails with EROFS too)."""
    import pytest

    ro = tmp_path / "ro"
    ro.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", str(ro)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root): {r.stderr.strip()}")
    try:
        spec = tmp_path / "s.yaml"
        spec.write_text(SPEC.format(model="tiny"))
        r = _harness("bench", str(spec), "--out", str(ro))
        assert r.returncode == 1
        assert "Traceback" not in r.stdout + r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith(f"error: cannot write {ro}/") and "Read-only file system" in line
        assert "choose a writable directory with --out" in line
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


CHAIN_SPEC = SPEC.format(model="tiny").replace("campaigns: 1, steps: 1", "campaigns: 3, steps: 3")


def test_ctrl_c_says_what_stopped_and_how_to_resume(tmp_path: Path) -> None:
    """SIGINT to the whole process group (what Ctrl-C does) once the first campaign is done:
    exit 130 and one line naming the cell, its campaign and the command that resumes it; that
    command resumes the cell from campaign 2. stdout is a pipe, so progress comes as plain
    lines, one per finished campaign and per finished cell."""
    import os
    import signal
    import time

    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN_SPEC.replace("broken-model", "chain"))
    out = tmp_path / "run"
    env = {**os.environ, "HARNESS_MLFLOW": "off"}
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", str(spec), "--out",
                          str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stdout is not None
    lines, t0 = [], time.monotonic()
    for line in p.stdout:
        lines.append(line)
        if ": campaign 1 of 3 finished" in line:
            os.killpg(p.pid, signal.SIGINT)
            break
        assert time.monotonic() - t0 < 600, "".join(lines)
    rest, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err + rest
    (cell,) = (out / "cells").iterdir()
    (line,) = err.strip().splitlines()
    m = re.fullmatch(rf"interrupted cell {cell.name} in campaign ([23]) of 3; {out} keeps every "
                     rf"finished campaign; resume with: harness bench {spec} --out {out}", line)
    assert m, line  # the cell runs on while the signal travels: campaign 2 or 3
    k = int(m.group(1))

    r = _harness("bench", str(spec), "--out", str(out))
    assert r.returncode == 0, r.stderr
    said = r.stdout.splitlines()
    assert (f"resuming cell {cell.name} from campaign {k} of 3 ({k - 1} campaigns finished "
            "before)") in said, r.stdout
    campaigns = [ln for ln in said if ln.startswith(f"cell {cell.name}: campaign ")]
    assert [ln.split(": campaign ")[1][:6] for ln in campaigns] == [
        f"{i} of 3" for i in range(k, 4)]
    assert f"cell {cell.name}: finished (1 of 1 cells done)" in said


def test_a_second_bench_on_a_running_directory_is_refused(tmp_path: Path) -> None:
    """A run directory another `harness bench` holds (its `.bench.lock`, locked, with its pid;
    here this test holds it): a bench on it is refused at once with one line naming that pid,
    and writes nothing there (before, it rewrote the run's environment.json under the first
    and reported the cell the first was running as failed). Once the lock is free, it runs."""
    import fcntl
    import os

    spec = tmp_path / "s.yaml"
    spec.write_text(SPEC.format(model="tiny"))
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "HARNESS_MLFLOW": "off"}
    with open(out / ".bench.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write(f"{os.getpid()}\n")
        held.flush()
        r = subprocess.run([sys.executable, "-m", "harness.cli", "bench", str(spec), "--out",
                            str(out)], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "Traceback" not in r.stdout + r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert line == (f"error: another `harness bench` (pid {os.getpid()}) is running on "
                        f"{out}; wait for it to finish, or stop it (Ctrl-C or kill; the run "
                        "resumes) and run this again"), line
        assert sorted(p.name for p in out.iterdir()) == [".bench.lock"]
    r = subprocess.run([sys.executable, "-m", "harness.cli", "bench", str(spec), "--out",
                        str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "results.json").read_text())["cells"][0]["status"] == "finished"
    assert (out / ".bench.lock").read_text().strip().isdigit()  # the pid of the one that ran


def test_oversubscribed_jobs_are_warned_of() -> None:
    from harness.bench import oversubscribed

    assert oversubscribed(2, 1, cpus=2) is None
    assert oversubscribed(1, 2, cpus=2) is None
    line = oversubscribed(2, 2, cpus=2)  # the guide's case: 2 cells x 2 threads on 2 cores
    assert line is not None and "= 4 threads on 2 CPU(s)" in line and "--jobs 1 fits" in line
    assert "--jobs 4 fits" in (oversubscribed(6, 1, cpus=4) or "")
    alone = oversubscribed(1, 4, cpus=2) or ""  # no --jobs helps: say so, not "--jobs 1 fits"
    assert alone.startswith("warning: each cell runs 4 threads (resources.cpus_per_cell) on 2 "
                            "CPU(s): ") and "fits" not in alone


def test_bench_warns_when_its_cells_outnumber_the_cpus(tmp_path: Path) -> None:
    """`--jobs 2` in a process allowed one CPU (taskset, a cpuset): one warning line that
    says so and what fits; the run itself goes on and finishes."""
    import os

    spec = tmp_path / "two.yaml"
    spec.write_text(SPEC.format(model="tiny").replace("broken-model", "two")
                    + "seeds: [0, 1]\n")
    r = subprocess.run([sys.executable, "-m", "harness.cli", "bench", str(spec), "--out",
                        str(tmp_path / "run"), "--jobs", "2"], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "HARNESS_MLFLOW": "off"},
                       preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stdout.splitlines() if ln.startswith("warning: ")]
    assert warnings == ["warning: 2 cells at once x 1 thread(s) each (resources.cpus_per_cell) "
                        "= 2 threads on 1 CPU(s): the cells share cores and each runs slower; "
                        "--jobs 1 fits this machine (results are the same either way)"], r.stdout


def test_a_cell_killed_by_sigkill_is_named_and_resumes(tmp_path: Path,
                                                       wait_for_steps: Any) -> None:
    """The out-of-memory killer's SIGKILL to a cell's process mid-chain: the bench says the
    cell was killed by SIGKILL and what to do (before: "exited without output"), exits 1,
    and the same command resumes the cell to its end."""
    import os
    import signal

    spec = tmp_path / "chain.yaml"
    spec.write_text(SPEC.format(model="tiny").replace("broken-model", "chain").replace(
        "campaigns: 1, steps: 1", "campaigns: 2, steps: 2"))
    out = tmp_path / "run"
    env = {**os.environ, "HARNESS_MLFLOW": "off"}
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", str(spec), "--out",
                          str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env)
    cell = wait_for_steps(out, p)
    pids = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()
            and _cmdline(d)[-2:] == ["run-cell", str(cell)]]
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    said, err = p.communicate(timeout=300)
    assert p.returncode == 1, err
    assert "Traceback" not in said + err
    (line,) = [ln for ln in (said + err).splitlines() if ln.startswith("error:")]
    assert line.startswith(f"error: cell {cell.name} failed: its process was killed by SIGKILL "
                           "(what the kernel's out-of-memory killer sends"), line
    assert "re-run the same command to resume it from its last finished campaign" in line
    r = _harness("bench", str(spec), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert f"cell {cell.name}: finished (1 of 1 cells done)" in r.stdout


def _cmdline(proc_dir: Path) -> list[str]:
    try:
        return (proc_dir / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []
