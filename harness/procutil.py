"""Child processes that do not outlive the process that started them, and a long command
that stops on SIGTERM or SIGHUP as cleanly as on Ctrl-C."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux prctl; a no-op
    where libc.so.6 cannot be loaded). Meant as `subprocess.Popen(..., preexec_fn=die_with_parent)`: it
    runs in the child before exec."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def session_members(sid: int) -> list[int]:
    """The processes of session `sid` (Linux /proc): a server started with
    `start_new_session=True` and everything it started, whatever process groups they made."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # after the name: state, ppid, pgrp, session
                out.append(int(entry.name))
    return out


def stop_session(sid: int, grace_s: float = 10.0) -> None:
    """SIGTERM every process of session `sid`, then SIGKILL what is left after `grace_s`."""
    deadline = time.monotonic() + grace_s
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_members(sid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        while session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not session_members(sid):
            return
        deadline = time.monotonic() + 5.0


# stopped the way Ctrl-C stops a command: by a batch system's time limit, `kill`, a closed
# terminal
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread as an interrupt, so that what Ctrl-C runs
    on its way out (cells stopped, containers removed, MLflow runs ended KILLED) runs too."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


# the stop signal `stop_signals_interrupt` received (a library may turn the `Terminated` it
# raised into a plain KeyboardInterrupt: Ray's core worker does, inside ray.wait and ray.get)
_received: int | None = None


def interrupt_signal(e: KeyboardInterrupt) -> signal.Signals:
    """The signal behind an interrupt: the `Terminated` one, or the stop signal received
    within `stop_signals_interrupt`, else SIGINT (Ctrl-C)."""
    if isinstance(e, Terminated):
        return signal.Signals(e.signum)
    return signal.Signals(_received) if _received is not None else signal.SIGINT


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Terminated` in the main thread (a signal
    this process ignores, as under `nohup`, stays ignored). The first one does; then a second
    SIGTERM ends the process at once, as a batch system's escalation expects, and further
    SIGHUPs are ignored (a closed terminal sends two: the shell's and the kernel's, a fraction
    of a millisecond apart). Elsewhere than in the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    global _received
    _received = None

    def stop(signum: int, frame: FrameType | None) -> None:
        global _received
        _received = signum
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        raise Terminated(signum)

    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        _received = None
