"""MLflow tracking, derived from the cells' traces (the source of truth).

Layout in the tracking store (docs/mlflow.md):

    experiment   "<spec>@<version>"
    parent run   one per run directory (`mlflow.json` in the run directory links the two, so a
                 re-run of `harness bench` on the same directory continues the same runs)
    child run    one per cell (nested: tag `mlflow.parentRunId`; found again by tag `cell_id`)
                 tags: spec, version, spec_hash, grid_hash, cell_id, model, method, controller,
                 seed, harness_version, git_commit, executor, image_digest and grader_image_digest (docker executor; else HARNESS_IMAGE_DIGEST), run_dir
                 params: the flattened resolved cell config (`chain.steps`, `optim.lr`, ...)
                 metrics: see `record_points`; artifacts: decisions.json, trace.jsonl,
                 result.json, config.json, checkpoints/ (by the checkpoint policy)

The store is `MLFLOW_TRACKING_URI` when set, else a SQLite file in the run directory
(`sqlite:///<run_dir>/mlflow.db`, artifacts under `<run_dir>/mlartifacts`).

One writer: the process running `harness bench` (or `harness sync`) logs for every cell, from
the trace records the executor already forwards (`Tracker.on_event`). `on_event` only queues;
a background thread batches the points of each cell into `log_batch` calls, retries with
backoff while the store is locked or unreachable, and when a cell exits reconciles its MLflow
history with its trace on disk, logging whatever is missing. A tracking failure never stops a
benchmark: it warns once, the trace keeps everything, and `harness sync RUN` (or re-running
the bench) logs what is missing later.

Idempotence. A point is identified by (record index in the trace, metric key): a resumed cell
rewrites its trace and re-produces the dropped records at the same indices with the same
values (only `time` differs), so they are not logged twice. Reconciling matches MLflow's
history to the trace by (key, step, value), then by (key, step) for values that differ (the
timings of a re-run step), so nothing is logged twice across processes either. A cell whose
history matches its trace gets the tag `harness.trace_synced` (a digest of the trace), which
lets later invocations skip it without reading its history.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import queue
import re
import shutil
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from harness.errors import UserError
from harness.runner.trace import read_trace

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
STATE_FILE = "mlflow.json"
LOCK_FILE = ".mlflow.lock"
SYNCED_TAG = "harness.trace_synced"
IMAGE_DIGEST_ENV = "HARNESS_IMAGE_DIGEST"
CHECKPOINT_POLICIES = ("none", "final", "carried", "all")
DEFAULT_CHECKPOINTS = "carried"
# The embedded store is not created on a disk with less free space than this: the cells
# need it more (a full disk fails a cell; a missing store only delays logging).
MIN_FREE_BYTES = 64 * 2**20
MAX_METRICS_PER_BATCH = 1000  # MLflow's limits per log_batch call
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
# MLflow error codes that retrying cannot fix (anything else is retried with backoff).
PERMANENT_CODES = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED",
    "ENDPOINT_NOT_FOUND", "NOT_IMPLEMENTED", "FEATURE_DISABLED", "CUSTOMER_UNAUTHORIZED"})


# --------------------------------------------------------------------------- where
def embedded_uri(run_dir: Path) -> str:
    return f"sqlite:///{run_dir.resolve() / STORE_FILE}"


def tracking_uri(run_dir: Path) -> str:
    """`MLFLOW_TRACKING_URI` when set, else the embedded SQLite store of the run directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(run_dir)


def experiment_name(spec: str, version: int | str) -> str:
    return f"{spec}@{version}"


def latest_run_dir(root: Path | None = None) -> Path | None:
    """The most recently written run directory under `root` (default: $HARNESS_RUNS or runs/)."""
    root = root or Path(os.environ.get("HARNESS_RUNS", "runs"))
    best: tuple[float, Path] | None = None
    for spec_file in root.glob("*/*/resolved_spec.json"):
        d = spec_file.parent
        mtime = max((d / f).stat().st_mtime for f in ("resolved_spec.json", STORE_FILE,
                                                         "results.json") if (d / f).exists())
        if best is None or mtime > best[0]:
            best = (mtime, d)
    return best[1] if best else None


