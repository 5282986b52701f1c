"""Per-cell logging, the half of `Tracker` that keeps each cell's MLflow run in step with its
trace (a mixin of `harness.tracking.tracker.Tracker`, which owns the writer thread, the
client and the retries): catching up with what a trace already holds when the tracker
starts, turning the executor's events into queued metric points, flushing them in batches
with the decisions and checkpoints, and reconciling a cell that exited with its trace on disk
(the idempotence rules are in `harness.tracking`)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.results import decisions
from harness.tracking.lookup import MIN_FREE_BYTES, _local_dir
from harness.tracking.points import (
    Point,
    _trace_digest,
    checkpoint_candidates,
    checkpoint_file,
    expected_points,
    missing_points,
    record_points,
)

SYNCED_TAG = "harness.trace_synced"
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call


class _GiveUp(Exception):
    """The close deadline passed while the store still failed."""


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


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


class CellSync:
    """The per-cell methods of `Tracker` (module docstring). They run on the writer thread and
    use the tracker's state: its client and retrying `_call`, its cells and warnings."""

    run_dir: Path
    checkpoints: str
    stats: dict[str, float]
    _client: Any
    _cells: dict[str, _Cell]
    _call: Callable[..., Any]
    _warn: Callable[[str, str], None]
    interrupted: bool  # Ctrl-C: an unfinished cell ends KILLED whatever its exit code

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
            self._call(c.log_text, cell.run_id, json.dumps(decisions(cell.records), indent=2),
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
        cell.records, cell.decisions_dirty = list(records), bool(decisions(records))
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
            "FAILED" if cell.exit_rc and not self.interrupted else "KILLED"
        # the history now holds every point of the trace (whatever failed before)
        self._call(c.set_tag, cell.run_id, SYNCED_TAG, digest)
        self._call(c.set_terminated, cell.run_id, status=status)
        cell.reconcile, cell.synced, cell.broken = False, True, False
        self.stats["reconcile_cpu_s"] += time.thread_time() - t0

