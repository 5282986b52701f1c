"""The tracker: the one writer that logs a run directory's cells to MLflow from their traces.

`Tracker.on_event` only queues; a background thread batches the points of each cell into
`log_batch` calls, retries with backoff while the store is locked or unreachable, and when a
cell exits reconciles its MLflow history with its trace on disk (`harness.tracking.cells`).
A tracking failure never stops a benchmark: it warns once, the trace keeps everything, and
`harness sync RUN` (`sync_run`) logs what is missing later (`harness.tracking` has the whole
picture).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.tracking.cells import CellSync, _Cell, _GiveUp, _short
from harness.tracking.lookup import (
    ARTIFACTS_DIR,
    MIN_FREE_BYTES,
    STATE_FILE,
    STORE_FILE,
    _read_json,
    embedded_uri,
    experiment_name,
    experiment_tags,
    seed_store,
    tracking_uri,
)
from harness.tracking.points import (
    CHECKPOINT_POLICIES,
    DEFAULT_CHECKPOINTS,
    _trace_digest,
    cell_keys,
    flat_params,
)

LOCK_FILE = ".mlflow.lock"
IMAGE_DIGEST_ENV = "HARNESS_IMAGE_DIGEST"
MAX_PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
# MLflow error codes that retrying cannot fix (anything else is retried with backoff).
PERMANENT_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED",
    "ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED", "FEATURE_DISABLED", "CUSTOMER_UNAUTHORIZED"})


def _transient(e: BaseException) -> bool:
    if getattr(e, "error_code", None) in PERMANENT_CODES:
        return False
    return not isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError,
                              NotADirectoryError, ValueError, TypeError, KeyError,
                              AttributeError))


@dataclass
class TrackingSummary:
    """What a tracker logged: `ok` when every cell's MLflow history matches its trace."""

    uri: str
    enabled: bool
    experiment: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    cell_runs: dict[str, str] = field(default_factory=dict)
    unsynced: dict[str, int] = field(default_factory=dict)  # cell_id -> points not logged
    ok: bool = False


_STOP = object()
_INTERRUPT = object()


