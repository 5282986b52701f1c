"""The `ray` executor: each cell is one Ray task on a cluster, up to `jobs` in flight.

A task asks for the spec's `resources.cpus_per_cell` CPUs and `resources.gpus_per_cell` GPUs
and runs the same entry point as every executor (`harness run-cell CELL_DIR`) as a
subprocess of its Ray worker, which dies with the worker (PR_SET_PDEATHSIG). Progress comes
from the cells' traces, tailed by this driver while it waits on the tasks, so the run
directory must be on a filesystem every node mounts at the same path.

Without an address a private local cluster is started for the run and torn down after it;
with one (`auto`, `HOST:PORT`, `ray://HOST:PORT`) the driver joins that cluster.

A cell whose worker or node is lost (killed, out of memory, node died) is resubmitted, at
most `MAX_ATTEMPTS` times in all; `run-cell` resumes it from its last finished campaign, so
the retry reproduces the records the lost attempt would have written. A cell that fails on
its own (a non-zero exit of `run-cell`) is reported, not retried.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field

from harness.errors import UserError
from harness.executors.base import EXECUTORS, Executor, ExecutorOptions, ExecutorSettings, OnEvent
from harness.executors.local import (
    CellProcess,
    cell_command,
    forward_records,
    last_error,
    log_size,
    poll_trace,
)
from harness.procutil import die_with_parent

MAX_ATTEMPTS = 3           # tries of a cell whose Ray worker or node is lost
CONNECT_TIMEOUT_S = 10.0   # reaching the cluster's address before ray.init (which would hang)
LOCK_WAIT_S = 60.0         # a retry waits this long for the lost attempt's run-cell to die
POLL_S = 0.25

# Passed from the driver to every cell's process (a Ray worker's environment is the one its
# node was started with, not the driver's). CUDA_VISIBLE_DEVICES is Ray's to set.
FORWARDED_PREFIXES = ("HARNESS_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TOKENIZERS_",
                      "TORCH_", "PYTORCH_", "CUBLAS_", "MLFLOW_")
FORWARDED_NAMES = ("PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
INSTALL_HINT = "pip install 'rl-collapse-harness[ray]'"


class CellSetupError(Exception):
    """Raised in a Ray task when the cell cannot be started on its node (reported as the
    cell's error, not retried)."""


# --------------------------------------------------------------------------- the Ray task
def _wait_for_lock(cell_dir: Path, timeout: float) -> None:
    """Wait until no process holds the cell's lock (the run-cell of a lost attempt, which
    dies with its worker), so that the retry does not fail as 'already running'."""
    try:
        f = open(cell_dir / ".lock", "a")  # noqa: SIM115 (closed below)
    except OSError:
        return
    deadline = time.monotonic() + timeout
    with f:
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                if time.monotonic() > deadline:
                    return  # run-cell reports the cell as running elsewhere
                time.sleep(0.5)
                continue
            fcntl.flock(f, fcntl.LOCK_UN)
            return


def run_cell_task(cell_dir: str, env: dict[str, str], cwd: str, attempt: int) -> int:
    """The body of a cell's Ray task: `harness run-cell CELL_DIR` in a subprocess that dies
    with this worker; its output appended to CELL_DIR/log.txt; returns its exit code."""
    cell = Path(cell_dir)
    if not (cell / "config.json").is_file():
        raise CellSetupError(
            f"{cell / 'config.json'} does not exist on Ray node {socket.gethostname()}: the "
            "run directory must be on a filesystem that every node mounts at the same path")
    if attempt > 1:
        _wait_for_lock(cell, LOCK_WAIT_S)
    child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    try:
        log = open(cell / "log.txt", "ab")  # noqa: SIM115 (closed once the child owns it)
    except OSError as e:
        raise CellSetupError(f"cannot write {cell / 'log.txt'} on Ray node "
                             f"{socket.gethostname()}: {e.strerror or e}") from None
    # Ray runs a task in its worker's main thread, so the death signal (tied to the thread
    # that forks) fires when the worker dies, not before.
    with log:
        proc = subprocess.Popen(cell_command(cell), stdout=log, stderr=subprocess.STDOUT,
                                env=child_env, cwd=cwd if os.path.isdir(cwd) else cell,
                                preexec_fn=die_with_parent)
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:  # the task was cancelled (the driver stopped)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


# --------------------------------------------------------------------------- the driver
@dataclass
class RayCell(CellProcess):
    attempt: int = 0


class RayOptions(ExecutorSettings):
    """The ray executor's settings (`harness bench --address`)."""

    address: str | None = Field(
        None, description="The cluster to join (e.g. auto, ray://head:10001); default: start "
        "a private local one for the run.")


def import_ray() -> Any:
    """The `ray` module; UserError with the install hint when Ray is not installed."""
    try:
        import ray
    except ImportError:
        raise UserError(f"the ray executor needs Ray, which is not installed: {INSTALL_HINT}"
                        ) from None
    return ray


def forwarded_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = dict(os.environ if environ is None else environ)
    env = {k: v for k, v in environ.items()
           if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED_NAMES}
    if "HARNESS_CACHE" in env:  # relative to the driver's directory
        env["HARNESS_CACHE"] = os.path.abspath(env["HARNESS_CACHE"])
    return env


def _private_temp_dir() -> str:
    # Ray's Unix socket paths live under it and must stay short (about 107 bytes).
    base = "/tmp" if os.access("/tmp", os.W_OK) else tempfile.gettempdir()
    return tempfile.mkdtemp(prefix="harness-ray-", dir=base)


def _start_private(ray: Any, jobs: int, options: ExecutorOptions) -> str:
    temp_dir = _private_temp_dir()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address="local", num_cpus=max(1, math.ceil(jobs * options.cpus_per_cell)),
                 include_dashboard=False, object_store_memory=100 * 1024 * 1024,
                 logging_level="WARNING", log_to_driver=False, _temp_dir=temp_dir)
    except Exception as e:
        _reap(temp_dir)
        raise UserError(f"cannot start a local Ray cluster: {_first_line(e)}") from None
    return temp_dir


