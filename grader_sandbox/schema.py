"""Request and verdict shapes, request validation and limits.

A request is a plain JSON-serialisable dict (see README.md). Validation happens in the caller's
process before anything is sent to a worker, so a malformed request never reaches a sandbox.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from grader_sandbox.compare import MAX_FLOAT_TOL

STYLES = ("call", "stdio", "assert")
STATUSES = (
    "passed",
    "failed",
    "error",
    "timeout",
    "memory",
    "output_limit",
    "violation",
    "crashed",
)

DEFAULT_LIMITS: dict[str, float] = {"timeout_s": 5.0, "memory_mb": 512, "output_bytes": 1 << 20}
# Hard ceilings a request cannot exceed (a request asking for more is invalid).
MAX_LIMITS: dict[str, float] = {"timeout_s": 120.0, "memory_mb": 16384, "output_bytes": 64 << 20}
MAX_CODE_BYTES = 4 << 20
MAX_TEST_CODE_BYTES = 16 << 20
# The most digits an integer in a request may have: json (both ways) refuses more.
MAX_INT_DIGITS = 4300
_INT_CEIL = 10**MAX_INT_DIGITS
MAX_JSON_DEPTH = 100


class GraderError(Exception):
    """A request that cannot be graded, or a grader that cannot start or has died."""


@dataclass
class Verdict:
    """The grade of one request. ``passed`` is the binary reward."""

    id: str
    passed: bool
    status: str
    error_type: str | None = None
    tests_passed: int = 0
    tests_total: int = 0
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        return cls(
            id=str(data["id"]),
            passed=bool(data["passed"]),
            status=str(data["status"]),
            error_type=data.get("error_type"),
            tests_passed=int(data.get("tests_passed", 0)),
            tests_total=int(data.get("tests_total", 0)),
            wall_s=float(data.get("wall_s", 0.0)),
        )


def _rid_repr(rid: Any) -> str:
    """A short, safe repr of a request id of any type (a hostile id must not break errors)."""
    if isinstance(rid, str):
        return repr(rid if len(rid) <= 80 else rid[:80] + "...")
    if rid is None or isinstance(rid, (bool, float)):
        return repr(rid)
    if isinstance(rid, int):
        return repr(rid) if -(10**20) < rid < 10**20 else "<a huge int>"
    return f"<{type(rid).__name__}>"


def _fail(rid: Any, field: str, why: str) -> GraderError:
    return GraderError(f"invalid grader request id={_rid_repr(rid)}: field {field!r} {why}")


def _finite_number(value: Any) -> bool:
    """An int or float (not a bool), finite; a huge int is checked without float overflow."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return -_INT_CEIL < value < _INT_CEIL


def resolve_limits(
    rid: Any, limits: Any, defaults: dict[str, float] | None = None
) -> dict[str, float]:
    """Merge a request's ``limits`` over the defaults and check them against the ceilings."""
    out = dict(DEFAULT_LIMITS)
    if defaults:
        out.update(defaults)
    if limits is None:
        limits = {}
    if not isinstance(limits, dict):
        raise _fail(rid, "limits", "must be an object")
    for key, value in limits.items():
        if key not in DEFAULT_LIMITS:
            raise _fail(rid, f"limits.{key}", f"is unknown (known: {', '.join(DEFAULT_LIMITS)})")
        out[key] = value
    for key, value in out.items():
        if not _finite_number(value):
            raise _fail(rid, f"limits.{key}", "must be a finite number")
        # Compared as given: a huge int is out of range, never converted (no OverflowError).
        if key == "timeout_s":
            if not 0 < value <= MAX_LIMITS[key]:
                raise _fail(rid, f"limits.{key}", f"must be in (0, {MAX_LIMITS[key]:g}]")
        elif not 1 <= value <= MAX_LIMITS[key]:
            raise _fail(rid, f"limits.{key}", f"must be in [1, {MAX_LIMITS[key]:g}]")
    out["memory_mb"] = int(out["memory_mb"])
    out["output_bytes"] = int(out["output_bytes"])
    out["timeout_s"] = float(out["timeout_s"])
    return out


def _is_json_plain(value: Any, depth: int = 0) -> bool:
    """JSON data: null, bool, int (at most MAX_INT_DIGITS digits), float (NaN and the
    infinities included, as Python's json reads them), str, list, object with string keys;
    at most MAX_JSON_DEPTH levels."""
    if depth > MAX_JSON_DEPTH:
        return False
    if value is None or isinstance(value, (bool, str, float)):
        return True
    if isinstance(value, int):
        return -_INT_CEIL < value < _INT_CEIL
    if isinstance(value, list):
        return all(_is_json_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_plain(v, depth + 1) for k, v in value.items())
    return False


