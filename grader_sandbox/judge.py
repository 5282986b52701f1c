"""The judge: the confined child that runs a sample's assert-style tests.

It never executes a byte of the program: the tests call the program's functions through a
pipe to the program child (`child.py`; arguments and return values cross as plain data), so
nothing the program does to its own interpreter (patching builtins, the test function,
``__eq__``, exiting early) reaches the check. One persistent judge serves many samples
(`run_judge_server`); descriptors: 0-2 /dev/null, 3 its control socket to the worker; per job
4 replies in, 5 calls out.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import sys
import types
from typing import Any, NoReturn

from grader_sandbox.child import _MAX_NAME, IN_FD, OUT_FD, _exc_name
from grader_sandbox.codec import (
    FrameReader,
    NotPlainData,
    from_plain,
    pack,
    to_plain,
    write_frame,
)

# Exceptions the judge may re-raise by name when the program raised them.
_REMOTE_OK = {
    name
    for name, obj in vars(builtins).items()
    if isinstance(obj, type)
    and issubclass(obj, Exception)
    and not issubclass(obj, (StopIteration, StopAsyncIteration))
}


class ProtocolViolation(Exception):
    """The program side of the call pipe sent something that is not a valid reply."""


class EarlyExit(Exception):
    """The program's process ended before the tests were done."""


class RemoteError(Exception):
    """The candidate raised an exception that is not a builtin exception type."""


PREFETCH = True  # batch the tests' literal calls into one round trip (see _prefetch)
_replies: FrameReader | None = None  # the current job's reader of the program's replies
# Replies fetched ahead for the calls the tests are about to make, in order (see _prefetch).
_prefetched: list[tuple[str, tuple[list[Any], dict[str, Any]], Any]] = []


def _same(a: Any, b: Any) -> bool:
    """Equal and of exactly the same types all the way down (1 is not 1.0 nor True)."""
    if type(a) is not type(b):
        return False
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if type(a) is float:
        return a == b or (a != a and b != b)
    return bool(a == b)


def _read_reply() -> Any:
    assert _replies is not None
    try:
        reply = _replies.read()
    except (ValueError, RecursionError) as exc:
        raise ProtocolViolation(str(exc)) from None
    if reply is None:
        raise EarlyExit("the program exited during a call")
    if not isinstance(reply, dict):
        raise ProtocolViolation("reply is not an object")
    return reply


def _unpack_reply(reply: Any) -> Any:
    if not isinstance(reply, dict):
        raise ProtocolViolation("reply is not an object")
    if "value" in reply:
        try:
            return from_plain(reply["value"])
        except (ValueError, RecursionError) as exc:
            raise ProtocolViolation(str(exc)) from None
    error = reply.get("error")
    msg = reply.get("msg") if isinstance(reply.get("msg"), str) else ""
    if error == "NotPlainData":
        raise NotPlainData(msg)
    if error in _REMOTE_OK:
        raise getattr(builtins, error)(msg)
    if isinstance(error, str):
        raise RemoteError(f"{error[:_MAX_NAME]}: {msg}")
    raise ProtocolViolation("reply has neither value nor error")


def _remote_call(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if _prefetched:
        _, (want_args, want_kwargs), reply = _prefetched[0]
        if _same(list(args), want_args) and _same(kwargs, want_kwargs):
            del _prefetched[0]
            return _unpack_reply(reply)
        _prefetched.clear()  # the tests went another way: back to one call at a time
    write_frame(OUT_FD, {"call": name, "args": to_plain(list(args)), "kwargs": to_plain(kwargs)})
    return _unpack_reply(_read_reply())


def _literal_calls(stmts: list[ast.stmt], callee: str, others: set[str]) -> list[Any]:
    """The calls ``callee(<literals>)`` that the straight-line statements ``stmts`` make, in
    evaluation order, up to the first statement whose calls cannot be known in advance (a
    loop, a branch, a non-literal argument, a call to another of the program's functions)."""
    out: list[Any] = []

    def visit(node: ast.AST) -> bool:
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
                             ast.GeneratorExp, ast.IfExp, ast.BoolOp, ast.NamedExpr,
                             ast.Await, ast.Yield, ast.YieldFrom)):
            # Evaluated conditionally or repeatedly: its calls cannot be listed in advance.
            return not _mentions(node, callee, others)
        if isinstance(node, ast.Assert):
            # The message is evaluated only when the assert fails.
            return visit(node.test) and (node.msg is None
                                         or not _mentions(node.msg, callee, others))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in others:
                return False
            if node.func.id == callee:
                try:
                    args = [ast.literal_eval(a) for a in node.args]
                    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
                except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                    return False
                if any(k is None for k in kwargs) or any(
                        isinstance(a, ast.Starred) for a in node.args):
                    return False
                out.append((callee, args, kwargs))
                return True
        return all(visit(child) for child in ast.iter_child_nodes(node))

    for stmt in stmts:
        if not isinstance(stmt, (ast.Assert, ast.Expr, ast.Assign, ast.AnnAssign,
                                 ast.AugAssign, ast.Pass, ast.Import, ast.ImportFrom)):
            break
        if not visit(stmt):
            break
    return out


