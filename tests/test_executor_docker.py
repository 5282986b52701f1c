"""The docker executor and the images, for real: a Docker engine started by the tests, the
grader and a CPU trainer image built offline from a local base (containers/build-local.sh),
the hostile-program corpus graded inside the grader container under its seccomp profile, and
`harness bench tiny-smoke --executor docker` giving the local executor's results."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.runner.trace import read_trace, without_timing

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "grader"))
from test_corpus import BENIGN, ITEMS  # noqa: E402


def _docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)


def _bench(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", "bench", "tiny-smoke", "--out",
                           str(out), *extra], capture_output=True, text=True, timeout=1200)


# --------------------------------------------------------------------------- images
def test_trainer_image_runs_harness_as_non_root(docker_images: dict[str, str]) -> None:
    doc = json.loads(_docker("image", "inspect", docker_images["trainer"]).stdout)[0]
    assert doc["Config"]["User"] == "10001"
    assert doc["Config"]["Entrypoint"] == ["harness"]
    out = _docker("run", "--rm", "--network", "none", docker_images["trainer"], "components")
    assert out.returncode == 0, out.stderr
    assert "reinforce" in out.stdout and "care_v2" in out.stdout
    who = _docker("run", "--rm", "--network", "none", "--entrypoint", "id",
                  docker_images["trainer"], "-u")
    assert who.stdout.strip() == "10001"


def test_trainer_image_has_exactly_the_locked_packages(docker_images: dict[str, str]) -> None:
    lock = (REPO / "containers/trainer/requirements-cpu.lock").read_text()
    want = {ln.split("==")[0].lower().replace("_", "-"): ln.split("==")[1].split()[0]
            for ln in lock.splitlines() if "==" in ln and not ln.startswith((" ", "#"))}
    out = _docker("run", "--rm", "--network", "none", "--entrypoint", "/opt/venv/bin/pip",
                  docker_images["trainer"], "list", "--format", "json", timeout=120)
    got = {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out.stdout)}
    for name, version in want.items():
        assert got.get(name) == version, name
    assert got["torch"] == "2.13.0+cpu"


# --------------------------------------------------------------------------- grader container
@pytest.fixture(scope="module")
def grader_socket(docker_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[Path, str]]:
    """The grader container as the docker executor starts it (same flags, via _Grader)."""
    from harness.executors.docker import SOCKET_NAME, _Grader

    run_dir = tmp_path_factory.mktemp("grader-run")
    g = _Grader(docker_images["grader"], run_dir, "10001:10001", 10001, workers=2)
    g.start()
    try:
        yield run_dir / "grader" / SOCKET_NAME, g.name
    finally:
        g.stop()


def _container_processes(name: str) -> list[str]:
    out = _docker("top", name, "-eo", "pid,user,args")
    return out.stdout.strip().splitlines()[1:]


def _strays(name: str) -> list[str]:
    """Processes in the grader container that are not the service's own: the server, its
    workers, their templates and judges. A sample's process (a child of a template) or
    anything it left behind (re-parented to the server) is a stray. Waits up to 5 s for
    samples that are still being killed. `ww`: ps cuts command lines at the width of the
    daemon's environment otherwise (80 columns in CI), past the module names matched here."""
    deadline = time.monotonic() + 5
    while True:
        rows = [ln.split(None, 2) for ln in
                _docker("top", name, "-eo", "pid,ppid,args", "ww").stdout.strip().splitlines()[1:]]
        kind = {}
        for pid, _, args in rows:
            if "grader_sandbox serve" in args:
                kind[pid] = "server"
            elif "grader_sandbox.template" in args:
                kind[pid] = "template"
            elif "grader_sandbox.worker" in args:
                kind[pid] = "worker"
        strays = [args for pid, ppid, args in rows
                  if pid not in kind or (kind[pid] == "worker"
                                         and kind.get(ppid) not in ("server", "worker"))
                  or (kind[pid] == "template" and kind.get(ppid) != "worker")]
        if not strays or time.monotonic() > deadline:
            return strays
        time.sleep(0.2)


def _same_error(got: str | None, expected: str) -> bool:
    """The host's paths do not exist in the container, so an escape that fails with
    OSError on the host may fail with a subclass of it (FileNotFoundError) there."""
    import builtins

    want, have = getattr(builtins, expected, None), getattr(builtins, got or "", None)
    if isinstance(want, type) and isinstance(have, type):
        return issubclass(have, want)
    return got == expected


