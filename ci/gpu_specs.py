#!/usr/bin/env python3
"""Print the specs the nightly GPU workflow runs, as a JSON list (a job matrix).

    python3 ci/gpu_specs.py [NAME ...]

Without names: every registered spec (`benchmarks/*.yaml`, or $HARNESS_BENCHMARKS, the same
set `harness list` shows) whose name does not start with `tiny` (the `tiny-*` specs are the
CPU ones). With names (a manual dispatch): exactly those, each of which must be registered;
naming a `tiny-*` spec is allowed, e.g. `tiny-smoke` to check a runner's wiring in minutes.

Standard library only, so it runs on a runner before anything is installed; a test checks
that it lists what `harness.spec.registered_specs` does.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

CPU_PREFIX = "tiny"


def benchmarks_dir() -> Path:
    env = os.environ.get("HARNESS_BENCHMARKS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "benchmarks"


def registered() -> list[str]:
    d = benchmarks_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def gpu_specs(names: list[str]) -> list[str]:
    known = registered()
    if not names:
        return [n for n in known if not n.startswith(CPU_PREFIX)]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"error: not a registered spec: {', '.join(unknown)} "
                         f"(registered: {', '.join(known)})")
    return list(dict.fromkeys(names))


def main(argv: list[str]) -> int:
    # A workflow_dispatch input arrives as one string: split it on spaces and commas.
    names = [n for arg in argv for n in arg.replace(",", " ").split()]
    specs = gpu_specs(names)
    if not specs:
        print(f"error: no GPU spec registered in {benchmarks_dir()}", file=sys.stderr)
        return 2
    print(json.dumps(specs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