class Tracker(CellSync):
    """Logs a run directory's cells to MLflow from their trace records (module docstring).

    `start()` takes a snapshot of every trace and starts the writer thread; `on_event(cell_id,
    event)` takes the executor's events (start / record / exit); `close()` flushes,
    reconciles and returns a `TrackingSummary`. Cells listed in `running` are about to run:
    they are reconciled when their exit event arrives; every other cell at start.
    """

    def __init__(self, run_dir: Path, *, running: Iterable[str] = (),
                 checkpoints: str = DEFAULT_CHECKPOINTS, uri: str | None = None,
                 warn: Callable[[str], None] | None = None,
                 client_factory: Callable[[str], Any] | None = None,
                 retry_base_s: float = 0.2, retry_cap_s: float = 10.0) -> None:
        if checkpoints not in CHECKPOINT_POLICIES:
            raise UserError(f"unknown checkpoint policy {checkpoints!r}: use one of "
                            f"{', '.join(CHECKPOINT_POLICIES)}")
        self.run_dir = run_dir.resolve()
        self.uri = uri or tracking_uri(run_dir)
        self.embedded = self.uri == embedded_uri(run_dir)
        self.checkpoints = checkpoints
        self.running = set(running)
        self._warn_fn = warn or (lambda m: print(m, file=sys.stderr, flush=True))
        self._client_factory = client_factory
        self._retry = (retry_base_s, retry_cap_s)
        self._q: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock_file: Any = None
        self._deadline: float | None = None
        self._gave_up = False
        self.interrupted = False
        self._warned: set[str] = set()
        self._cells: dict[str, _Cell] = {}
        self._client: Any = None
        self.summary = TrackingSummary(uri=self.uri, enabled=False)
        self.stats: dict[str, float] = {"connect_cpu_s": 0.0, "cpu_s": 0.0, "records": 0,
                                        "step_records": 0, "batches": 0, "points": 0,
                                        "reconcile_cpu_s": 0.0}

    # ------------------------------------------------------------------ main thread
    def start(self) -> bool:
        """Snapshot the traces and start logging; False (after one warning) when tracking is
        off for this run (HARNESS_MLFLOW=off, another process logging it, no disk space)."""
        if os.environ.get("HARNESS_MLFLOW", "").lower() in ("0", "off", "false", "no"):
            return False
        try:
            self._lock_file = open(self.run_dir / LOCK_FILE, "a")  # noqa: SIM115 (held)
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            busy = getattr(e, "errno", None) in (11, 13)  # EAGAIN / EACCES: held elsewhere
            self._warn("lock", "MLflow logging is off for this invocation: "
                       + ("another harness process is logging this run directory"
                          if busy else f"cannot write {self.run_dir / LOCK_FILE}: "
                          f"{e.strerror or e}")
                       + f"; run `harness sync {self.run_dir}` afterwards")
            self._release()
            return False
        if self.embedded and not (self.run_dir / STORE_FILE).exists():
            free = shutil.disk_usage(self.run_dir).free
            if free < MIN_FREE_BYTES:
                self._warn("disk", f"MLflow logging is off for this run: only {free // 1024} "
                           f"KiB free in {self.run_dir} (the cells need it); free disk space "
                           f"and run `harness sync {self.run_dir}`")
                self._release()
                return False
        self._meta = _read_json(self.run_dir / "resolved_spec.json")
        self._env = _read_json(self.run_dir / "environment.json")
        spec = self._meta.get("spec") or {}
        self._exp_name = experiment_name(spec.get("name", "unknown"), spec.get("version", 0))
        for cfg in sorted((self.run_dir / "cells").glob("*/config.json")):
            doc = _read_json(cfg)
            if "cell_id" not in doc or "config" not in doc:
                continue
            snapshot, digest = _trace_digest(cfg.parent / "trace.jsonl")
            cid = doc["cell_id"]
            self._cells[cid] = _Cell(cid, cfg.parent, doc, cid in self.running, snapshot, digest)
        self.summary = TrackingSummary(uri=self.uri, enabled=True, experiment=self._exp_name)
        self._thread = threading.Thread(target=self._main, name="mlflow-tracker", daemon=True)
        self._thread.start()
        return True

    def on_event(self, cell_id: str, event: dict[str, Any]) -> None:
        """An executor event of one cell: queued for the writer thread (cheap, never raises)."""
        if self._thread is not None:
            if event.get("event") == "start":  # the executor keeps extending that list
                event = {**event, "records": list(event.get("records") or [])}
            self._q.put((cell_id, event))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far was handled (for tests and benchmarks)."""
        if self._thread is None or not self._thread.is_alive():
            return False
        done = threading.Event()
        self._q.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 60.0, *, interrupted: bool = False) -> TrackingSummary:
        """Log what is queued, reconcile every cell that ran, finish the parent run; give up
        on a failing store after `timeout` seconds (the traces keep everything).
        `interrupted` (Ctrl-C): every cell that started and did not finish its chain, and the
        parent run, end KILLED (not RUNNING, not FAILED by the signal's exit code)."""
        if interrupted:
            self.interrupted = True
            self._q.put(_INTERRUPT)
        if self._thread is not None:
            self._deadline = time.monotonic() + timeout
            self._q.put(_STOP)
            self._thread.join(timeout + 30)
            if self._thread.is_alive():
                self._warn("stuck", "MLflow logging did not finish in time; run "
                           f"`harness sync {self.run_dir}` to complete it")
            self._thread = None
        self._release()
        return self.summary

    def _release(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                self._lock_file.close()
            self._lock_file = None

    def _warn(self, kind: str, message: str) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        with contextlib.suppress(Exception):
            self._warn_fn(f"warning: {message}")

    # ------------------------------------------------------------------ writer thread
    def _main(self) -> None:
        try:
            t0 = time.thread_time()
            connected = self._connect_with_retry()
            self.stats["connect_cpu_s"] += time.thread_time() - t0
            stop = False
            while not stop:
                item = self._q.get()
                t0 = time.thread_time()
                items = [item]
                with contextlib.suppress(queue.Empty):
                    while True:
                        items.append(self._q.get_nowait())
                waiters = []
                for it in items:
                    if it is _STOP:
                        stop = True
                    elif it is _INTERRUPT:
                        for cell in self._cells.values():
                            if cell.run_id and (cell.records or cell.exit_rc is not None):
                                cell.reconcile = True
                    elif isinstance(it, threading.Event):
                        waiters.append(it)
                    elif connected:
                        self._handle(*it)
                if connected and not self._gave_up:
                    try:
                        self._flush_all()
                        if stop:
                            self._finish()
                    except _GiveUp:
                        self._gave_up = True
                self.stats["cpu_s"] += time.thread_time() - t0
                for w in waiters:
                    w.set()
        except Exception as e:  # a tracker bug must not take the benchmark down
            self._warn("bug", f"MLflow logging stopped ({type(e).__name__}: {_short(e)}); "
                       f"the traces keep everything: run `harness sync {self.run_dir}`")
            self._drain_forever()
        finally:
            self._summarise()

    def _drain_forever(self) -> None:
        while True:
            it = self._q.get()
            if isinstance(it, threading.Event):
                it.set()
            if it is _STOP:
                return

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args) with retries and backoff on transient errors (a locked or unreachable
        store); permanent errors raise at once; past the close deadline raise _GiveUp."""
        delay, cap = self._retry
        while True:
            try:
                return fn(*args, **kwargs)
            except _GiveUp:
                raise
            except Exception as e:
                if not _transient(e):
                    raise
                self._warn("transient", f"MLflow store {self.uri} is not answering "
                           f"({_short(e)}); retrying in the background (the traces keep "
                           "every record)")
                if self._deadline is not None and time.monotonic() + delay > self._deadline:
                    raise _GiveUp from e
                time.sleep(delay)
                delay = min(delay * 2, cap)

    def _connect_with_retry(self) -> bool:
        try:
            self._connect()
            return True
        except _GiveUp:
            self._gave_up = True
        except Exception as e:
            self._warn("connect", f"MLflow logging is off for this run ({_short(e)}); the "
                       f"traces keep everything: run `harness sync {self.run_dir}` later")
        return False

    def _connect(self) -> None:
        import logging
        import warnings

        # MLflow's own deprecation notices are not the user's business in a bench's output
        warnings.filterwarnings("ignore", module=r"(mlflow|alembic|sqlalchemy)(\.|$)")
        from mlflow import MlflowClient

        for name, level in (("mlflow", logging.WARNING), ("alembic", logging.WARNING),
                            ("mlflow.store.db.utils", logging.CRITICAL)):
            logging.getLogger(name).setLevel(level)
        if self.embedded and not (self.run_dir / STORE_FILE).exists():
            with contextlib.suppress(Exception):  # else MLflow creates it (slower)
                seed_store(self.run_dir / STORE_FILE, (self.run_dir / ARTIFACTS_DIR).as_uri())
        factory = self._client_factory or (lambda uri: MlflowClient(tracking_uri=uri))
        self._client = factory(self.uri)
        exp_id = self._call(self._experiment)
        parent = self._call(self._parent, exp_id)
        self.summary.experiment_id = exp_id
        self._write_state(parent)  # before the children: an interrupted start finds them again
        children = self._call(self._children, exp_id, parent)
        for cell in self._cells.values():
            run = children.get(cell.cell_id) or self._create_child(exp_id, parent, cell)
            cell.run_id, cell.artifact_uri = run.info.run_id, run.info.artifact_uri
            if not run.data.params:  # new, or created by a start that failed right after
                self._log_params(cell)
            if cell.running and cell.cell_id in children:  # this invocation's versions
                cell.tags.update(self._cell_tags(cell))
            self._catch_up(cell, run)
        self.summary.parent_run_id = parent
        self.summary.cell_runs = {c.cell_id: c.run_id for c in self._cells.values() if c.run_id}
        self._write_state(parent)

    def _write_state(self, parent: str) -> None:
        from harness.rundir import write_json

        state = {"tracking_uri": self.uri, "store": "embedded" if self.embedded else "external",
                 "experiment": self._exp_name, "experiment_id": self.summary.experiment_id,
                 "parent_run_id": parent, "cells": self.summary.cell_runs}
        try:
            write_json(self.run_dir / STATE_FILE, state)
        except UserError as e:
            self._warn("state", f"cannot record the MLflow runs of this run directory: {e}")

    def _experiment(self) -> str:
        c = self._client
        e = c.get_experiment_by_name(self._exp_name)
        if e is None:
            location = (self.run_dir / ARTIFACTS_DIR).as_uri() if self.embedded else None
            spec = self._meta.get("spec") or {}
            try:
                return c.create_experiment(self._exp_name, artifact_location=location,
                                           tags={"spec": str(spec.get("name")),
                                                 "version": str(spec.get("version")),
                                                 **experiment_tags()})
            except Exception as ex:
                if getattr(ex, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                e = c.get_experiment_by_name(self._exp_name)  # another process created it
        have = e.tags or {}
        for key, value in experiment_tags().items():  # an experiment an older harness made
            if have.get(key) != value:
                c.set_experiment_tag(e.experiment_id, key, value)
        if e.lifecycle_stage == "deleted":
            c.restore_experiment(e.experiment_id)
            self._warn("restored", f"MLflow experiment {self._exp_name} was deleted in "
                       f"{self.uri}; restored it to log this run")
        return e.experiment_id

    def _common_tags(self) -> dict[str, str]:
        spec = self._meta.get("spec") or {}
        executor = self._env.get("executor") or {}
        images = executor.get("images") or {}
        tags = {"spec": spec.get("name"), "version": spec.get("version"),
                "spec_hash": self._meta.get("spec_hash"),
                "grid_hash": self._meta.get("grid_hash"),
                "harness_version": self._env.get("harness_version"),
                "git_commit": self._env.get("git_commit"),
                "executor": executor.get("name"),
                "image_digest": (images.get("trainer") or {}).get("id")
                or os.environ.get(IMAGE_DIGEST_ENV),
                "grader_image_digest": (images.get("grader") or {}).get("id"),
                "run_dir": str(self.run_dir)}
        return {k: str(v) for k, v in tags.items() if v not in (None, "")}

    def _cell_tags(self, cell: _Cell) -> dict[str, str]:
        try:
            keys = cell_keys(cell.doc)
        except (KeyError, TypeError, AttributeError):
            keys = {"cell_id": cell.cell_id}
        return {**self._common_tags(), **{k: str(v) for k, v in keys.items()}}

    def _parent(self, exp_id: str) -> str:
        c = self._client
        state = _read_json(self.run_dir / STATE_FILE)
        same_store = (state.get("store") == "embedded") if self.embedded else \
            state.get("tracking_uri") == self.uri
        pid = state.get("parent_run_id") if same_store and \
            state.get("experiment_id") == exp_id else None
        if pid:
            try:
                if c.get_run(pid).info.lifecycle_stage != "active":
                    pid = None
            except Exception as e:
                if _transient(e):
                    raise
                pid = None
        if not pid:  # the last write, so that a retry cannot create a second parent
            tags = {**self._common_tags(), "harness.kind": "bench"}
            return c.create_run(exp_id, tags=tags,
                                run_name=f"{self._exp_name} {self.run_dir.name}").info.run_id
        c.update_run(pid, status="RUNNING")
        return pid

    def _children(self, exp_id: str, parent: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        token = None
        while True:
            page = self._client.search_runs(
                [exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
                max_results=1000, page_token=token)
            for r in page:
                out.setdefault(r.data.tags.get("cell_id"), r)
            token = page.token
            if not token:
                return out

    def _create_child(self, exp_id: str, parent: str, cell: _Cell) -> Any:
        run = self._call(self._client.create_run, exp_id,
                         tags={**self._cell_tags(cell), "mlflow.parentRunId": parent},
                         run_name=cell.cell_id)
        self._call(self._client.update_run, run.info.run_id, status="SCHEDULED")
        return run

    def _log_params(self, cell: _Cell) -> None:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flat_params(cell.doc["config"]).items()]
        for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self._call(self._client.log_batch, cell.run_id,
                       params=params[i: i + MAX_PARAMS_PER_BATCH])

    def _finish(self) -> None:
        pid = self.summary.parent_run_id
        if pid is None:
            return
        c = self._client
        for name in ("resolved_spec.json", "environment.json", "results.json"):
            if (self.run_dir / name).is_file():
                self._call(c.log_artifact, pid, str(self.run_dir / name))
        cells = self._cells.values()
        finals = [any(r.get("type") == "final" for r in cl.records) for cl in cells]
        status = "FINISHED" if all(finals) else \
            "FAILED" if any(cl.exit_rc for cl in cells) and not self.interrupted else "KILLED"
        self._call(c.set_tag, pid, "cells_finished", f"{sum(finals)}/{len(finals)}")
        self._call(c.set_terminated, pid, status=status)

    def _summarise(self) -> None:
        unsynced = {}
        for cell in self._cells.values():
            if cell.synced:
                continue
            if cell.running and cell.exit_rc is None and not cell.pending and not cell.broken:
                continue  # never started in this invocation: nothing to log yet
            unsynced[cell.cell_id] = len(cell.pending)
        self.summary.unsynced = unsynced
        self.summary.ok = bool(self.summary.parent_run_id) and not unsynced \
            and not self._gave_up
        if self.summary.enabled and not self.summary.ok:
            what = f"{len(unsynced)} cell(s) of this run" if unsynced else "this run"
            self._warn("incomplete", f"MLflow logging of {what} is incomplete in {self.uri}; "
                       f"the traces have everything: run `harness sync {self.run_dir}` when "
                       "the store answers")


def sync_run(run_dir: Path, *, checkpoints: str = DEFAULT_CHECKPOINTS,
             warn: Callable[[str], None] | None = None, timeout: float = 120.0
             ) -> TrackingSummary:
    """Log a run directory to MLflow from its traces (idempotent): what `harness bench`
    logs as it runs, for a run whose logging failed or was interrupted."""
    tracker = Tracker(run_dir, checkpoints=checkpoints, warn=warn)
    if not tracker.start():
        if os.environ.get("HARNESS_MLFLOW", "").lower() in ("0", "off", "false", "no"):
            raise UserError("HARNESS_MLFLOW is off; unset it to log to MLflow")
        raise UserError(f"cannot log {run_dir} to MLflow now (see the warning above)")
    return tracker.close(timeout)