def _resolve(ray: Any, address: str) -> tuple[str, int]:
    """host, port of a cluster address (`auto` reads RAY_ADDRESS or the latest local
    `ray start`)."""
    if "://" in address:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port or 10001
    else:
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die

            resolved = canonicalize_bootstrap_address_or_die(address)
        except ConnectionError as e:
            raise UserError(f"--address {address}: {_first_line(e)} Start one with "
                            "`ray start --head`, or pass its address") from None
        except (ImportError, AttributeError):  # a Ray without this helper
            resolved = address
        host, _, port_s = resolved.rpartition(":")
        port = int(port_s) if port_s.isdigit() else None
    if not host or not port:
        raise UserError(f"--address {address}: not a Ray cluster address (use auto, "
                        "HOST:PORT or ray://HOST:PORT)")
    return host, port


def _join(ray: Any, address: str) -> None:
    host, port = _resolve(ray, address)
    try:  # ray.init retries an unreachable address forever: fail fast instead
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UserError(f"cannot connect to the Ray cluster at {host}:{port} (--address "
                        f"{address}): {e.strerror or e}; is `ray start --head` running there "
                        "and the port reachable from here?") from None
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    except Exception as e:
        raise UserError(f"cannot join the Ray cluster at {address}: {_first_line(e)}"
                        ) from None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def check_resources(nodes: list[dict[str, Any]], options: ExecutorOptions, where: str) -> None:
    """Fail fast when no live node can hold one cell (its task would wait forever)."""
    live = [n.get("Resources") or {} for n in nodes if n.get("Alive", True)]
    need = {"GPU": options.gpus_per_cell, "CPU": options.cpus_per_cell}
    if any(all(r.get(k, 0.0) >= v for k, v in need.items() if v > 0) for r in live):
        return
    most = {k: max((r.get(k, 0.0) for r in live), default=0.0) for k in need}
    raise UserError(
        f"the Ray cluster {where} has no node with {options.gpus_per_cell:g} GPU(s) and "
        f"{options.cpus_per_cell:g} CPU(s) for a cell (the spec's resources.gpus_per_cell "
        f"and resources.cpus_per_cell); its {len(live)} node(s) have at most "
        f"{most['GPU']:g} GPU(s) and {most['CPU']:g} CPU(s): add a node that has them "
        "(`ray start --address=HEAD:PORT --num-gpus N`) or lower the spec's resources")


def _reap(temp_dir: str) -> None:
    """End what is left of a private cluster (some agents outlive ray.shutdown): the
    processes whose command line names its temporary directory; then remove it."""
    mine = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if temp_dir.encode() in (p / "cmdline").read_bytes():
                mine.append(int(p.name))
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        for pid in mine:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and any(_alive(p) for p in mine):
            time.sleep(0.1)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _note(cell_dir: Path, line: str) -> None:
    """Add a line to the cell's log (the executor's own notes beside run-cell's output)."""
    with contextlib.suppress(OSError), open(cell_dir / "log.txt", "a") as f:
        f.write(line.rstrip("\n") + "\n")


def run_ray(cells: dict[str, Path], jobs: int, on_event: OnEvent,
            options: ExecutorOptions) -> dict[str, int]:
    """Run cells as Ray tasks, at most `jobs` at once; return {cell_id: exit code}."""
    ray = import_ray()
    private_dir = None
    address = options.settings_as(RayOptions).address
    # ray.init sets a SIGTERM handler that exits at once (SystemExit): keep the one this
    # process had (`harness bench`'s stops the run as Ctrl-C does: cells cancelled, MLflow
    # runs ended KILLED, the resume command said)
    sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        _join(ray, address)
        where = f"at {address}"
    else:
        private_dir = _start_private(ray, jobs, options)
        where = "started for this run (no --address)"
    if sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, sigterm)
    try:
        check_resources(ray.nodes(), options, where)
        return _run(ray, cells, jobs, on_event, options)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if private_dir:
            _reap(private_dir)


