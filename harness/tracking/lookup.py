"""Where a run's MLflow store is: its URI (`MLFLOW_TRACKING_URI`, else the run directory's
embedded SQLite store), the run directory itself (`resolve_run_dir`, `latest_run_dir`), the
`mlflow.json` state that links a run directory to its MLflow runs, the empty-store cache
(`seed_store`) and the `harness ui` command line (docs/mlflow.md)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from harness.errors import UserError

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
STATE_FILE = "mlflow.json"
# The embedded store is not created on a disk with less free space than this: the cells
# need it more (a full disk fails a cell; a missing store only delays logging).
MIN_FREE_BYTES = 64 * 2**20


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


# MLflow 3 opens an experiment without this tag on its GenAI overview (traces, an assistant);
# a training experiment opens on its runs.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # the UI's "share view" state, one tag per view
VIEW_KEY = "harness-cells"
VIEW_COLUMNS = ("tags.`controller`", "tags.`seed`", "tags.`method`", "tags.`model`",
                "metrics.`end_of_chain_pass1_test`", "metrics.`end_of_chain_pass1_eval`",
                "metrics.`mean_peak`", "metrics.`mean_gap`", "metrics.`collapsed_campaigns`",
                "metrics.`eval_pass1`")


def cells_view() -> str:
    """The runs view `harness ui` opens (MLflow's shared view state, JSON): the cell runs only
    (the parent run filtered out, so the cells are not folded under it), sorted by
    controller, with their controller, seed, method and model tags and end-of-chain metrics
    as columns."""
    return json.dumps({"searchFilter": "tags.cell_id LIKE '%'",
                       "orderByKey": "tags.`controller`", "orderByAsc": True,
                       "selectedColumns": list(VIEW_COLUMNS), "runsHiddenMode": "SHOW_ALL"},
                      separators=(",", ":"))


def experiment_tags() -> dict[str, str]:
    """The tags the tracker puts on every experiment it creates: a training experiment, with
    the cells view."""
    return {EXPERIMENT_KIND[0]: EXPERIMENT_KIND[1], VIEW_TAG_PREFIX + VIEW_KEY: cells_view()}


def view_url(base: str, experiment_id: str) -> str:
    """The URL of the cells view of an experiment on an MLflow UI at `base`."""
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}&compareRunsMode=TABLE")


def prepare_embedded_store(run_dir: Path, experiment: str | None) -> str | None:
    """Make a run directory's embedded store open well wherever the directory now is: point
    its artifact locations (absolute paths of the machine that wrote them) at this copy's
    mlartifacts/, and give the experiment the training kind and the cells view. Returns the
    experiment's id (None when the store has no such experiment). Plain SQL on MLflow's
    schema (experiments, runs, experiment_tags): no MLflow import, and the same for every
    store this harness wrote."""
    import sqlite3

    here = (run_dir.resolve() / ARTIFACTS_DIR).as_uri()
    con = sqlite3.connect(run_dir / STORE_FILE)
    try:
        with con:
            rows = con.execute("SELECT experiment_id, name, artifact_location FROM "
                               "experiments").fetchall()
            exp = next((r for r in rows if r[1] == experiment), None) or \
                next((r for r in rows if str(r[0]) != "0"), None)
            for _, _, loc in rows:
                if loc and loc != here and loc.rstrip("/").endswith("/" + ARTIFACTS_DIR):
                    old = loc.rstrip("/")
                    con.execute("UPDATE experiments SET artifact_location = ? WHERE "
                                "artifact_location = ?", (here, loc))
                    con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                                "WHERE substr(artifact_uri, 1, ?) = ?",
                                (here, len(old) + 1, len(old), old))
            if exp is None:
                return None
            for key, value in experiment_tags().items():
                con.execute("INSERT OR REPLACE INTO experiment_tags (key, value, experiment_id)"
                            " VALUES (?, ?, ?)", (key, value, exp[0]))
            return str(exp[0])
    finally:
        con.close()


def ui_command(run_dir: Path, host: str, port: int) -> tuple[list[str], str]:
    """The `mlflow server` command line for a run directory's store, and the URL of its
    cells view. An embedded store is prepared first (`prepare_embedded_store`: relocated
    artifacts, the training kind, the view)."""
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
    exp_id = state.get("experiment_id")
    if uri == embedded_uri(run_dir):
        try:
            exp_id = prepare_embedded_store(run_dir, state.get("experiment")) or exp_id
        except Exception as e:  # sqlite3.Error, OSError: a read-only copy still opens
            print(f"warning: could not prepare {run_dir / STORE_FILE} for the UI ({e}); "
                  "artifacts may not show", file=sys.stderr)
    if exp_id:
        url = view_url(url, str(exp_id))
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--registry-store-uri", uri,
           "--artifacts-destination", str(run_dir.resolve() / ARTIFACTS_DIR),
           "--host", host, "--port", str(port), "--workers", "1",
           "--uvicorn-opts", "--log-level warning"]
    return cmd, url


# what `mlflow server` prints at every start that is not the user's business
UI_NOISE = re.compile(r"^(Registry store URI not provided|\[MLflow\] Security middleware "
                      r"enabled|.*\bINFO\b|.*DeprecationWarning|\s+from starlette)")


def serve_ui(cmd: list[str]) -> int:
    """Run `mlflow server` until it ends or this process is stopped (Ctrl-C, SIGTERM, SIGHUP),
    passing on its output except the start-up noise (UI_NOISE; MLflow's INFO lines and
    Python's deprecation warnings are also turned off at the source); its exit code, 0 once
    stopped. The server runs in a session of its own, stopped as a whole (its uvicorn and job
    workers too), so that no server is left holding the port: before, a SIGTERM to `harness
    ui`, or a SIGINT to it alone, left them running."""
    import subprocess

    from harness.procutil import die_with_parent, stop_session, stop_signals_interrupt

    env = {**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING",
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    with stop_signals_interrupt():
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, start_new_session=True,
                                preexec_fn=die_with_parent)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                if not UI_NOISE.match(line):
                    sys.stderr.write(line)
                    sys.stderr.flush()
            return proc.wait()
        except KeyboardInterrupt:
            stop_session(proc.pid)  # the server, its web and job workers
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            return 0
