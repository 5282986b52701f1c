"""Hostile and reward-hacking programs: each gets its intended verdict, the workers survive,
nothing is left running and no file outside the sample's directory changes.

Every program in fixtures/corpus/ starts with ``# grader: {json}``: the expected verdict
(``expect``) and any request fields that differ from the default (a ``call`` of ``f(2) == 4``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grader_sandbox import GraderPool, Verdict

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
CANARY = Path("/tmp/grader-sandbox-canary")
LIMITS = {"timeout_s": 1.0, "memory_mb": 256, "output_bytes": 1 << 16}
BENIGN = {"style": "call", "code": "def f(x):\n    return x * 2\n", "entry_point": "f",
          "tests": [{"args": [21], "expected": 42}]}


def load_corpus() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    out = []
    for path in sorted(CORPUS.glob("*.py")):
        text = path.read_text()
        first, _, _ = text.partition("\n")
        assert first.startswith("# grader: "), f"{path.name} lacks its '# grader:' header"
        header = json.loads(first[len("# grader: "):])
        expect = header.pop("expect")
        req = {"id": path.stem, "style": "call", "entry_point": "f",
               "tests": [{"args": [2], "expected": 4}], "limits": dict(LIMITS), "code": text}
        req.update(header)
        out.append((path.stem, req, expect))
    return out


ITEMS = load_corpus()


def _sandbox_processes(uids: set[int]) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) in uids:
                found.append(int(entry))
    return found


def _snapshot() -> dict[str, Any]:
    return {
        "canary": sorted((p.name, p.read_bytes()) for p in CANARY.iterdir()),
        "fixtures": sorted(p.name for p in CORPUS.iterdir()),
        "pwned": os.path.exists("/tmp/pwned"),
    }


@pytest.fixture(scope="module")
def graded(pool: GraderPool) -> Iterator[dict[str, Any]]:
    CANARY.mkdir(exist_ok=True)
    (CANARY / "canary.txt").write_text("original")
    before = _snapshot()
    pids = pool.worker_pids
    batch = []
    for name, req, _ in ITEMS:
        batch.append(req)
        batch.append(dict(BENIGN, id=f"benign-after-{name}"))
    verdicts = pool.grade(batch)
    uids = set(pool.sandbox_uids)
    deadline = time.monotonic() + 5.0
    leftovers = _sandbox_processes(uids)
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.05)
        leftovers = _sandbox_processes(uids)
    yield {"verdicts": {v.id: v for v in verdicts}, "before": before, "after": _snapshot(),
           "pids_before": pids, "pids_after": pool.worker_pids, "leftovers": leftovers}
    shutil.rmtree(CANARY, ignore_errors=True)


def test_corpus_is_large_enough() -> None:
    assert len(ITEMS) >= 40


@pytest.mark.parametrize(("name", "req", "expect"), ITEMS, ids=[i[0] for i in ITEMS])
def test_hostile_program_gets_intended_verdict(
    graded: dict[str, Any], name: str, req: dict[str, Any], expect: dict[str, Any]
) -> None:
    v: Verdict = graded["verdicts"][name]
    assert v.status == expect["status"], v.to_dict()
    assert v.passed is (expect["status"] == "passed")
    if "error_type" in expect:
        assert v.error_type == expect["error_type"], v.to_dict()
    if "max_wall_s" in expect:
        assert v.wall_s <= expect["max_wall_s"], v.to_dict()
    if v.status == "timeout":
        assert v.wall_s < req["limits"]["timeout_s"] + 0.5


def test_worker_serves_the_next_sample_after_every_hostile_one(graded: dict[str, Any]) -> None:
    benign = {k: v for k, v in graded["verdicts"].items() if k.startswith("benign-after-")}
    assert len(benign) == len(ITEMS)
    assert all(v.passed for v in benign.values()), [v.id for v in benign.values() if not v.passed]
    assert graded["pids_after"] == graded["pids_before"], "a worker died and was replaced"


def test_no_sandboxed_process_is_left_behind(graded: dict[str, Any]) -> None:
    assert graded["leftovers"] == []


def test_no_file_outside_the_sample_directory_changes(graded: dict[str, Any]) -> None:
    assert graded["after"] == graded["before"]
