"""Where a run's MLflow store is: its URI (`MLFLOW_TRACKING_URI`, else the run directory's
embedded SQLite store), the run directory itself (`resolve_run_dir`, `latest_run_dir`), the
`mlflow.json` state that links a run directory to its MLflow runs, the empty-store cache
(`seed_store`) and the `harness ui` command line (docs/mlflow.md)."""

from __future__ import annotations

import json
import os
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