def test_hostile_corpus_in_the_grader_container(grader_socket: tuple[Path, str]) -> None:
    from grader_sandbox import GraderClient

    sock, name = grader_socket
    inspect = json.loads(_docker("inspect", name).stdout)[0]["HostConfig"]
    assert inspect["NetworkMode"] == "none" and inspect["ReadonlyRootfs"] is True
    assert any(o.startswith("seccomp=") and '"defaultAction"' in o
               for o in inspect["SecurityOpt"]), inspect["SecurityOpt"]
    assert inspect["CapDrop"] == ["ALL"]
    batch: list[dict[str, Any]] = []
    for item_name, req, _ in ITEMS:
        batch.append(req)
        batch.append(dict(BENIGN, id=f"benign-after-{item_name}"))
    with GraderClient(str(sock), timeout=600) as client:
        verdicts = {v.id: v for v in client.grade(batch)}
        health = client.health()
    wrong = {}
    for item_name, _, expect in ITEMS:
        v = verdicts[item_name]
        if v.status != expect["status"] or (
                "error_type" in expect and not _same_error(v.error_type, expect["error_type"])):
            wrong[item_name] = (expect, v.to_dict())
    assert not wrong, wrong
    assert all(verdicts[f"benign-after-{n}"].passed for n, _, _ in ITEMS)
    assert health["ok"] and health["isolation"] == "container"
    assert _strays(name) == []


# --------------------------------------------------------------------------- the executor
@pytest.fixture(scope="module")
def local_run(tiny_smoke_local_run: Path) -> Path:
    return tiny_smoke_local_run


@pytest.fixture(scope="module")
def docker_run(docker_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docker-cmp") / "docker"
    r = _bench(out, "--executor", "docker", "--trainer-image", docker_images["trainer"],
               "--grader-image", docker_images["grader"])
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def _cells(run: Path) -> dict[str, Path]:
    return {p.name: p for p in (run / "cells").iterdir() if p.is_dir()}


def test_docker_executor_gives_the_local_results(local_run: Path, docker_run: Path) -> None:
    a = json.loads((local_run / "results.json").read_text())
    b = json.loads((docker_run / "results.json").read_text())
    assert [c["end_of_chain"] for c in a["cells"]] == [c["end_of_chain"] for c in b["cells"]]
    assert a["arms"] == b["arms"]
    for cid, cell in _cells(local_run).items():
        ta = [without_timing(r) for r in read_trace(cell / "trace.jsonl")]
        tb = [without_timing(r) for r in read_trace(docker_run / "cells" / cid / "trace.jsonl")]
        assert ta == tb


def test_docker_run_records_image_digests(docker_run: Path, docker_images: dict[str, str]
                                          ) -> None:
    from mlflow import MlflowClient

    want = {k: json.loads(_docker("image", "inspect", docker_images[k]).stdout)[0]["Id"]
            for k in ("trainer", "grader")}
    results = json.loads((docker_run / "results.json").read_text())
    env = json.loads((docker_run / "environment.json").read_text())
    for doc in (results["executor"], env["executor"]):
        assert doc["name"] == "docker"
        assert {k: doc["images"][k]["id"] for k in want} == want
    state = json.loads((docker_run / "mlflow.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    tags = client.get_run(state["parent_run_id"]).data.tags
    assert tags["image_digest"] == want["trainer"]
    assert tags["grader_image_digest"] == want["grader"]
    assert tags["executor"] == "docker"
    # the grader container is gone, its log kept
    assert "serving on unix:" in (docker_run / "grader" / "log.txt").read_text()
    import hashlib

    tag = hashlib.sha256(str(docker_run.resolve()).encode()).hexdigest()
    assert not [ln for ln in _docker("ps", "-a", "--format", "{{.Names}}").stdout.splitlines()
                if ln.startswith((f"harness-grader-{tag[:12]}", f"harness-cell-{tag[:8]}"))]


def test_missing_image_is_one_line(docker_images: dict[str, str], tmp_path: Path) -> None:
    r = _bench(tmp_path / "run", "--executor", "docker", "--trainer-image", "no-such-image:1")
    assert r.returncode != 0
    errors = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, r.stdout + r.stderr
    assert "no-such-image:1" in errors[0] and "build-local.sh" in errors[0]


def test_sigterm_removes_the_containers_and_says_how_to_resume(
        docker_images: dict[str, str], tmp_path: Path, wait_for_steps: Any) -> None:
    """`kill PID` (SIGTERM) of a docker bench while its cell runs: exit 143, one line naming
    the command that resumes it, and no container left behind: neither the cell's nor the
    grader's (before, the default action ended the bench at once and both kept running)."""
    import hashlib
    import os
    import signal

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", "tiny-smoke",
                             "--out", str(out), "--executor", "docker",
                             "--trainer-image", docker_images["trainer"],
                             "--grader-image", docker_images["grader"]],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_steps(out, proc)
    os.kill(proc.pid, signal.SIGTERM)
    output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 143, output
    assert "Traceback" not in output
    assert "stopped by SIGTERM: cell " in output and "resume with: harness bench" in output
    tag = hashlib.sha256(str(out.resolve()).encode()).hexdigest()
    left = [ln for ln in _docker("ps", "-a", "--format", "{{.Names}}").stdout.splitlines()
            if ln.startswith((f"harness-grader-{tag[:12]}", f"harness-cell-{tag[:8]}"))]
    assert not left, (left, output)
