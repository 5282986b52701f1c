"""What runs inside a confined program child: the program runner (the judge is `judge.py`).

Everything here executes after the seccomp filter is loaded. The *program* child holds the
program and the test inputs, never the expected values: it sends raw results (plain data) and the
worker compares. For the ``assert`` style the test code runs in a second confined child, the
*judge* (`grader_sandbox.judge`), which never executes a byte of the program: it calls the
program's functions through a pipe (arguments and return values cross as plain data), so nothing
the program does to its own interpreter (patching builtins, the test function, ``__eq__``,
exiting early) reaches the check.

Descriptor layout (arranged before confinement):
  program: 0 stdin, 1 stdout, 2 stderr, 3 results to the worker, 4 calls in, 5 replies out
  judge:   0-2 /dev/null, 3 its control socket to the worker; per job 4 replies in,
           5 calls out
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import sys
import threading
import time
import types
from typing import Any, NoReturn

from grader_sandbox.codec import (
    FrameReader,
    NotPlainData,
    from_plain,
    pack,
    to_plain,
    write_frame,
)

RESULT_FD = 3
IN_FD = 4
OUT_FD = 5
_MAX_NAME = 100


def _exc_name(exc: BaseException) -> str:
    name = type(exc).__name__
    return name[:_MAX_NAME] if isinstance(name, str) else "Exception"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _send(msg: dict[str, Any]) -> None:
    write_frame(RESULT_FD, msg)


def _compile(code: str) -> types.CodeType:
    return compile(code, "<solution>", "exec", dont_inherit=True)


def _join_program_threads(main: threading.Thread) -> None:
    for th in threading.enumerate():
        if th is not main and not th.daemon:
            th.join()


# ---------------------------------------------------------------------------------------------
# program child


def run_program(spec: dict[str, Any]) -> NoReturn:
    style = spec["style"]
    try:
        if style == "call":
            _program_call(spec)
        elif style == "stdio":
            _program_stdio(spec)
        else:
            _program_assert(spec)
    finally:
        os._exit(0)


def _fresh_namespace(name: str) -> dict[str, Any]:
    return {"__name__": name, "__builtins__": builtins, "__file__": "solution.py"}


def _program_call(spec: dict[str, Any]) -> None:
    ns = _fresh_namespace("solution")
    try:
        exec(_compile(spec["code"]), ns)
        fn = ns[spec["entry_point"]]
    except BaseException as exc:
        _send({"load_error": _exc_name(exc)})
        return
    limit = int(spec["limits"]["output_bytes"])
    # Results go out together unless the tests are slow: one wake-up of the worker instead of
    # one per test, while a sample that times out still reports the tests it finished.
    pending: list[bytes] = []
    last = time.monotonic()
    for i, test in enumerate(spec["tests"]):
        try:
            args = from_plain(test["args"])
            kwargs = from_plain(test["kwargs"])
            frame = pack({"i": i, "value": to_plain(fn(*args, **kwargs))})
        except NotPlainData:
            frame = pack({"i": i, "error": "NotPlainData"})
        except BaseException as exc:
            frame = pack({"i": i, "error": _exc_name(exc)})
        if len(frame) > limit:
            frame = pack({"i": i, "error": "OutputLimit"})
        pending.append(frame)
        now = time.monotonic()
        if now - last > 0.02:
            _write_all(RESULT_FD, b"".join(pending))
            pending.clear()
            last = now
    if pending:
        _write_all(RESULT_FD, b"".join(pending))


def _program_stdio(spec: dict[str, Any]) -> None:
    try:
        code = _compile(spec["code"])
    except BaseException as exc:
        _send({"load_error": _exc_name(exc)})
        return
    limit = int(spec["output_bytes"])
    main = threading.current_thread()
    for i, text in enumerate(spec["inputs"]):
        fd_in = os.memfd_create(f"stdin{i}")
        _write_all(fd_in, text.encode("utf-8", "surrogatepass"))
        os.lseek(fd_in, 0, os.SEEK_SET)
        os.dup2(fd_in, 0)
        os.close(fd_in)
        fd_out = os.memfd_create(f"stdout{i}")
        os.dup2(fd_out, 1)
        sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
        out = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = out
        error = None
        try:
            exec(code, _fresh_namespace("__main__"))
            _join_program_threads(main)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                error = "SystemExit"
        except BaseException as exc:
            error = _exc_name(exc)
        for stream in (out, sys.stdout):
            with contextlib.suppress(BaseException):
                stream.flush()
        data = os.pread(fd_out, limit, 0)
        os.close(fd_out)
        msg: dict[str, Any] = {"i": i, "stdout": data.decode("utf-8", "replace"),
                               "truncated": len(data) >= limit}
        if error is not None:
            msg["error"] = error
        _send(msg)


def _exports(ns: dict[str, Any]) -> dict[str, Any]:
    """The program's top-level names the test code may use, as plain descriptions."""
    out: dict[str, Any] = {}
    for name, obj in list(ns.items()):
        if not isinstance(name, str) or name.startswith("__") or hasattr(builtins, name):
            continue
        if isinstance(obj, types.ModuleType):
            mod_name = getattr(obj, "__name__", None)
            if isinstance(mod_name, str):
                out[name] = {"module": mod_name}
        elif callable(obj):
            out[name] = {"callable": True}
        else:
            with contextlib.suppress(NotPlainData, RecursionError):
                out[name] = {"value": to_plain(obj)}
    return out


def _program_assert(spec: dict[str, Any]) -> None:
    ns = _fresh_namespace("solution")
    try:
        exec(_compile(spec["code"]), ns)
        write_frame(OUT_FD, {"exports": _exports(ns)})
    except BaseException as exc:
        write_frame(OUT_FD, {"load_error": _exc_name(exc)})
        return
    calls = FrameReader(IN_FD, max_bytes=64 << 20)
    while True:
        req = calls.read()
        if req is None:
            return
        if "batch" in req:
            write_frame(OUT_FD, {"batch": [_serve_call(ns, r) for r in req["batch"]]})
        else:
            write_frame(OUT_FD, _serve_call(ns, req))


def _serve_call(ns: dict[str, Any], req: dict[str, Any]) -> dict[str, Any]:
    try:
        fn = ns[req["call"]]
        args = from_plain(req["args"])
        kwargs = from_plain(req["kwargs"])
        return {"value": to_plain(fn(*args, **kwargs))}
    except NotPlainData as exc:
        return {"error": "NotPlainData", "msg": str(exc)}
    except BaseException as exc:
        try:
            msg = str(exc)[:500]
        except BaseException:
            msg = ""
        return {"error": _exc_name(exc), "msg": msg if isinstance(msg, str) else ""}


def quiet_stdio() -> None:
    """Point the judge's Python-level streams at its /dev/null descriptors."""
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False))
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False))