def _mentions(node: ast.AST, callee: str, others: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and (n.id == callee or n.id in others)
               for n in ast.walk(node))


_Plan = tuple[bytes, list[tuple[list[Any], dict[str, Any]]]] | None
_PLANS: dict[tuple[str, str, str, frozenset[str]], _Plan] = {}


def _plan(test_code: str, stmts: list[ast.stmt], callee: str, entry_point: str,
          others: set[str]) -> _Plan:
    """The batch request frame and the call keys for the tests' literal calls (cached)."""
    cache_key = (test_code, callee, entry_point, frozenset(others))
    if cache_key in _PLANS:
        return _PLANS[cache_key]
    calls = [(entry_point, a, k) for _, a, k in _literal_calls(stmts, callee, others)]
    plan: _Plan = None
    if len(calls) >= 2:
        try:
            batch = [{"call": n, "args": to_plain(a), "kwargs": to_plain(k)}
                     for n, a, k in calls]
            plan = (pack({"batch": batch}), [(list(a), dict(k)) for _, a, k in calls])
        except (NotPlainData, RecursionError, TypeError, ValueError):
            plan = None
    if len(_PLANS) >= 512:
        _PLANS.clear()
    _PLANS[cache_key] = plan
    return plan


def _prefetch(plan: _Plan) -> None:
    """Ask for the results of the planned calls in one round trip instead of one per call.

    The program runs them in the same order the tests would; the judge hands each result
    out only when the tests make exactly that call next, and drops the rest at the first
    difference. A test that fails early therefore also ran its later literal calls; for the
    binary verdict this changes nothing (a hang or crash there is still "not passed")."""
    _prefetched.clear()
    if plan is None or not PREFETCH:
        return
    frame, keys = plan
    view = memoryview(frame)
    while view:
        view = view[os.write(OUT_FD, view) :]
    replies = _read_reply().get("batch")
    if not isinstance(replies, list) or len(replies) != len(keys):
        raise ProtocolViolation("bad batch reply")
    _prefetched.extend(("", key, r) for key, r in zip(keys, replies, strict=True))


class RemoteFunction:
    """Stands for one of the program's functions in the judge; calls cross as plain data."""

    def __init__(self, name: str) -> None:
        self.__name__ = name
        self.__qualname__ = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _remote_call(self.__name__, args, kwargs)

    def __repr__(self) -> str:
        return f"<function {self.__name__}>"


_STDLIB = frozenset(sys.stdlib_module_names) - {"grader_sandbox"}


def _judge_namespace(exports: Any) -> dict[str, Any]:
    ns: dict[str, Any] = {"__name__": "__test__", "__builtins__": builtins}
    if not isinstance(exports, dict):
        raise ProtocolViolation("exports is not an object")
    for name, info in exports.items():
        if not isinstance(name, str) or not name.isidentifier() or not isinstance(info, dict):
            raise ProtocolViolation("bad export")
        if hasattr(builtins, name) or name.startswith("__"):
            # decided here, not by the program's process, whose list it may have rewritten:
            # the tests' builtins (abs, len, set, sorted, ...) stay the judge's own
            continue
        if info.get("callable") is True:
            ns[name] = RemoteFunction(name)
        elif "value" in info:
            try:
                ns[name] = from_plain(info["value"])
            except (ValueError, RecursionError):
                raise ProtocolViolation("bad exported value") from None
        elif isinstance(info.get("module"), str):
            # Only a standard-library module the judge has already loaded: nothing is
            # imported on a program's behalf, so no export runs code in the judge or leaves
            # a module behind for later samples (the tests import what else they need).
            module = sys.modules.get(info["module"])
            if module is not None and info["module"].partition(".")[0] in _STDLIB:
                ns[name] = module
    return ns