def resolve_run_dir(run: Path | None) -> Path:
    """RUN as given (it must hold a run), else the latest run under runs/."""
    if run is None:
        found = latest_run_dir()
        if found is None:
            root = os.environ.get("HARNESS_RUNS", "runs")
            raise UserError(f"no run directory under {root}/; pass RUN or run `harness bench` "
                            "first")
        return found
    if not (run / "resolved_spec.json").is_file():
        raise UserError(f"{run} is not a run directory (no resolved_spec.json); pass the "
                        "directory `harness bench` printed")
    return run


# --------------------------------------------------------------------------- what
class Point(NamedTuple):
    """One metric value to log: the trace record it comes from (its index) and its key."""

    index: int
    key: str
    value: float
    step: int


_BAD_KEY_CHARS = re.compile(r"[^\w\-. :/]")


def _numeric(prefix: str, v: Any) -> Iterable[tuple[str, float]]:
    """(key, value) of every number in `v`, nested mappings flattened with '.'."""
    if isinstance(v, (bool, int, float)):
        yield prefix, float(v)
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _numeric(f"{prefix}.{k}", x)


def _points(index: int, step: int, items: Iterable[tuple[str, float]]) -> list[Point]:
    return [Point(index, _BAD_KEY_CHARS.sub("_", k), v, step) for k, v in items]


def record_points(records: Sequence[dict[str, Any]], i: int) -> list[Point]:
    """The metric points of trace record `i` (docs/mlflow.md lists the keys).

    - `step`: every number of the record under its own name (`eval_pass1`, `train_reward`,
      `entropy`, `kl_to_ref`, `grad_norm`, ..., `time.generate`, ...), plus `campaign` and
      `campaign_step`, at step = `global_step`. A campaign's step 0 shares its global step
      with the previous campaign's last step, so those keys have two points there (equal
      unless the controller rolled back);
    - `campaign`: `campaign/<field>` (start, peak, peak_step, end, gap, collapsed, onset, ...)
      at step = the campaign index;
    - `plan`: `plan/budget`, `plan/lr` and the controller's numbers, at step = campaign;
    - `final` (step 0): `end_of_chain_pass1_test`, `end_of_chain_pass1_eval`,
      `end_of_chain_test_passes`, `oracle_<trace|hindsight>_pass1_<test|eval>`, and
      `mean_peak`, `mean_end`, `mean_gap`, `collapsed_campaigns` over the chain.
    """
    r = records[i]
    kind = r.get("type")
    if kind == "step":
        items = [("campaign", float(r["campaign"])), ("campaign_step", float(r["step"]))]
        for k, v in r.items():
            if k not in ("type", "global_step", "campaign", "step"):
                items.extend(_numeric(k, v))
        return _points(i, int(r["global_step"]), items)
    if kind == "campaign":
        items = [x for k, v in r.items() if k not in ("type", "index")
                 for x in _numeric(f"campaign/{k}", v)]
        return _points(i, int(r["index"]), items)
    if kind == "plan":
        items = [x for k, v in r.items() if k not in ("type", "campaign")
                 for x in _numeric(f"plan/{k}", v)]
        return _points(i, int(r["campaign"]), items)
    if kind == "final":
        items = [(f"end_of_chain_{k}", r.get(k)) for k in ("pass1_test", "pass1_eval",
                                                            "test_passes")]
        for name, o in (r.get("oracles") or {}).items():
            items += [(f"oracle_{name}_pass1_test", (o or {}).get("pass1_test")),
                      (f"oracle_{name}_pass1_eval", (o or {}).get("pass1_eval"))]
        camps = [c for c in records[:i] if c.get("type") == "campaign"]
        if camps:
            n = len(camps)
            items += [("mean_peak", sum(c["peak"] for c in camps) / n),
                      ("mean_end", sum(c["end"] for c in camps) / n),
                      ("mean_gap", sum(c["gap"] for c in camps) / n),
                      ("collapsed_campaigns", sum(bool(c["collapsed"]) for c in camps)),
                      ("signature_campaigns", sum(bool(c.get("signature")) for c in camps))]
        return _points(i, 0, [x for k, v in items for x in _numeric(k, v)])
    return []


