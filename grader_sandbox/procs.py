"""The worker's view of its sandboxed children: a process handle (pidfd, status, CPU time,
kill), a poll(2) loop over their pipes, and the state of one sample being graded."""

from __future__ import annotations

import contextlib
import os
import select
import signal
from typing import Any

from grader_sandbox.isolation import describe_signal


class Key:
    __slots__ = ("data", "fd")

    def __init__(self, fd: int, data: str) -> None:
        self.fd, self.data = fd, data


class Poller:
    """The part of selectors' interface used here, on one poll(2) object: cheaper per sample
    than creating, filling and closing an epoll instance."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._keys: dict[int, Key] = {}

    def register(self, fd: Any, _events: int, data: str) -> None:
        fd = fd if isinstance(fd, int) else fd.fileno()
        self._poll.register(fd, select.POLLIN)
        self._keys[fd] = Key(fd, data)

    def unregister(self, fd: int) -> None:
        if self._keys.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def select(self, timeout: float) -> list[tuple[Key, int]]:
        events = self._poll.poll(max(0, int(timeout * 1000 + 0.999)))
        return [(self._keys[fd], ev) for fd, ev in events if fd in self._keys]

    def close(self) -> None:
        for fd in list(self._keys):
            self.unregister(fd)


class Proc:
    """A sandboxed child as the worker sees it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: int | None = None
        self.cpu = 0.0
        self.faults = 0
        self.killed = False
        try:
            self.pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:
            self.pidfd = None

    def alive(self) -> bool:
        if self.status is not None or self.pidfd is None:
            return False
        r, _, _ = select.select([self.pidfd], [], [], 0)
        return not r

    def kill(self) -> None:
        if self.alive():
            self.killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def reap(self, block: bool = True) -> bool:
        """Collect the exit status of this child of ours; False if it is still running."""
        if self.status is not None:
            return True
        try:
            pid, status, usage = os.wait4(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return False
        self.status, self.cpu, self.faults = status, usage.ru_utime + usage.ru_stime, usage.ru_minflt
        return True

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def signal_name(self) -> str | None:
        if self.status is not None and os.WIFSIGNALED(self.status):
            return describe_signal(os.WTERMSIG(self.status))
        return None


class Run:
    """The state of one sample being graded."""

    def __init__(self, req: dict[str, Any]) -> None:
        self.req = req
        self.opened: list[int] = []
        self.prog: Proc | None = None
        self.judge: Any = None  # the worker's judge, when assert style
        self.res_r = self.con_r = -1
        self.results: dict[int, dict[str, Any]] = {}
        self.load_error: str | None = None
        self.judge_result: Any = None
        self.judge_broken = False
        self.timed_out = self.output_limit = self.protocol = self.deferred = False
        self.console = 0

    def pipe(self) -> tuple[int, int]:
        r, w = os.pipe2(os.O_CLOEXEC)
        self.opened.extend((r, w))
        return r, w

    def close(self, *fds: int) -> None:
        for fd in fds:
            os.close(fd)
            self.opened.remove(fd)

    def close_fds(self) -> None:
        for fd in self.opened:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.opened.clear()

    def complete(self) -> bool:
        if self.req["style"] == "assert":
            return self.judge_result is not None
        return self.load_error is not None or len(self.results) == len(self.req["tests"])
