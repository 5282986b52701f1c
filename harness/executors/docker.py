"""The `docker` executor: each cell in its own trainer container, grading in one grader
container per run.

    harness bench NAME --executor docker [--trainer-image IMG] [--grader-image IMG]

- The grader container runs `python -m grader_sandbox serve` with the documented hardening
  (`--network none`, read-only root, no capabilities, the seccomp profile
  containers/grader/seccomp.json, pids and memory limits) and listens on a Unix socket in
  `<run dir>/grader/`, bind-mounted into it and into every trainer container. No TCP, no
  bridge network.
- Each cell runs `harness run-cell CELL_DIR` in a trainer container with `--network none`,
  the run directory, the Hugging Face cache (HF_HOME) and the tiny policies the cells use
  (read-only) mounted at the same paths as on the host (so every path in a cell's config
  means the same inside and out), `HARNESS_GRADER_SOCKET` pointing at the grader, and GPUs
  assigned per cell (`resources.gpus_per_cell`) from this host's GPUs. The containers run
  offline: hub models and task datasets are fetched on the host first.
- Both containers run as one unprivileged uid: the caller's uid when it is not root (so the
  files they write belong to the caller), else 10001, the images' own user (the run's cell
  directories and the grader's socket directory are then handed to that uid).
- The images are identified by their image ID (a content digest) and any registry digests;
  `describe()` records both in the run's environment.json, results.json and MLflow tags.

Progress, exit codes and errors come back exactly as with the local executor: from each
cell's trace and log in the (mounted) cell directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from harness.errors import UserError
from harness.executors.base import EXECUTORS, Executor, ExecutorOptions, ExecutorSettings, OnEvent
from harness.executors.local import CellProcess, run_local

DEFAULT_TRAINER_IMAGE = "harness-trainer:latest"
DEFAULT_GRADER_IMAGE = "harness-grader:latest"
TRAINER_IMAGE_ENV = "HARNESS_TRAINER_IMAGE"
GRADER_IMAGE_ENV = "HARNESS_GRADER_IMAGE"
IMAGE_UID = 10001  # the `harness` user of the trainer image and `grader` of the grader image
SOCKET_DIR_IN = "/run/grader"
SOCKET_NAME = "grader.sock"
REPO = Path(__file__).resolve().parents[2]
SECCOMP_PROFILE = REPO / "containers" / "grader" / "seccomp.json"
BUILD_HINT = ("build the images with containers/build-local.sh (offline, CPU) or "
              "`docker build -f containers/{trainer,grader}/Dockerfile .`")
# Environment passed from the host into trainer containers when set.
PASS_ENV = ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM",
            "HARNESS_TINY_BUILD_THREADS")


def _docker(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
    try:
        out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise UserError("the docker executor needs the `docker` client; install Docker "
                        "(see containers/engine.sh) or use --executor local") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"`docker {args[0]}` did not answer within {timeout:.0f} s; check the "
                        "Docker engine (`docker info`)") from None
    if check and out.returncode != 0:
        raise UserError(f"`docker {' '.join(args[:2])}` failed: "
                        f"{(out.stderr or out.stdout).strip().splitlines()[-1:] or ['no output']}")
    return out


def engine_answers() -> bool:
    try:
        return _docker("info", "--format", "{{.ServerVersion}}", timeout=30).returncode == 0
    except UserError:
        return False


def image_identity(ref: str) -> dict[str, Any]:
    """{ref, id, repo_digests} of a local image; UserError if it is not there."""
    out = _docker("image", "inspect", "--format", "{{json .}}", ref, timeout=60)
    if out.returncode != 0:
        raise UserError(f"docker image {ref!r} not found; {BUILD_HINT}")
    doc = json.loads(out.stdout)
    return {"ref": ref, "id": doc["Id"], "repo_digests": doc.get("RepoDigests") or []}


class DockerOptions(ExecutorSettings):
    """The docker executor's settings (`harness bench --trainer-image/--grader-image`)."""

    trainer_image: str | None = Field(
        None, description=f"Trainer image, a tag or digest (default ${TRAINER_IMAGE_ENV}, else "
        f"{DEFAULT_TRAINER_IMAGE}).")
    grader_image: str | None = Field(
        None, description=f"Grader image, a tag or digest (default ${GRADER_IMAGE_ENV}, else "
        f"{DEFAULT_GRADER_IMAGE}).")


def _images(options: ExecutorOptions) -> tuple[str, str]:
    opts = options.settings_as(DockerOptions)
    trainer = opts.trainer_image or os.environ.get(TRAINER_IMAGE_ENV) or DEFAULT_TRAINER_IMAGE
    grader = opts.grader_image or os.environ.get(GRADER_IMAGE_ENV) or DEFAULT_GRADER_IMAGE
    return trainer, grader


def describe(options: ExecutorOptions) -> dict[str, Any]:
    """What identifies this executor's runs: the two images by digest. Fails early (one
    line) when no engine answers or an image is missing."""
    if not engine_answers():
        raise UserError("no Docker engine answers; start one (containers/engine.sh up, as root) "
                        "or use --executor local")
    trainer, grader = _images(options)
    return {"name": "docker", "images": {"trainer": image_identity(trainer),
                                         "grader": image_identity(grader)}}


