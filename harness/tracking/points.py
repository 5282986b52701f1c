"""What a trace logs to MLflow: the metric points of its records (`record_points`, keyed by
record index and metric key, which makes logging idempotent), what MLflow's history lacks
(`missing_points`), the checkpoints a record makes worth logging (`checkpoint_candidates`),
the cell's config as params (`flat_params`) and its labels as tags (`cell_keys`)
(docs/mlflow.md lists the keys)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from harness.results import chain_aggregates
from harness.runner.trace import read_trace_checked

CHECKPOINT_POLICIES = ("none", "final", "carried", "all")
DEFAULT_CHECKPOINTS = "carried"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value


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
        if camps:  # the chain's aggregates, as in result.json (`harness.results`)
            agg = chain_aggregates(camps)
            items += [(k, agg[k]) for k in ("mean_peak", "mean_end", "mean_gap",
                                            "collapsed_campaigns", "signature_campaigns")]
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
    """The trace's records (a corrupt line, or a cut-off one in the trace of a finished
    cell, is a one-line UserError as in `harness gate`) and a digest of them."""
    records = read_trace_checked(path, complete=(path.parent / "result.json").is_file()
                                 )[0] if path.exists() else []
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(r, sort_keys=True, allow_nan=True).encode())
    return records, f"{len(records)}:{h.hexdigest()[:16]}"