def expected_points(records: Sequence[dict[str, Any]]) -> list[Point]:
    """Every point a trace implies, in trace order."""
    return [p for i in range(len(records)) for p in record_points(records, i)]


def _norm(v: float) -> Any:
    """How MLflow stores a value (NaN is a flag, infinities are clamped)."""
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return math.copysign(sys.float_info.max, v)
    return float(v)


def missing_points(points: Sequence[Point],
                   history: dict[str, list[tuple[int, float]]]) -> list[Point]:
    """The points of a trace that MLflow's history (key -> [(step, value)]) lacks.

    Logged points are matched first by (step, value), then by step alone: a re-run step of a
    resumed campaign has the same values except its timings, and counts as logged."""
    by_key: dict[str, list[Point]] = {}
    for p in points:
        by_key.setdefault(p.key, []).append(p)
    missing: list[Point] = []
    for key, pts in by_key.items():
        logged = Counter((s, _norm(v)) for s, v in history.get(key, []))
        per_step = Counter(s for s, _ in history.get(key, []))
        unmatched = []
        for p in pts:
            kv = (p.step, _norm(p.value))
            if logged[kv] > 0:
                logged[kv] -= 1
                per_step[p.step] -= 1
            else:
                unmatched.append(p)
        for p in unmatched:
            if per_step[p.step] > 0:
                per_step[p.step] -= 1
            else:
                missing.append(p)
    return missing


def checkpoint_candidates(record: dict[str, Any], policy: str) -> list[str]:
    """Checkpoints a record makes worth logging under a policy (docs/mlflow.md):
    `final` the policy carried out of the chain; `carried` also each policy a campaign
    carries into the next (a plan's `start_from`); `all` also every campaign's last and peak
    checkpoints. `init` is the model source, never a file."""
    kind = record.get("type")
    names: list[str] = []
    if policy == "none":
        return names
    if kind == "final":
        names = [record["carried_from"]]
    elif kind == "plan" and policy in ("carried", "all"):
        names = [record["start_from"]]
    elif kind == "campaign" and policy == "all":
        names = [f"c{record['index']}:last", f"c{record['index']}:peak"]
    return [n for n in names if n and n != "init"]


def checkpoint_file(cell_dir: Path, name: str) -> Path:
    # the naming rule of harness.runner.checkpoints.CheckpointStore
    return cell_dir / "checkpoints" / (name.replace(":", "_") + ".safetensors")


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved cell config as MLflow params: nested keys joined with '.', values as
    JSON (strings as themselves), cut to MLflow's length limit."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key + "."))
            continue
        s = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
        out[_BAD_KEY_CHARS.sub("_", key)] = s if len(s) <= MAX_PARAM_LENGTH else \
            s[: MAX_PARAM_LENGTH - 3] + "..."
    return out


def cell_keys(doc: dict[str, Any]) -> dict[str, Any]:
    """model, method, controller labels and seed of a cell from its config.json (the rules
    of `ModelSpec.name`, `MethodSpec.arm`, `ControllerSpec.arm`)."""
    cfg = doc["config"]
    model = cfg["model"].get("label") or str(cfg["model"]["id"]).rstrip("/").split("/")[-1]
    return {"cell_id": doc["cell_id"], "model": model,
            "method": cfg["method"].get("label") or cfg["method"]["name"],
            "controller": cfg["controller"].get("label") or cfg["controller"]["name"],
            "seed": cfg["seed"]}