def run_judge_server(ctl_fd: int) -> NoReturn:
    """The judge's loop: one job per message on its control socket, for many samples.

    A job message carries the entry point, with three descriptors: a memfd holding the test
    code (any size), the program's reply pipe (read end) and its call pipe (write end). The
    pipes become descriptors 4 and 5 for the job and are closed after it, so the program child
    sees EOF when the tests are done. The judge never runs program code and imports nothing on
    a program's behalf (`_judge_namespace`), so no sample can change it; it lives in the
    samples' view, in a PID namespace of its own, under its own uid. The worker
    still replaces it after any sample that timed out or ended abnormally, and every
    `_JUDGE_MAX_JOBS` samples.
    """
    import fcntl
    import socket

    ctl = socket.socket(fileno=ctl_fd)
    try:
        while True:
            msg, fds, _flags, _addr = socket.recv_fds(ctl, 1 << 16, 3)
            if not msg or len(fds) != 3:
                return
            raw = os.pread(fds[0], os.fstat(fds[0]).st_size, 0)
            test_code = raw.decode("utf-8", "surrogatepass")
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 16) for fd in fds[1:]]
            for fd in fds:
                os.close(fd)
            os.dup2(high[0], IN_FD)
            os.dup2(high[1], OUT_FD)
            for fd in high:
                os.close(fd)
            job = json.loads(msg)
            result: dict[str, Any] = {"done": True, "passed": 0, "total": 1, "error": None}
            try:
                _judge(test_code, job["entry_point"], result)
            except BaseException as exc:  # a bug here must still report
                result["error"] = result["error"] or _exc_name(exc)
            del test_code, raw
            os.close(IN_FD)
            os.close(OUT_FD)
            ctl.send(json.dumps(result).encode())
    finally:
        os._exit(0)


_Compiled = tuple[types.CodeType | None, list[tuple[bool, types.CodeType]], ast.Module]


_COMPILED: dict[str, _Compiled] = {}


def _compiled_tests(test_code: str) -> _Compiled:
    """(whole module, None) when the tests define ``check``; else one code object per
    top-level statement, flagged when it is an assert. Cached: RL grades each problem's tests
    many times, and the judge outlives samples (code objects are immutable)."""
    hit = _COMPILED.get(test_code)
    if hit is not None:
        return hit
    tree = ast.parse(test_code, "<tests>")
    has_check = any(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "check"
        for node in tree.body
    )
    if has_check:
        out: _Compiled = (compile(tree, "<tests>", "exec", dont_inherit=True), [], tree)
    else:
        out = (None, [
            (isinstance(node, ast.Assert),
             compile(ast.Module(body=[node], type_ignores=[]), "<tests>", "exec",
                     dont_inherit=True))
            for node in tree.body
        ], tree)
    if len(_COMPILED) >= 512:
        _COMPILED.clear()
    _COMPILED[test_code] = out
    return out


def _judge(test_code: str, entry_point: str, result: dict[str, Any]) -> None:
    global _replies
    _prefetched.clear()  # nothing fetched for an earlier sample may answer this one's calls
    _replies = FrameReader(IN_FD, max_bytes=64 << 20)
    try:
        first = _replies.read()
    except (ValueError, RecursionError):
        result["error"] = "ProtocolViolation"
        return
    if first is None:
        result["error"] = "EarlyExit"
        return
    if not isinstance(first, dict):
        result["error"] = "ProtocolViolation"
        return
    if "load_error" in first:
        result["error"] = str(first["load_error"])[:_MAX_NAME]
        return
    try:
        ns = _judge_namespace(first.get("exports"))
    except ProtocolViolation:
        result["error"] = "ProtocolViolation"
        return
    whole, parts, tree = _compiled_tests(test_code)
    others = {name for name, obj in ns.items()
              if isinstance(obj, RemoteFunction) and name != entry_point}
    if whole is not None:
        result["total"] = 1
        try:
            check = next(node for node in tree.body
                         if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                         and node.name == "check")
            if check.args.args and isinstance(check, ast.FunctionDef):
                param = check.args.args[0].arg
                _prefetch(_plan(test_code, check.body, param, entry_point,
                                others | {entry_point}))
            exec(whole, ns)
            candidate = ns.get(entry_point)
            if not isinstance(candidate, RemoteFunction):
                raise NameError(f"name {entry_point!r} is not a function of the program")
            ns["check"](candidate)
            result["passed"] = 1
        except AssertionError:
            result["failed_assert"] = True
        except BaseException as exc:
            result["error"] = _exc_name(exc)
        return
    # Plain assert lines: each top-level assert is one test; other statements are setup.
    result["total"] = sum(1 for is_assert, _ in parts if is_assert)
    try:
        _prefetch(_plan(test_code, tree.body, entry_point, entry_point, others))
    except (EarlyExit, ProtocolViolation) as exc:
        result["error"] = _exc_name(exc)
        return
    for is_assert, code in parts:
        try:
            exec(code, ns)
            if is_assert:
                result["passed"] += 1
        except AssertionError:
            result.setdefault("failed_assert", True)
        except BaseException as exc:
            if result["error"] is None:
                result["error"] = _exc_name(exc)
            if not is_assert:
                return  # setup failed: later asserts cannot be meaningful
            if isinstance(exc, (EarlyExit, ProtocolViolation)):
                return