def _run(ray: Any, cells: dict[str, Path], jobs: int, on_event: OnEvent,
         options: ExecutorOptions) -> dict[str, int]:
    from ray.exceptions import (
        NodeDiedError,
        ObjectLostError,
        OutOfMemoryError,
        RayError,
        RayTaskError,
        WorkerCrashedError,
    )

    lost = (WorkerCrashedError, NodeDiedError, ObjectLostError, OutOfMemoryError)
    task = ray.remote(run_cell_task)
    env, cwd = forwarded_env(), os.getcwd()
    pending = [RayCell(cid, Path(d).resolve()) for cid, d in cells.items()]
    running: dict[Any, RayCell] = {}
    codes: dict[str, int] = {}

    def submit(rc: RayCell) -> None:
        rc.attempt += 1
        rc.log_start = log_size(rc.cell_dir)  # this attempt's lines start here
        ref = task.options(
            num_cpus=options.cpus_per_cell, num_gpus=options.gpus_per_cell,
            max_retries=0,  # a lost worker is retried here, visibly
            name=f"harness-cell-{rc.cell_id}").remote(str(rc.cell_dir), env, cwd, rc.attempt)
        running[ref] = rc

    def finish(rc: RayCell, code: int, error: str | None) -> None:
        forward_records(rc, on_event)
        codes[rc.cell_id] = code
        on_event(rc.cell_id, {"event": "exit", "returncode": code, "error": error})

    try:
        while pending or running:
            while pending and len(running) < jobs:
                rc = pending.pop(0)
                submit(rc)
                # progress starts after the records a resumed cell already has
                poll_trace(rc)
                on_event(rc.cell_id, {"event": "start", "records": rc.records})
            ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            for rc in running.values():
                forward_records(rc, on_event)
            for ref in ready:
                rc = running.pop(ref)
                try:
                    code = int(ray.get(ref))
                except RayTaskError as e:  # the task itself failed: report, no retry
                    cause = getattr(e, "cause", None) or e
                    why = _first_line(cause) if isinstance(cause, CellSetupError) else \
                        f"its Ray task failed: {type(cause).__name__}: {_first_line(cause)}"
                    _note(rc.cell_dir, f"error: {why}")
                    finish(rc, 1, why)
                    continue
                except lost as e:
                    why = f"{type(e).__name__}: {_first_line(e)}"
                    if rc.attempt < MAX_ATTEMPTS:
                        msg = (f"cell {rc.cell_id}: its Ray worker was lost ({why}); retrying "
                               "from its last finished campaign (attempt "
                               f"{rc.attempt + 1} of {MAX_ATTEMPTS})")
                        _note(rc.cell_dir, f"ray executor: {msg}")
                        print(f"warning: {msg}", file=sys.stderr, flush=True)
                        submit(rc)
                        continue
                    why = (f"its Ray worker was lost {MAX_ATTEMPTS} times (last: {why}); "
                           "re-run the bench to resume it from its last finished campaign")
                    _note(rc.cell_dir, f"error: {why}")
                    finish(rc, 1, why)
                    continue
                except RayError as e:  # unschedulable, runtime env, ...
                    why = f"Ray could not run it: {type(e).__name__}: {_first_line(e)}"
                    _note(rc.cell_dir, f"error: {why}")
                    finish(rc, 1, why)
                    continue
                finish(rc, code, last_error(rc.cell_dir, code, rc.log_start) if code else None)
    finally:
        for ref in running:  # interrupted: stop the cells (their run-cell dies with them)
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
    return codes


class RayExecutor(Executor):
    name = "ray"
    description = ("Ray tasks on a cluster (a private local one, or --address), with resource "
                   "requests and retries of lost workers from the last campaign.")
    Options = RayOptions

    def places_by_cpus(self, options: ExecutorOptions) -> bool:
        # a cluster places cells by CPU request; the private one (no --address) declares
        # jobs x cpus_per_cell CPUs whatever this machine has
        return bool(self.settings(options).address)

    def describe(self, options: ExecutorOptions) -> dict[str, Any]:
        return {"name": self.name, "address": self.settings(options).address or "local",
                "ray_version": import_ray().__version__}

    def run(self, cells: dict[str, Path], jobs: int, on_event: OnEvent,
            options: ExecutorOptions) -> dict[str, int]:
        return run_ray(cells, jobs, on_event, options)


EXECUTORS.add(RayExecutor.name, RayExecutor())
