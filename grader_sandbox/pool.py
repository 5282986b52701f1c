"""GraderPool: the library entry point. Workers are fresh interpreters, never forks of the caller.

The caller may be a training process holding a model on a GPU: forking it would copy its page
tables and CUDA state into every sandbox. The pool starts each worker with ``subprocess``
(exec of a clean ``python -I``), talks to it over its stdin/stdout pipes, and keeps up to two
requests in flight per worker so a worker never waits for the next one.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import deque
from typing import Any

from grader_sandbox.codec import FrameBuffer, FrameError, pack
from grader_sandbox.schema import GraderError, Verdict, resolve_limits, validate_request

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_IN_FLIGHT = 2
_START_TIMEOUT_S = 60.0
# A worker that has not answered this long after a sample's own limit is presumed wedged.
_WATCHDOG_GRACE_S = 30.0
INJECT_ENV = "GRADER_SANDBOX_INJECT_SETUP_FAILURES"  # worker.INJECT_ENV: passed on to workers


class _WorkerHandle:
    def __init__(self, index: int, scratch_parent: str, isolation: str | None) -> None:
        self.index = index
        self.scratch = tempfile.mkdtemp(prefix=f"w{index}-", dir=scratch_parent)
        os.chmod(self.scratch, 0o711)
        code = (
            "import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from grader_sandbox.worker import main; sys.exit(main(sys.argv[1:]))"
        )
        cmd = [sys.executable, "-I", "-c", code, _PKG_PARENT, "--index", str(index),
               "--scratch", self.scratch, "--parent-pid", str(os.getpid())]
        if isolation:
            cmd += ["--isolation", isolation]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        if os.environ.get(INJECT_ENV):  # fault injection for tests (worker.py)
            env[INJECT_ENV] = os.environ[INJECT_ENV]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/",
            close_fds=True, start_new_session=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd = self.proc.stdin.fileno()
        self.rfd = self.proc.stdout.fileno()
        self.buf = FrameBuffer(max_total=1 << 62)
        self.inflight: deque[tuple[int, float]] = deque()  # (batch position, watchdog deadline)
        self.info: dict[str, Any] = {}

    def wait_ready(self, deadline: float) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise GraderError(f"grader worker {self.index} did not start within "
                                  f"{_START_TIMEOUT_S:.0f}s; check the machine's load")
            sel = selectors.DefaultSelector()
            sel.register(self.rfd, selectors.EVENT_READ)
            ready = sel.select(left)
            sel.close()
            if not ready:
                continue
            data = os.read(self.rfd, 1 << 16)
            if not data:
                rc = self.proc.wait()
                raise GraderError(f"grader worker {self.index} exited at start (code {rc}); "
                                  "see its stderr above")
            frames = self.buf.feed(data)
            if frames:
                first = frames[0]
                if "error" in first:
                    raise GraderError(f"grader cannot start: {first['error']}")
                self.info = first.get("isolation", {})
                return

    def send(self, message: dict[str, Any]) -> None:
        data = memoryview(pack(message))
        while data:
            data = data[os.write(self.wfd, data):]

    def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdout.close()  # type: ignore[union-attr]
        with contextlib.suppress(OSError):
            os.rmdir(self.scratch)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.stop(timeout=5.0)


def _cleanup(handles: list[_WorkerHandle], scratch_parent: str) -> None:
    for h in handles:
        with contextlib.suppress(Exception):
            h.kill()
    shutil.rmtree(scratch_parent, ignore_errors=True)


class GraderPool:
    """A pool of sandboxed grading workers.

    ``grade(requests)`` returns one :class:`Verdict` per request, in order. Invalid requests
    raise :class:`GraderError` (naming the request id and field) before anything is graded.
    ``default_limits`` overrides the documented defaults (timeout_s, memory_mb, output_bytes);
    a request's own ``limits`` override both. ``isolation`` is "auto" (namespaces) or
    "container" (the container provides them); default from GRADER_SANDBOX_ISOLATION.
    """

    def __init__(
        self,
        workers: int = 2,
        default_limits: dict[str, Any] | None = None,
        isolation: str | None = None,
    ) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise GraderError(f"GraderPool(workers={workers!r}): need a positive integer")
        self.default_limits = resolve_limits("<default_limits>", default_limits or {})
        self._isolation = isolation or os.environ.get("GRADER_SANDBOX_ISOLATION") or None
        self._lock = threading.Lock()
        self._scratch_parent = tempfile.mkdtemp(prefix="grader-sandbox-")
        os.chmod(self._scratch_parent, 0o711)  # children may pass through, not list
        self._handles: list[_WorkerHandle] = []
        self._finalizer = weakref.finalize(self, _cleanup, self._handles, self._scratch_parent)
        self._closed = False
        try:
            for i in range(workers):
                self._handles.append(_WorkerHandle(i, self._scratch_parent, self._isolation))
            deadline = time.monotonic() + _START_TIMEOUT_S
            for h in self._handles:
                h.wait_ready(deadline)
        except BaseException:
            self._finalizer()
            raise

    # -- public ------------------------------------------------------------------------------

    @property
    def workers(self) -> int:
        return len(self._handles)

    @property
    def isolation(self) -> dict[str, Any]:
        """How the workers are isolated (mode, sandbox uid), as reported at start."""
        return dict(self._handles[0].info) if self._handles else {}

    @property
    def worker_pids(self) -> list[int]:
        """The worker processes' pids (a pid changes when a worker had to be replaced)."""
        return [h.proc.pid for h in self._handles]

    @property
    def sandbox_uids(self) -> list[int]:
        """Every uid a program child can run as (each worker's locked block but its first uid,
        the judge's; empty when children keep the invoking user's uid, in a user namespace)."""
        return [uid for h in self._handles if h.info.get("uid_base") is not None
                for uid in range(h.info["uid_base"] + 1,
                                 h.info["uid_base"] + h.info["uid_count"])]

    def health(self) -> dict[str, Any]:
        alive = sum(1 for h in self._handles if h.proc.poll() is None)
        return {"ok": not self._closed and alive == len(self._handles), "workers": alive,
                "isolation": self.isolation.get("mode")}

    def grade(self, requests: list[dict[str, Any]]) -> list[Verdict]:
        """Grade a batch; verdicts come back in the order of ``requests``."""
        if self._closed:
            raise GraderError("GraderPool is closed")
        if not isinstance(requests, list):
            raise GraderError("grade() takes a list of request dicts")
        batch = [validate_request(r, self.default_limits) for r in requests]
        if not batch:
            return []
        with self._lock:
            return self._run(batch)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            for h in self._handles:
                h.stop()
            self._finalizer()

    def __enter__(self) -> GraderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- dispatch ----------------------------------------------------------------------------

    def _run(self, batch: list[dict[str, Any]]) -> list[Verdict]:
        out: list[Verdict | None] = [None] * len(batch)
        todo = deque(range(len(batch)))
        sel = selectors.DefaultSelector()
        for h in self._handles:
            sel.register(h.rfd, selectors.EVENT_READ, h)
        done = 0
        try:
            while done < len(batch):
                for h in self._handles:
                    while todo and len(h.inflight) < _IN_FLIGHT:
                        pos = todo.popleft()
                        budget = batch[pos]["limits"]["timeout_s"] + _WATCHDOG_GRACE_S
                        start = h.inflight[-1][1] if h.inflight else time.monotonic()
                        h.inflight.append((pos, max(start, time.monotonic()) + budget))
                        try:
                            h.send(batch[pos])
                        except OSError:
                            break  # the worker died; the read side notices
                nearest = min((h.inflight[0][1] for h in self._handles if h.inflight),
                              default=time.monotonic() + 1.0)
                events = sel.select(timeout=max(0.0, nearest - time.monotonic()))
                for key, _ in events:
                    h = key.data
                    data = os.read(h.rfd, 1 << 16)
                    frames: list[Any] = []
                    if data:
                        try:
                            frames = h.buf.feed(data)
                        except FrameError:
                            data = b""
                    for frame in frames:
                        if not h.inflight:
                            break
                        pos, _ = h.inflight.popleft()
                        out[pos] = Verdict.from_dict(frame)
                        out[pos].id = batch[pos]["id"]
                        done += 1
                    if not data:
                        done += self._replace(sel, h, batch, out, "WorkerDied")
                now = time.monotonic()
                for h in list(self._handles):
                    if h.inflight and h.inflight[0][1] < now:
                        done += self._replace(sel, h, batch, out, "WorkerUnresponsive")
        finally:
            sel.close()
        return [v for v in out if v is not None]

    def _replace(self, sel: selectors.BaseSelector, h: _WorkerHandle, batch: list[dict[str, Any]],
                 out: list[Verdict | None], why: str) -> int:
        """Fail the dead worker's in-flight samples, start a replacement; return how many."""
        failed = 0
        first = True
        for pos, _ in h.inflight:
            # Only the sample being graded is to blame; the queued one is re-queued below.
            if first:
                out[pos] = Verdict(id=batch[pos]["id"], passed=False, status="crashed",
                                   error_type=why, tests_total=0)
                failed += 1
                first = False
        requeue = [pos for pos, _ in list(h.inflight)[1:]]
        h.inflight.clear()
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(h.rfd)
        h.kill()
        new = _WorkerHandle(h.index, self._scratch_parent, self._isolation)
        new.wait_ready(time.monotonic() + _START_TIMEOUT_S)
        self._handles[self._handles.index(h)] = new
        sel.register(new.rfd, selectors.EVENT_READ, new)
        for pos in requeue:
            budget = batch[pos]["limits"]["timeout_s"] + _WATCHDOG_GRACE_S
            new.inflight.append((pos, time.monotonic() + budget))
            new.send(batch[pos])
        return failed
