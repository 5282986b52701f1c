"""Pool lifecycle: workers are fresh processes, replaced when they die, gone after close."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from grader_sandbox import GraderError, GraderPool

OK = {"id": "ok", "style": "call", "code": "def f(x):\n    return x\n", "entry_point": "f",
      "tests": [{"args": [1], "expected": 1}]}


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().replace(b"\0", b" ").decode()


def test_workers_are_fresh_interpreters_not_forks_of_the_caller() -> None:
    with GraderPool(workers=1) as pool:
        (pid,) = pool.worker_pids
        assert "grader_sandbox.worker" in _cmdline(pid)
        assert " -I " in _cmdline(pid)
        assert pool.isolation["mode"] in ("namespaces", "userns", "container")


def test_a_killed_worker_is_replaced_and_grading_goes_on() -> None:
    with GraderPool(workers=1) as pool:
        (pid,) = pool.worker_pids
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        verdicts = pool.grade([dict(OK, id=f"r{i}") for i in range(3)])
        assert pool.worker_pids != [pid]
        assert all(v.status in ("passed", "crashed") for v in verdicts)
        assert pool.grade([OK])[0].passed


def test_close_ends_the_workers_and_later_use_fails() -> None:
    pool = GraderPool(workers=2)
    pids = pool.worker_pids
    pool.close()
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or ") Z " in stat.read_text()
    with pytest.raises(GraderError, match="closed"):
        pool.grade([OK])


def test_unknown_isolation_mode_is_a_clear_start_error() -> None:
    with pytest.raises(GraderError, match="isolation mode"):
        GraderPool(workers=1, isolation="bogus")
