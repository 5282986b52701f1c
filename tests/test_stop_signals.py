"""`procutil.stop_signals_interrupt`: SIGTERM and SIGHUP become an interrupt the clean-up of
Ctrl-C handles, a signal ignored (as under nohup) stays ignored, a second one ends the
process at once, and the handlers are put back after the block."""

from __future__ import annotations

import subprocess
import sys

CODE = r"""
import os, signal, time
from harness.procutil import Terminated, interrupt_signal, stop_signals_interrupt
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
before = signal.getsignal(signal.SIGTERM)
with stop_signals_interrupt():
    os.kill(os.getpid(), signal.SIGHUP)  # ignored: nothing happens
    time.sleep(0.1)
    print("after SIGHUP", flush=True)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print("not interrupted", flush=True)
    except KeyboardInterrupt as e:
        assert isinstance(e, Terminated) and interrupt_signal(e) == signal.SIGTERM
        # a library that re-raises a plain KeyboardInterrupt still tells the signal
        assert interrupt_signal(KeyboardInterrupt()) == signal.SIGTERM
        print("terminated", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
print("restored", signal.getsignal(signal.SIGTERM) == before,
      signal.getsignal(signal.SIGHUP) == signal.SIG_IGN, flush=True)
signal.signal(signal.SIGHUP, signal.SIG_DFL)
with stop_signals_interrupt():  # a closed terminal: two SIGHUPs, the second ignored
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(5)
    except KeyboardInterrupt as e:
        assert interrupt_signal(e) == signal.SIGHUP
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.1)
        print("second SIGHUP ignored", flush=True)
assert interrupt_signal(KeyboardInterrupt()) == signal.SIGINT  # reset after the block
with stop_signals_interrupt():
    assert interrupt_signal(KeyboardInterrupt()) == signal.SIGINT  # Ctrl-C
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    except KeyboardInterrupt:
        os.kill(os.getpid(), signal.SIGTERM)  # the second one: the default action
        time.sleep(5)
print("still alive", flush=True)
"""


def test_stop_signals_interrupt() -> None:
    r = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout.splitlines() == ["after SIGHUP", "terminated True", "restored True True",
                                     "second SIGHUP ignored"], r.stdout + r.stderr
    assert r.returncode == -15, r.stderr  # ended by the second SIGTERM


def test_the_stop_line_names_the_signal_and_the_stage() -> None:
    import signal
    from pathlib import Path

    from harness.bench import Interrupted

    e = Interrupted(Path("r"), {"c": 1}, 3, signal.SIGTERM)
    assert e.exit_code == 143
    assert str(e) == "stopped by SIGTERM: cell c in campaign 2 of 3; r keeps every finished campaign"
    done = Interrupted.with_resume(Interrupted(Path("r"), {}, 3, signal.SIGHUP, cells_done=True),
                                   "harness bench s --out r")
    assert done.exit_code == 129
    assert str(done) == ("stopped by SIGHUP: after every cell ran, while writing the results; r "
                         "keeps every finished campaign; resume with: harness bench s --out r")
    assert Interrupted(None, {}, 3).exit_code == 130
    assert str(Interrupted(None, {}, 3)) == "interrupted before any cell started"
