from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never write into the user's cache or runs directory; the tiny policy is built
    once per session under a temporary cache unless HARNESS_CACHE is already set."""
    os.environ.setdefault("HARNESS_CACHE", str(tmp_path_factory.mktemp("harness-cache")))
    os.environ.setdefault("HARNESS_RUNS", str(tmp_path_factory.mktemp("runs")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


# Property tests draw the same examples on every run (a CI run must not fail on a new draw).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("harness", derandomize=True)
_hypothesis_settings.load_profile("harness")


# --------------------------------------------------------------------------- Docker
REPO_ROOT = REPO


@pytest.fixture(scope="session")
def docker_images() -> dict[str, str]:
    """A Docker engine and the harness images, built offline on a local Debian base by
    containers/build-local.sh (what CI does). Skipped, with the reason, only where no engine
    can be started; a failing base or image build fails the tests that need it."""
    import shutil
    import subprocess

    if shutil.which("docker") is None:
        pytest.skip("no docker client installed (apt-get install docker.io)")
    up = subprocess.run([str(REPO / "containers" / "engine.sh"), "up"], capture_output=True,
                        text=True, timeout=120)
    if up.returncode != 0:
        pytest.skip(f"no Docker engine can be started here: {up.stderr.strip()}")
    built = subprocess.run([str(REPO / "containers" / "build-local.sh")], capture_output=True,
                           text=True, timeout=1800, cwd=REPO)
    assert built.returncode == 0, f"containers/build-local.sh failed:\n{built.stderr[-3000:]}"
    return {"trainer": "harness-trainer:cpu", "grader": "harness-grader:local",
            "base": "local/bookworm-py"}


@pytest.fixture(scope="session")
def tiny_smoke_local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`harness bench tiny-smoke` with the local executor, once per session: the reference the
    docker and ray executors' runs must equal (read only; do not resume or modify it)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("executor-reference") / "local"
    r = subprocess.run([sys.executable, "-m", "harness.cli", "bench", "tiny-smoke", "--out",
                        str(out)], capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


@pytest.fixture
def wait_for_steps() -> Callable[..., Path]:
    """`wait(out, proc, steps=1, timeout=600) -> cell_dir`: wait until the run directory
    `out` of the running bench `proc` has a cell whose trace holds `steps` step records, and
    return that cell's directory; fails when the bench ends first or the time runs out (a
    test that stops a bench mid-run needs it still running)."""
    import subprocess
    import time

    def wait(out: Path, proc: subprocess.Popen, steps: int = 1, timeout: float = 600) -> Path:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            for trace in out.glob("cells/*/trace.jsonl"):
                if trace.read_text().count('"type": "step"') >= steps:
                    return trace.parent
            time.sleep(0.1)
        raise AssertionError("the bench ended before it could be stopped" if proc.poll()
                             is not None else f"no {steps} step(s) within {timeout:.0f} s")

    return wait
