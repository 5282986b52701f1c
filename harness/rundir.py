"""Run directory layout (documented in the README):

    runs/<spec>@<version>/<run-id>/
        resolved_spec.json     the resolved spec (inheritance applied, defaults filled)
        environment.json       harness version, git commit, Python/package versions, hardware
        results.json           run-level results (written by `harness bench`)
        .bench.lock            held by the `harness bench` running on it (`BenchLock`)
        cells/<cell_id>/
            config.json        the resolved cell config (what `harness run-cell` runs)
            trace.jsonl        append-only, one JSON line per step (the source of truth)
            result.json        per-cell results (written when the chain finishes)

The default run id is the first 12 hex digits of the grid hash (the sorted cell ids), so
re-running the same spec resumes the same run directory and skips finished cells, and an edit
that changes no cell (a description, a comparison) keeps it; `--out DIR` picks a directory.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from harness import __version__
from harness.errors import UserError

PACKAGES = ("torch", "transformers", "datasets", "numpy", "scipy", "mlflow", "pydantic",
            "pyseccomp", "trl", "vllm", "accelerate", "deepspeed", "ray")


def default_run_dir(spec_name: str, version: int, grid_hash: str, root: Path | None = None
                    ) -> Path:
    root = root or Path(os.environ.get("HARNESS_RUNS", "runs"))
    return root / f"{spec_name}@{version}" / grid_hash[:12]


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file. A
    write that fails (full disk, read-only or foreign directory) is one `UserError` line."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):  # on a read-only file system this fails too
            tmp.unlink(missing_ok=True)
        above = next((p for p in path.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise UserError(f"cannot write {path}: {above} is a file, not a directory; "
                            "choose another path") from None
        raise UserError(f"cannot write {path}: {e.strerror or e}; {write_fix(e)}") from None


BENCH_LOCK = ".bench.lock"


class BenchLock:
    """One `harness bench` per run directory at a time: an exclusive lock on
    `<run dir>/.bench.lock` (holding the holder's pid), held until `release` or the process
    ends. A second bench on the same directory would rewrite its resolved spec and environment
    under the first, and report the cells the first is running as failed ("already running in
    another process", each cell's own lock); it is refused with one line instead."""

    def __init__(self) -> None:
        self._file: IO[str] | None = None

    def acquire(self, run_dir: Path) -> None:
        path = run_dir / BENCH_LOCK
        try:
            f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        except OSError as e:
            raise UserError(f"cannot write {path}: {e.strerror or e}; {write_fix(e)}") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            pid = f.read().strip()
            f.close()
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise UserError(f"cannot lock {path}: {e.strerror or e}") from None
            raise UserError(f"another `harness bench`{f' (pid {pid})' if pid else ''} is "
                            f"running on {run_dir}; wait for it to finish, or stop it (Ctrl-C "
                            "or kill; the run resumes) and run this again") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def bench_running(run_dir: Path) -> str | None:
    """The pid (as written; '' when unknown) of the `harness bench` that holds `run_dir`'s
    lock now, or None when no bench is running on it."""
    try:
        f = open(run_dir / BENCH_LOCK, encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            return f.read().strip() if e.errno in (errno.EAGAIN, errno.EACCES) else None
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def read_results(run_dir: Path, fix: str) -> dict[str, Any]:
    """A run's results.json (`read_json_object`); when it does not exist yet because a bench
    is still running on the directory, the one line says so (and which pid) instead of `fix`."""
    path = run_dir / "results.json"
    if not path.exists():
        pid = bench_running(run_dir)
        if pid is not None:
            raise UserError(f"{path} (the run's results) does not exist yet: a `harness bench`"
                            f"{f' (pid {pid})' if pid else ''} is running on {run_dir} and "
                            "writes it when its last cell ends; wait for it (`harness guard "
                            "score` reads the finished campaigns of a running bench)")
    return read_json_object(path, "the run's results", fix)


def write_fix(e: OSError) -> str:
    """What to do about a failed write into a run directory."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space or choose another --out"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "choose a writable directory with --out"
    return "check the directory or choose another --out"


def require_run_dir(run_dir: Path) -> None:
    """A one-line UserError unless `run_dir` is a directory (missing, or a file)."""
    if not run_dir.is_dir():
        what = "is a file, not a run directory" if run_dir.exists() else "does not exist"
        raise UserError(f"run directory {run_dir} {what}; pass the directory `harness bench` "
                        "wrote (runs/<spec>@<version>/<run-id>, or its --out)")


def read_json_object(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A JSON object from `path`, or a one-line `UserError`: `path (what) does not exist; fix`,
    `... is not valid JSON (line N: why); fix`, `... is not a JSON object; fix`, or `cannot
    read path (what): why; fix`. The one reader of run-directory and baseline files."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} ({what}) does not exist; {fix}") from None
    except OSError as e:
        if e.errno in (errno.EACCES, errno.EPERM):
            fix = "check the file's permissions"
        raise UserError(f"cannot read {path} ({what}): {e.strerror or e}; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        why = f"line {e.lineno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else e.reason
        raise UserError(f"{path} ({what}) is not valid JSON ({why}); {fix}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path} ({what}) is not a JSON object; {fix}")
    return doc


def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    commit = out.stdout.strip()
    dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _grader_identity() -> dict[str, Any]:
    """The grader behind every verdict of the run: its version (part of each cell's identity)
    and its source digest; in a container, the executor records the image digest."""
    import grader_sandbox

    return {"version": grader_sandbox.GRADER_VERSION,
            "source_sha256": grader_sandbox.source_digest()}


def environment() -> dict[str, Any]:
    """What is needed to reproduce a run: versions, commit, hardware."""
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    env: dict[str, Any] = {
        "harness_version": __version__,
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "cpu": {"model": _cpu_model(), "count": os.cpu_count()},
        "gpu": None,
        "cuda": None,
        "grader": _grader_identity(),
    }
    if "torch" in sys.modules or "torch" in versions:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        # the vector width torch's CPU kernels use (AVX512, AVX2, ...): float rounding, and so
        # the tiny policy's weights after its warm start, depend on it (exact baselines)
        env["cpu"]["capability"] = torch.backends.cpu.get_cpu_capability()
        if torch.cuda.is_available():
            env["cuda"] = torch.version.cuda
            env["gpu"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env
