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

The package, by job: `points` (what a trace logs: metric points, params, checkpoint names),
`tracker` (the writer: `Tracker`, `sync_run`), `cells` (its per-cell half: catch-up, events,
batches, reconciling), `lookup` (where: the store's URI, run directories, `mlflow.json`,
`harness ui`). Every public name is importable from `harness.tracking`.
"""

from harness.tracking.cells import MAX_METRICS_PER_BATCH, SYNCED_TAG
from harness.tracking.lookup import (
    ARTIFACTS_DIR,
    MIN_FREE_BYTES,
    STATE_FILE,
    STORE_FILE,
    embedded_uri,
    experiment_name,
    experiment_tags,
    latest_run_dir,
    resolve_run_dir,
    seed_store,
    serve_ui,
    tracking_uri,
    ui_command,
    view_url,
)
from harness.tracking.points import (
    CHECKPOINT_POLICIES,
    DEFAULT_CHECKPOINTS,
    MAX_PARAM_LENGTH,
    Point,
    cell_keys,
    checkpoint_candidates,
    checkpoint_file,
    expected_points,
    flat_params,
    missing_points,
    record_points,
)
from harness.tracking.tracker import (
    IMAGE_DIGEST_ENV,
    LOCK_FILE,
    MAX_PARAMS_PER_BATCH,
    PERMANENT_CODES,
    Tracker,
    TrackingSummary,
    sync_run,
)

__all__ = [
    "ARTIFACTS_DIR",
    "CHECKPOINT_POLICIES",
    "DEFAULT_CHECKPOINTS",
    "IMAGE_DIGEST_ENV",
    "LOCK_FILE",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_PER_BATCH",
    "MAX_PARAM_LENGTH",
    "MIN_FREE_BYTES",
    "PERMANENT_CODES",
    "STATE_FILE",
    "STORE_FILE",
    "SYNCED_TAG",
    "Point",
    "Tracker",
    "TrackingSummary",
    "cell_keys",
    "checkpoint_candidates",
    "checkpoint_file",
    "embedded_uri",
    "expected_points",
    "experiment_name",
    "experiment_tags",
    "flat_params",
    "latest_run_dir",
    "missing_points",
    "record_points",
    "resolve_run_dir",
    "seed_store",
    "serve_ui",
    "sync_run",
    "tracking_uri",
    "ui_command",
    "view_url",
]
