"""An UNSANDBOXED in-process check of a completion, for tests of task sources and quick
calibration of the tiny policy only. Runs grader code in this process with a wall-clock
alarm; never use it on untrusted model output in a benchmark run (the runner grades with
`grader_sandbox`)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from harness.tasks.base import Task


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals only work on the main thread; no limit elsewhere
        return

    def fire(*_: Any) -> None:
        raise _Timeout

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def passes(task: Task, completion: str, timeout_s: float = 1.0) -> bool:
    """True when `task.code_prefix + completion` passes every test of `task` (call, stdio
    or assert style), judged in-process."""
    code = task.code_prefix + completion
    try:
        with _alarm(timeout_s):
            compiled = compile(code, f"<{task.task_id}>", "exec")
            if task.style == "assert":
                exec(compile(code + "\n" + (task.test_code or ""), "<t>", "exec"), {})
                return True
            if task.style == "call":
                ns: dict[str, Any] = {}
                exec(compiled, ns)
                fn = ns[task.entry_point or ""]
                return all(fn(*t["args"]) == t["expected"] for t in task.tests)
            for t in task.tests:  # stdio
                lines = iter(t["input"].splitlines())
                out: list[str] = []

                def fake_print(*a: Any, sep: str = " ", end: str = "\n", **_: Any) -> None:
                    out.append(sep.join(map(str, a)) + end)  # noqa: B023

                exec(compiled, {"input": lambda *_: next(lines), "print": fake_print})  # noqa: B023
                if "".join(out).strip() != t["output"].strip():
                    return False
            return True
    except (Exception, _Timeout, SystemExit):
        return False