def _host_gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [ln.strip() for ln in out.stdout.splitlines() if ln.strip()] if out.returncode == 0 else []


def _cache_dir() -> Path:
    from harness.policy.tiny import default_cache_dir

    return default_cache_dir()


def _chown_tree(path: Path, uid: int) -> None:
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, uid)
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)


def _cell_configs(cells: dict[str, Path]) -> list[dict[str, Any]]:
    out = []
    for d in cells.values():
        try:
            out.append(json.loads((d / "config.json").read_text())["config"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError):
            continue  # the cell itself reports an unreadable config, in its container
    return out


def _tiny_dirs(configs: list[dict[str, Any]]) -> list[Path]:
    """The tiny policy directories the cells load (built on the host by `harness bench`),
    made readable to the containers' uid. They are mounted one by one, read-only: the cache
    directory itself may be private (a test's temporary directory is 0700)."""
    from harness.policy.tiny import make_readable, tiny_dir
    from harness.spec.schema import TinyRecipe

    dirs = set()
    for cfg in configs:
        model = cfg.get("model") or {}
        if model.get("id") == "tiny":
            d = tiny_dir(TinyRecipe(**(model.get("tiny") or {}))).resolve()
            if d.is_dir():
                if d.stat().st_uid == os.getuid() and not d.stat().st_mode & 0o005:
                    make_readable(d)  # built before tiny builds were made readable
                dirs.add(d)
    return sorted(dirs)


def _fetch_inputs(configs: list[dict[str, Any]]) -> None:
    """Trainer containers have no network: hub models and task datasets are fetched into
    the host's Hugging Face cache (mounted into the containers) first."""
    models = set()
    for cfg in configs:
        model = cfg.get("model") or {}
        mid = model.get("id")
        if mid and mid != "tiny" and not Path(mid).exists():
            models.add((mid, model.get("revision")))
    if models:
        from huggingface_hub import snapshot_download

        for mid, rev in sorted(models, key=str):
            try:
                snapshot_download(mid, revision=rev)
            except Exception as e:
                raise UserError(f"cannot fetch model {mid} for the trainer containers ({e}); "
                                "check network and HF_TOKEN, or give a local directory") from None
    from harness.spec.schema import TasksSpec
    from harness.tasks import load_selection

    seen = set()
    for cfg in configs:
        key = json.dumps(cfg.get("tasks"), sort_keys=True)
        if key in seen or (cfg.get("tasks") or {}).get("source") in (None, "synthetic"):
            continue
        seen.add(key)
        try:
            load_selection(TasksSpec(**cfg["tasks"]))
        except Exception as e:
            raise UserError(f"cannot load the tasks of {cfg['tasks'].get('source')} for the "
                            f"trainer containers ({e}); check network and the source's "
                            "options") from None


class _Grader:
    """The run's grader container and its socket directory."""

    def __init__(self, image: str, run_dir: Path, user: str, uid: int | None, workers: int) -> None:
        self.sock_dir = run_dir / "grader"
        self.name = f"harness-grader-{hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]}"
        self.image, self.user, self.uid, self.workers = image, user, uid, workers
        self.log = run_dir / "grader" / "log.txt"

    def start(self, timeout: float = 60) -> None:
        from grader_sandbox import GraderClient, GraderError

        self.sock_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (self.sock_dir / SOCKET_NAME).unlink()
        if self.uid is not None:
            _chown_tree(self.sock_dir, self.uid)
        _docker("rm", "-f", self.name, timeout=60)  # a leftover of an interrupted run
        out = _docker(
            "run", "-d", "--name", self.name, "--user", self.user,
            "--network", "none", "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,size=512m",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--security-opt", f"seccomp={SECCOMP_PROFILE}",
            "--pids-limit", "1024", "--memory", f"{max(2, self.workers)}g",
            "--memory-swap", f"{max(2, self.workers)}g",
            "-v", f"{self.sock_dir}:{SOCKET_DIR_IN}",
            self.image, "serve", "--socket", f"{SOCKET_DIR_IN}/{SOCKET_NAME}",
            "--workers", str(self.workers), timeout=120)
        if out.returncode != 0:
            raise UserError(f"the grader container did not start: "
                            f"{(out.stderr or out.stdout).strip().splitlines()[-1:]}")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with GraderClient(str(self.sock_dir / SOCKET_NAME), timeout=10) as client:
                    if client.health().get("ok"):
                        return
            except GraderError:
                pass
            state = _docker("inspect", "-f", "{{.State.Running}}", self.name, timeout=30)
            if state.stdout.strip() != "true" or time.monotonic() > deadline:
                logs = _docker("logs", "--tail", "5", self.name, timeout=30)
                tail = (logs.stderr or logs.stdout).strip().splitlines()
                self.stop()
                raise UserError(f"the grader container did not become healthy: "
                                f"{tail[-1] if tail else 'no output'} (image {self.image})")
            time.sleep(0.3)

    def stop(self) -> None:
        with contextlib.suppress(UserError):
            logs = _docker("logs", self.name, timeout=60)
            with contextlib.suppress(OSError):
                self.log.write_text(logs.stdout + logs.stderr)
            _docker("rm", "-f", self.name, timeout=60)


def run_docker(cells: dict[str, Path], jobs: int, on_event: OnEvent,
               options: ExecutorOptions) -> dict[str, int]:
    """Run cells in trainer containers, at most `jobs` at once (and no more than the host's
    GPUs allow); return {cell_id: exit code}."""
    info = describe(options)
    trainer = info["images"]["trainer"]["id"]
    grader_image = info["images"]["grader"]["id"]
    run_dir = options.run_dir.resolve()
    uid = os.getuid()
    user = f"{uid}:{os.getgid()}" if uid != 0 else f"{IMAGE_UID}:{IMAGE_UID}"
    handover = IMAGE_UID if uid == 0 else None
    cache = _cache_dir().resolve()
    from huggingface_hub import constants

    hf_home = Path(constants.HF_HOME).resolve()  # hub models and datasets, fetched on the host
    hf_home.mkdir(parents=True, exist_ok=True)

    gpus = _host_gpus()
    per_cell = math.ceil(options.gpus_per_cell) if options.gpus_per_cell > 0 else 0
    if per_cell:
        if len(gpus) < per_cell:
            raise UserError(f"the spec asks for {options.gpus_per_cell:g} GPU(s) per cell and this "
                            f"host has {len(gpus)}; run where GPUs exist or set "
                            "resources.gpus_per_cell: 0")
        jobs = max(1, min(jobs, len(gpus) // per_cell))
    free_gpus = list(gpus)
    held: dict[str, list[str]] = {}

    configs = _cell_configs(cells)
    _fetch_inputs(configs)
    mounts = [f"{d}:{d}:ro" for d in _tiny_dirs(configs)]
    if handover is not None:
        for d in cells.values():
            _chown_tree(d, handover)
    workers = max(int(_grader_workers(cells)), 1)
    grader = _Grader(grader_image, run_dir, user, handover, workers)
    grader.start()
    tag = hashlib.sha256(str(run_dir).encode()).hexdigest()[:8]

    def container_name(cp: CellProcess) -> str:
        return f"harness-cell-{tag}-{hashlib.sha256(cp.cell_id.encode()).hexdigest()[:12]}"

    def command(cp: CellProcess) -> list[str]:
        argv = ["docker", "run", "--rm", "--name", container_name(cp), "--init",
                "--network", "none", "--user", user,
                "--security-opt", "no-new-privileges", "--cap-drop", "ALL",
                "--cpus", f"{options.cpus_per_cell:g}",
                "-v", f"{run_dir}:{run_dir}", "-v", f"{grader.sock_dir}:{SOCKET_DIR_IN}",
                "-v", f"{hf_home}:{hf_home}", *(x for m in mounts for x in ("-v", m)),
                "-e", f"HARNESS_CACHE={cache}", "-e", f"HF_HOME={hf_home}",
                "-e", "HF_HUB_OFFLINE=1", "-e", "HF_DATASETS_OFFLINE=1",
                "-e", "HARNESS_GRADER_SOCKET="
                f"{SOCKET_DIR_IN}/{SOCKET_NAME}",
                "-e", f"HARNESS_IMAGE_DIGEST={trainer}"]
        for key in PASS_ENV:
            if key in os.environ and key not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
                argv += ["-e", key]
        if per_cell:
            mine = [free_gpus.pop(0) for _ in range(per_cell)]
            held[cp.cell_id] = mine
            argv += ["--gpus", f"\"device={','.join(mine)}\"", "--shm-size", "8g"]
        return [*argv, trainer, "run-cell", str(cp.cell_dir.resolve())]

    def release(cp: CellProcess) -> None:
        free_gpus.extend(held.pop(cp.cell_id, []))
        if cp.proc is not None and cp.proc.returncode is None:
            _docker("rm", "-f", container_name(cp), timeout=60)

    try:
        return run_local(cells, jobs, on_event, command=command, release=release)
    finally:
        grader.stop()


def _grader_workers(cells: dict[str, Path]) -> int:
    """The grader container's worker count: the largest `grader.workers` of the cells."""
    n = 1
    for d in cells.values():
        with contextlib.suppress(OSError, json.JSONDecodeError, KeyError, TypeError):
            n = max(n, int(json.loads((d / "config.json").read_text())["config"]["grader"]["workers"]))
    return n


class DockerExecutor(Executor):
    name = "docker"
    description = ("a trainer container per cell (--network none, GPUs assigned per cell), "
                   "grading in one hardened grader container per run.")
    Options = DockerOptions

    def describe(self, options: ExecutorOptions) -> dict[str, Any]:
        return describe(options)

    def run(self, cells: dict[str, Path], jobs: int, on_event: OnEvent,
            options: ExecutorOptions) -> dict[str, int]:
        return run_docker(cells, jobs, on_event, options)


EXECUTORS.add(DockerExecutor.name, DockerExecutor())