def _trace_digest(path: Path) -> tuple[list[dict[str, Any]], str]:
    records = read_trace(path)
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, allow_nan=True).encode())
    return records, f"{len(records)}:{h.hexdigest()[:16]}"


def _decisions(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "type"} | {"kind": r["type"]}
            for r in records if r.get("type") in ("plan", "stop")]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _local_dir(uri: str | None) -> Path | None:
    if not uri:
        return None
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" and uri.startswith("/"):
        return Path(uri)
    return None


def seed_store(dest: Path, artifact_root: str) -> None:
    """Create an empty embedded store at `dest` by copying a migrated one cached in
    $HARNESS_CACHE/mlflow/ (per MLflow version): MLflow's schema migrations take several
    seconds on every new store. MLflow's `Default` experiment is pointed at `artifact_root`."""
    import sqlite3

    import mlflow
    from mlflow import MlflowClient

    cache = Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness")
    template = cache / "mlflow" / f"empty-store-{mlflow.__version__}.db"
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()
        os.replace(tmp, template)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(template, tmp)
    con = sqlite3.connect(tmp)
    try:
        with con:
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                        (artifact_root,))
    finally:
        con.close()
    os.replace(tmp, dest)


# --------------------------------------------------------------------------- writer
class _GiveUp(Exception):
    """The close deadline passed while the store still failed."""


def _transient(e: BaseException) -> bool:
    if getattr(e, "error_code", None) in PERMANENT_CODES:
        return False
    return not isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError,
                              NotADirectoryError, ValueError, TypeError, KeyError,
                              AttributeError))


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


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


@dataclass
class _Cell:
    cell_id: str
    dir: Path
    doc: dict[str, Any]
    running: bool
    snapshot: list[dict[str, Any]]
    digest: str
    run_id: str | None = None
    artifact_uri: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    index: int = 0
    sent: set[tuple[int, str]] = field(default_factory=set)
    pending: list[Any] = field(default_factory=list)  # mlflow Metric objects
    tags: dict[str, str] = field(default_factory=dict)
    status: str | None = None
    decisions_dirty: bool = False
    ckpt_todo: list[str] = field(default_factory=list)
    ckpt_done: set[str] = field(default_factory=set)
    ckpt_gone: set[str] = field(default_factory=set)
    exit_rc: int | None = None
    reconcile: bool = False
    synced: bool = False
    broken: bool = False  # a permanent error dropped something: not marked synced


_STOP = object()