def validate_request(req: Any, defaults: dict[str, float] | None = None) -> dict[str, Any]:
    """Check one request's shape; return a normalised copy (limits resolved, compare filled).

    Raises GraderError naming the request id and the offending field, and nothing else,
    whatever ``req`` is.
    """
    try:
        return _validate(req, defaults)
    except GraderError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError, LookupError) as exc:
        rid = req.get("id") if isinstance(req, dict) else None
        raise GraderError(f"invalid grader request id={_rid_repr(rid)}: "
                          f"{type(exc).__name__} while checking it") from None


def _validate(req: Any, defaults: dict[str, float] | None) -> dict[str, Any]:
    if not isinstance(req, dict):
        raise GraderError(f"invalid grader request: expected an object, got {type(req).__name__}")
    rid = req.get("id")
    if not isinstance(rid, str) or not rid:
        raise _fail(rid, "id", "must be a non-empty string")
    code = req.get("code")
    if not isinstance(code, str):
        raise _fail(rid, "code", "must be a string (the full program)")
    if len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
        raise _fail(rid, "code", f"is larger than {MAX_CODE_BYTES} bytes")
    style = req.get("style")
    if style not in STYLES:
        raise _fail(rid, "style", f"must be one of {', '.join(STYLES)}")
    out: dict[str, Any] = {"id": rid, "code": code, "style": style}
    if style in ("call", "assert"):
        entry = req.get("entry_point")
        if not isinstance(entry, str) or not entry.isidentifier():
            raise _fail(rid, "entry_point", "must be a Python identifier")
        out["entry_point"] = entry
    tests = req.get("tests")
    if style == "call":
        if not isinstance(tests, list) or not tests:
            raise _fail(rid, "tests", "must be a non-empty list of {args, kwargs?, expected}")
        norm = []
        for i, t in enumerate(tests):
            if not isinstance(t, dict) or "expected" not in t:
                raise _fail(rid, f"tests[{i}]", "must be an object with 'args' and 'expected'")
            args = t.get("args", [])
            kwargs = t.get("kwargs", {})
            if not isinstance(args, list):
                raise _fail(rid, f"tests[{i}].args", "must be a list")
            if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
                raise _fail(rid, f"tests[{i}].kwargs", "must be an object with string keys")
            if not _is_json_plain(args) or not _is_json_plain(kwargs):
                raise _fail(rid, f"tests[{i}].args", "must be plain JSON data")
            if not _is_json_plain(t["expected"]):
                raise _fail(rid, f"tests[{i}].expected", "must be plain JSON data")
            norm.append({"args": args, "kwargs": kwargs, "expected": t["expected"]})
        out["tests"] = norm
    elif style == "stdio":
        if not isinstance(tests, list) or not tests:
            raise _fail(rid, "tests", "must be a non-empty list of {input, output}")
        norm = []
        for i, t in enumerate(tests):
            if not isinstance(t, dict):
                raise _fail(rid, f"tests[{i}]", "must be an object with 'input' and 'output'")
            for key in ("input", "output"):
                if not isinstance(t.get(key), str):
                    raise _fail(rid, f"tests[{i}].{key}", "must be a string")
            norm.append({"input": t["input"], "output": t["output"]})
        out["tests"] = norm
    else:
        test_code = req.get("test_code")
        if not isinstance(test_code, str) or not test_code.strip():
            raise _fail(rid, "test_code", "must be a non-empty string (check(candidate) or asserts)")
        if len(test_code.encode("utf-8", "surrogatepass")) > MAX_TEST_CODE_BYTES:
            raise _fail(rid, "test_code", f"is larger than {MAX_TEST_CODE_BYTES} bytes")
        out["test_code"] = test_code
    compare = req.get("compare")
    if compare is None:
        compare = {}
    if not isinstance(compare, dict):
        raise _fail(rid, "compare", "must be an object")
    for key in compare:
        if key != "float_tol":
            raise _fail(rid, f"compare.{key}", "is unknown (known: float_tol)")
    tol = compare.get("float_tol")
    if tol is not None and not (_finite_number(tol) and 0 <= tol <= MAX_FLOAT_TOL):
        raise _fail(rid, "compare.float_tol",
                    f"must be a finite number in [0, {MAX_FLOAT_TOL:g}] or null")
    out["compare"] = {"float_tol": None if tol is None else float(tol)}
    out["limits"] = resolve_limits(rid, req.get("limits"), defaults)
    return out
