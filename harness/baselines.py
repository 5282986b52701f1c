"""Registered baselines: per-seed metrics of a run's arms, stored with their provenance.

One JSON file per spec, `benchmarks/baselines/<spec>.json` (docs/comparisons-and-gate.md
"Registered baselines"):

    {"format": 2, "spec": NAME, "version": V, "spec_hash": H, "mode": "statistical"|"exact",
     "updated_at": ISO-8601 UTC,
     "arms": [{"model", "method", "controller", "seeds": [...],
               "per_seed": [{"seed", "cell_id", "metrics": {METRIC: value, ...},
                             "figures": {NAME: value, ...}}, ...],      # figures: exact only
               "provenance": {"registered_at", "reason", "run_dir", "spec", "version",
                              "spec_hash", "grid_hash", "harness_version", "git_commit",
                              "environment": {python, platform, packages, cpu, gpu, cuda,
                                              torch_threads}}}, ...]}

`mode` says how `harness gate` checks a run against it: `statistical` (the same arm, paired
by seed, expect no_worse) or `exact` (for deterministic CPU specs: every figure of every
registered cell, `harness.runcheck.cell_figures`, must equal the baseline's). Format 1 files
(no mode, no figures) read as statistical.

Registering again with the same spec_hash and mode replaces the registered arms and keeps
the others; a different spec_hash or mode replaces the file. An exact baseline holds one
variant of an arm per *platform* (CPU or GPU, and torch's CPU capability: AVX2, AVX512, ...,
as the provenance records it), because other vector widths round floats differently and so
produce other figures: registering on another platform adds a variant, and the gate holds a
run to the variant of its own platform (`for_platform`). A registration keeps the file's
mode unless another is asked for. A baseline whose spec_hash differs from a run's is
*stale*: reported, never used for gating.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.rundir import read_json_object, write_json
from harness.stats import METRIC_FIELDS, cell_metric

BASELINE_FORMAT = 2
READ_FORMATS = (1, 2)
MODES = ("statistical", "exact")
ENV_KEYS = ("python", "platform", "packages", "cpu", "gpu", "cuda", "torch_threads")


def baselines_dir() -> Path:
    """$HARNESS_BASELINES, else benchmarks/baselines (beside the registered specs)."""
    env = os.environ.get("HARNESS_BASELINES")
    if env:
        return Path(env)
    from harness.spec import benchmarks_dir

    return benchmarks_dir() / "baselines"


def baseline_path(spec_name: str, root: Path | None = None) -> Path:
    return (root or baselines_dir()) / f"{spec_name}.json"


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _arm_matches(arm: tuple[str, str, str], wanted: str) -> bool:
    """`method/controller` matches the arm on every model; `model/method/controller` one."""
    parts = tuple(wanted.split("/"))
    return len(parts) in (2, 3) and arm[-len(parts):] == parts


def _arm_key(arm: dict[str, Any]) -> tuple[str, str, str]:
    return arm["model"], arm["method"], arm["controller"]


def env_platform(env: dict[str, Any]) -> tuple[bool, str | None]:
    """A machine as an exact baseline tells them apart: (ran on GPUs, torch CPU capability)."""
    return bool(env.get("gpu")), (env.get("cpu") or {}).get("capability")


def arm_platform(arm: dict[str, Any]) -> tuple[bool, str | None]:
    """The platform an arm was registered on (its provenance's environment)."""
    return env_platform((arm.get("provenance") or {}).get("environment") or {})


def for_platform(doc: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    """An exact baseline narrowed to one variant per arm: those registered on the run's
    platform (`env`: its environment.json) when there are any, else those of the first
    arm's platform (which `harness.gate.not_comparable` then reports). A statistical
    baseline is returned as it is."""
    if doc["mode"] != "exact" or not doc["arms"]:
        return doc
    have = {arm_platform(a) for a in doc["arms"]}
    want = env_platform(env) if env_platform(env) in have else arm_platform(doc["arms"][0])
    return {**doc, "arms": [a for a in doc["arms"] if arm_platform(a) == want]}


def build_arms(results: dict[str, Any], provenance: dict[str, Any],
               arms: Iterable[str] | None = None,
               traces: dict[str, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """Baseline arm entries from a run's results.json: every arm with finished cells (or the
    arms named `method/controller` / `model/method/controller`); with `traces` ({cell_id:
    records}, an exact baseline) each seed also holds its cell's figures. UserError if a
    named arm has no finished cell."""
    from harness.runcheck import cell_figures

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for c in results.get("cells") or []:
        key = (c["model"], c["method"], c["controller"])
        groups.setdefault(key, [])
        if c.get("status") == "finished":
            groups[key].append(c)
    wanted = list(arms or [])
    for w in wanted:
        if len(w.split("/")) not in (2, 3):
            raise UserError(f"--arm {w}: name an arm as method/controller or "
                            "model/method/controller")
        hits = [k for k in groups if _arm_matches(k, w)]
        if not hits:
            known = ", ".join(sorted({f"{m}/{c}" for _, m, c in groups}))
            raise UserError(f"--arm {w}: no such arm in the run (known: {known})")
        if not any(groups[k] for k in hits):
            raise UserError(f"--arm {w}: no finished cell in the run; finish it with "
                            "`harness bench` first")
    out = []
    for key, done in groups.items():
        if not done or (wanted and not any(_arm_matches(key, w) for w in wanted)):
            continue
        per_seed = []
        for c in sorted(done, key=lambda c: c["seed"]):
            p = {"seed": int(c["seed"]), "cell_id": c.get("cell_id"),
                 "metrics": {m: cell_metric(c, m) for m in METRIC_FIELDS}}
            if traces is not None:
                p["figures"] = cell_figures(c, traces[str(c["cell_id"])])
            per_seed.append(p)
        out.append({"model": key[0], "method": key[1], "controller": key[2],
                    "seeds": [p["seed"] for p in per_seed], "per_seed": per_seed,
                    "provenance": provenance})
    if not out:
        raise UserError("the run has no finished cell to register; run `harness bench` first")
    return out


def register(run_dir: Path, arms: Iterable[str] | None = None, root: Path | None = None,
             mode: str | None = None, reason: str | None = None
             ) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """Register a run's finished arms as the baseline of its spec: (path, document, the arm
    entries written). `mode`: statistical or exact (default: the registered file's, else
    statistical); `reason`: why (kept in the provenance). The traces of the finished cells
    are checked first (`harness.runcheck.finished_traces`). Keeps previously registered arms
    of the same spec_hash and mode."""
    from harness.compare import load_run_files
    from harness.runcheck import finished_traces

    if mode is not None and mode not in MODES:
        raise UserError(f"--mode {mode}: use one of {', '.join(MODES)}")
    results, resolved = load_run_files(run_dir)
    traces = finished_traces(run_dir, results)
    env_path = run_dir / "environment.json"
    env = (read_json_object(env_path, "the run's environment", "re-run `harness bench` on its "
                            "spec to rebuild it") if env_path.exists() else {})
    path = baseline_path(results["spec"], root)
    old = load_baseline_file(path) if path.exists() else None
    mode = mode or (old or {}).get("mode") or "statistical"
    if mode == "exact" and env.get("gpu"):
        raise UserError(f"{run_dir} ran with GPUs ({', '.join(map(str, env['gpu']))}): an exact "
                        "baseline is for CPU runs, which are bit-identical from run to run; "
                        "register it with --mode statistical, or re-run the spec on a CPU "
                        "machine")
    now = _now()
    provenance = {
        "registered_at": now, "reason": reason, "run_dir": str(run_dir.resolve()),
        "spec": results["spec"], "version": results["version"],
        "spec_hash": results["spec_hash"], "grid_hash": resolved.get("grid_hash"),
        "harness_version": results.get("harness_version") or env.get("harness_version"),
        "git_commit": env.get("git_commit"),
        "environment": {k: env.get(k) for k in ENV_KEYS if k in env},
    }
    new = build_arms(results, provenance, arms, traces if mode == "exact" else None)
    kept: list[dict[str, Any]] = []
    if old is not None and old["spec_hash"] == results["spec_hash"] and old["mode"] == mode:
        # an exact arm is replaced only by one of its own platform (module docstring)
        def variant(a: dict[str, Any]) -> tuple[Any, ...]:
            return _arm_key(a) + (arm_platform(a) if mode == "exact" else ())

        replaced = {variant(a) for a in new}
        kept = [a for a in old["arms"] if variant(a) not in replaced]
    doc = {"format": BASELINE_FORMAT, "spec": results["spec"], "version": results["version"],
           "spec_hash": results["spec_hash"], "mode": mode, "updated_at": now,
           "arms": kept + new}
    write_json(path, doc)
    return path, doc, new


def load_baseline_file(path: Path) -> dict[str, Any]:
    """Read and check a baseline file (`mode` filled in for format 1); UserError (one line)
    if it is malformed."""
    fix = (f"restore it (`git checkout -- {path}`), or delete it and register again with "
           "`harness baseline register RUN`")
    doc = read_json_object(path, "baseline", fix)
    if doc.get("format") not in READ_FORMATS:
        raise UserError(f"baseline {path} has format {doc.get('format')!r}, this harness reads "
                        f"{' and '.join(map(str, READ_FORMATS))}; {fix}")
    doc.setdefault("mode", "statistical")
    bad = ", ".join(k for k in ("spec", "version", "spec_hash", "arms") if k not in doc)
    if not bad and doc["mode"] not in MODES:
        bad = f"mode ({doc['mode']!r}; one of {', '.join(MODES)})"
    try:
        for a in [] if bad else doc["arms"]:
            bad = ", ".join(k for k in ("model", "method", "controller", "per_seed")
                            if k not in a)
            for p in [] if bad else a["per_seed"]:
                if not isinstance(p["seed"], int) or not isinstance(p["metrics"], dict):
                    bad = "per_seed"
                elif doc["mode"] == "exact" and not isinstance(p.get("figures"), dict):
                    bad = "per_seed figures (an exact baseline holds every cell's figures)"
            if bad:
                break
    except (KeyError, TypeError) as e:
        bad = f"per_seed ({e})"
    if bad:
        raise UserError(f"baseline {path} is malformed (missing or bad {bad}); {fix}")
    return doc


def load_baseline(spec_name: str, root: Path | None = None) -> tuple[Path, dict[str, Any] | None]:
    """(path, document or None when no baseline is registered for the spec). A baselines
    directory named by `root` (--baselines) or $HARNESS_BASELINES that does not exist or is
    not a directory is a UserError: a mistyped path must not read as "nothing registered"
    and let a gate pass."""
    path = baseline_path(spec_name, root)
    named = root is not None or bool(os.environ.get("HARNESS_BASELINES"))
    if named and not path.parent.is_dir():
        what = "is not a directory" if path.parent.exists() else "does not exist"
        raise UserError(f"baselines directory {path.parent} {what}; pass the directory that "
                        "holds SPEC.json files with --baselines (or HARNESS_BASELINES), or "
                        "leave both unset for benchmarks/baselines")
    return path, (load_baseline_file(path) if path.exists() else None)


def run_environment(run_dir: Path) -> dict[str, Any]:
    """A run's environment.json ({} when it has none): the platform `for_platform` picks an
    exact baseline's variant by."""
    from harness.rundir import read_json_object

    if not (run_dir / "environment.json").exists():
        return {}
    return read_json_object(run_dir / "environment.json", "the run's environment",
                            "re-run `harness bench` on its spec to rebuild it")


def stale_message(path: Path, doc: dict[str, Any], results: dict[str, Any]) -> str | None:
    """One line when the baseline was registered for another spec_hash than the run's."""
    if doc["spec_hash"] == results["spec_hash"]:
        return None
    return (f"registered baseline {path} is stale: registered for {doc['spec']}@{doc['version']} "
            f"spec_hash {str(doc['spec_hash'])[:12]}, the run is {results['spec']}@"
            f"{results['version']} spec_hash {str(results['spec_hash'])[:12]}; not used for "
            "gating (re-register with `harness baseline register RUN`)")


def baseline_results(doc: dict[str, Any]) -> dict[str, Any]:
    """A baseline as results.json-shaped data (finished cells with `end_of_chain` and
    `aggregates`), so comparisons read it like a run."""
    cells, seen = [], set()
    for a in doc["arms"]:
        if _arm_key(a) in seen:  # another platform's variant of an exact arm: the first counts
            continue
        seen.add(_arm_key(a))
        for p in a["per_seed"]:
            cell: dict[str, Any] = {"model": a["model"], "method": a["method"],
                                    "controller": a["controller"], "seed": int(p["seed"]),
                                    "cell_id": p.get("cell_id"), "status": "finished"}
            for metric, (section, key) in METRIC_FIELDS.items():
                cell.setdefault(section, {})[key] = p["metrics"].get(metric)
            cells.append(cell)
    return {"spec": doc["spec"], "version": doc["version"], "spec_hash": doc["spec_hash"],
            "cells": cells, "source": f"registered baseline ({doc.get('updated_at', '?')})"}