class Tracker:
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

    def close(self, timeout: float = 60.0) -> TrackingSummary:
        """Log what is queued, reconcile every cell that ran, finish the parent run; give up
        on a failing store after `timeout` seconds (the traces keep everything)."""
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
                                                 "version": str(spec.get("version"))})
            except Exception as ex:
                if getattr(ex, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
                    raise
                e = c.get_experiment_by_name(self._exp_name)  # another process created it
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

    def _history(self, cell: _Cell, keys: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
        return {k: [(m.step, m.value) for m in
                    self._call(self._client.get_metric_history, cell.run_id, k)]
                for k in sorted(set(keys))}

    def _catch_up(self, cell: _Cell, run: Any) -> None:
        """Before the cell (re)starts: what of its trace is already logged; queue the rest."""
        pts = expected_points(cell.snapshot)
        if run.data.tags.get(SYNCED_TAG) == cell.digest:
            missing: list[Point] = []
            cell.synced = not cell.running
        else:
            missing = missing_points(pts, self._history(cell, (p.key for p in pts)))
            cell.reconcile = not cell.running
        cell.sent = {(p.index, p.key) for p in pts}  # logged, or queued just now
        self._enqueue(cell, missing)
        cell.records = list(cell.snapshot)
        cell.index = len(cell.records)
        if not cell.snapshot and not cell.running:
            cell.reconcile, cell.synced = False, True  # never started: stays SCHEDULED
        if self.checkpoints != "none" and cell.snapshot and not cell.synced:
            cell.ckpt_done = {Path(f.path).stem.replace("_", ":", 1) for f in self._call(
                self._client.list_artifacts, cell.run_id, "checkpoints")}
            for r in cell.snapshot:
                self._want_checkpoints(cell, r)

    def _enqueue(self, cell: _Cell, points: Sequence[Point]) -> None:
        """Queue points for the cell's next batch, each with the time it was first seen (a
        retried batch then repeats exact metrics, which the store ignores)."""
        if not points:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        cell.pending.extend(Metric(p.key, p.value, ts, p.step) for p in points)
        self.stats["points"] += len(points)

    def _want_checkpoints(self, cell: _Cell, record: dict[str, Any]) -> None:
        for name in checkpoint_candidates(record, self.checkpoints):
            if name not in cell.ckpt_done and name not in cell.ckpt_todo:
                cell.ckpt_todo.append(name)

    def _handle(self, cell_id: str, ev: dict[str, Any]) -> None:
        cell = self._cells.get(cell_id)
        if cell is None or cell.run_id is None:
            return
        kind = ev.get("event")
        if kind == "start":
            cell.status = "RUNNING"
            cell.records, cell.index = [], 0  # a resumed cell re-sends its records from 0
            for r in ev.get("records") or []:
                self._add(cell, r)
        elif kind == "record":
            self._add(cell, ev["record"])
        elif kind == "exit":
            cell.exit_rc = int(ev.get("returncode") or 0)
            cell.reconcile = True

    def _add(self, cell: _Cell, record: dict[str, Any]) -> None:
        i = cell.index
        cell.index += 1
        if i < len(cell.records):
            cell.records[i] = record
        else:
            cell.records.append(record)
        self.stats["records"] += 1
        if record.get("type") == "step":
            self.stats["step_records"] += 1
        new = [p for p in record_points(cell.records, i) if (p.index, p.key) not in cell.sent]
        cell.sent.update((p.index, p.key) for p in new)
        self._enqueue(cell, new)
        kind = record.get("type")
        if kind in ("plan", "stop"):
            cell.decisions_dirty = True
        elif kind == "final":
            cell.tags["end_of_chain_carried_from"] = str(record.get("carried_from"))
        self._want_checkpoints(cell, record)

    def _flush_all(self) -> None:
        for cell in self._cells.values():
            if cell.run_id is None or (cell.broken and not cell.reconcile):
                continue
            try:
                self._flush_cell(cell)
                if cell.reconcile:
                    self._reconcile(cell)
            except _GiveUp:
                raise
            except Exception as e:  # permanent for this cell: report, keep the others going
                cell.broken, cell.reconcile = True, False
                cell.pending.clear()
                self._warn(f"cell:{cell.cell_id}", f"MLflow logging of cell {cell.cell_id} "
                           f"failed ({_short(e)}); its trace keeps everything: run "
                           f"`harness sync {self.run_dir}` later")

    def _flush_cell(self, cell: _Cell) -> None:
        from mlflow.entities import RunTag

        c = self._client
        if cell.status:
            self._call(c.update_run, cell.run_id, status=cell.status)
            cell.status = None
        while cell.pending or cell.tags:
            chunk = cell.pending[:MAX_METRICS_PER_BATCH]
            tags = [RunTag(k, v) for k, v in cell.tags.items()]
            self._call(c.log_batch, cell.run_id, metrics=chunk, tags=tags)
            self.stats["batches"] += 1
            del cell.pending[: len(chunk)]
            cell.tags = {}
        if cell.decisions_dirty:
            self._call(c.log_text, cell.run_id, json.dumps(_decisions(cell.records), indent=2),
                       "decisions.json")
            cell.decisions_dirty = False
        while cell.ckpt_todo:
            name = cell.ckpt_todo[0]
            path = checkpoint_file(cell.dir, name)
            try:
                if path.exists():
                    self._put_checkpoint(cell, path)
                    cell.ckpt_done.add(name)
                else:  # pruned by the cell runner before it could be logged
                    cell.ckpt_gone.add(name)
            except _GiveUp:
                raise
            except Exception as e:  # a checkpoint must not cost the metrics
                cell.ckpt_gone.add(name)
                self._warn("checkpoint", f"checkpoint {path} was not logged to MLflow "
                           f"({_short(e)})")
            cell.ckpt_todo.pop(0)

    def _put_checkpoint(self, cell: _Cell, path: Path) -> None:
        """A checkpoint file is never rewritten in place (temp file + rename), so a hard link
        into a local artifact store is an exact copy that takes no space."""
        local = _local_dir(cell.artifact_uri)
        if local is not None:
            dest = local / "checkpoints" / path.name
            tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp.unlink(missing_ok=True)
                os.link(path, tmp)
                os.replace(tmp, dest)
                return
            except OSError:
                tmp.unlink(missing_ok=True)
                need = path.stat().st_size + MIN_FREE_BYTES
                if shutil.disk_usage(dest.parent).free < need:
                    raise OSError(f"no space for a copy of checkpoint {path.name}") from None
        self._call(self._client.log_artifact, cell.run_id, str(path), "checkpoints")

    def _reconcile(self, cell: _Cell) -> None:
        """The cell's trace on disk against its MLflow history: log what is missing, the
        artifacts, its final status, and mark it synced."""
        t0 = time.thread_time()
        c = self._client
        records, digest = _trace_digest(cell.dir / "trace.jsonl")
        pts = expected_points(records)
        missing = missing_points(pts, self._history(cell, (p.key for p in pts)))
        self._enqueue(cell, missing)
        cell.sent.update((p.index, p.key) for p in missing)
        for r in records:
            self._want_checkpoints(cell, r)
        cell.records, cell.decisions_dirty = list(records), bool(_decisions(records))
        self._flush_cell(cell)
        for name in ("trace.jsonl", "result.json", "config.json"):
            if (cell.dir / name).is_file():
                self._call(c.log_artifact, cell.run_id, str(cell.dir / name))
        if cell.ckpt_gone:
            self._call(c.log_text, cell.run_id, json.dumps(
                {"policy": self.checkpoints, "logged": sorted(cell.ckpt_done),
                 "pruned_before_logging": sorted(cell.ckpt_gone)}, indent=2),
                "checkpoints/missing.json")
        finished = any(r.get("type") == "final" for r in records)
        status = "FINISHED" if finished and not cell.exit_rc else \
            "FAILED" if cell.exit_rc else "KILLED"
        # the history now holds every point of the trace (whatever failed before)
        self._call(c.set_tag, cell.run_id, SYNCED_TAG, digest)
        self._call(c.set_terminated, cell.run_id, status=status)
        cell.reconcile, cell.synced, cell.broken = False, True, False
        self.stats["reconcile_cpu_s"] += time.thread_time() - t0

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
            "FAILED" if any(cl.exit_rc for cl in cells) else "KILLED"
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


def ui_command(run_dir: Path, host: str, port: int) -> tuple[list[str], str]:
    """The `mlflow server` command line for a run directory's store, and its URL."""
    state = _read_json(run_dir / STATE_FILE)
    uri = embedded_uri(run_dir) if state.get("store", "embedded") == "embedded" \
        else state.get("tracking_uri") or embedded_uri(run_dir)
    if uri.startswith(("http://", "https://", "databricks")):
        raise UserError(f"{run_dir} was logged to the tracking server {uri}: open it there "
                        f"(experiment {state.get('experiment')})")
    if uri == embedded_uri(run_dir) and not (run_dir / STORE_FILE).is_file():
        raise UserError(f"{run_dir} has no MLflow store ({STORE_FILE}); run `harness sync "
                        f"{run_dir}` to create it from the traces")
    url = f"http://{host}:{port}"
    if state.get("experiment_id"):
        url += f"/#/experiments/{state['experiment_id']}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--artifacts-destination", str(run_dir.resolve() / ARTIFACTS_DIR),
           "--host", host, "--port", str(port), "--workers", "1"]
    return cmd, url
