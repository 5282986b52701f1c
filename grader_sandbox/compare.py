"""Comparison of raw results with expected values. Runs in the worker, never in a sandbox."""

from __future__ import annotations

import math
from typing import Any


def _float_eq(a: float, b: float, tol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def values_equal(actual: Any, expected: Any, float_tol: float | None = None) -> bool:
    """Compare a decoded plain result with a JSON expected value.

    Tuples compare equal to lists (JSON has no tuples); bools never equal numbers; floats
    compare exactly unless ``float_tol`` is given (relative, floored at absolute for |x|<1).
    """
    ta, te = type(actual), type(expected)
    if ta is bool or te is bool:
        return ta is te and actual == expected
    if ta in (int, float) and te in (int, float):
        if float_tol is not None and (ta is float or te is float):
            return _float_eq(float(actual), float(expected), float_tol)
        return actual == expected
    if ta in (list, tuple) and te in (list, tuple):
        return len(actual) == len(expected) and all(
            values_equal(a, e, float_tol) for a, e in zip(actual, expected, strict=True)
        )
    if ta is dict and te is dict:
        if len(actual) != len(expected):
            return False
        for key, val in expected.items():
            if key in actual:
                got = actual[key]
            else:
                # JSON object keys are strings: let {1: x} match {"1": x}.
                matches = [k for k in actual if not isinstance(k, str) and str(k) == key]
                if len(matches) != 1:
                    return False
                got = actual[matches[0]]
            if not values_equal(got, val, float_tol):
                return False
        return True
    if ta in (set, frozenset) and te in (list, tuple, set, frozenset):
        try:
            return actual == {_hashable(e) for e in expected}
        except TypeError:
            return False
    if ta is te:
        return bool(actual == expected)
    return False


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def _token_eq(a: str, b: str, float_tol: float | None) -> bool:
    if a == b:
        return True
    if float_tol is None:
        return False
    try:
        fa, fb = float(a), float(b)
    except ValueError:
        return False
    return _float_eq(fa, fb, float_tol)


def stdout_matches(actual: str, expected: str, float_tol: float | None = None) -> bool:
    """Whitespace-insensitive, token-wise comparison of a program's output with the expected.

    Tokens are maximal runs of non-whitespace; line structure and trailing spaces are ignored.
    With ``float_tol``, tokens that both parse as floats compare within the tolerance.
    """
    if actual == expected:
        return True
    ta, te = actual.split(), expected.split()
    return len(ta) == len(te) and all(
        _token_eq(a, e, float_tol) for a, e in zip(ta, te, strict=True)
    )
