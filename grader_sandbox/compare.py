"""Comparison of raw results with expected values. Runs in the worker, never in a sandbox.

``call`` style: the decoded return value against the request's expected JSON value, by the
expected value's JSON type, at every depth (grader_sandbox/README.md "Comparison rules"):

  expected  returned types that can match               rule
  null      None                                         identity
  bool      bool                                         same value; never 0/1
  int       int, float (never bool)                      numeric ==; float_tol if a float
  float     float, int (never bool)                      exact, or within float_tol;
                                                         inf only the same inf, NaN only NaN
  str       str                                          exact (bytes never)
  list      list, tuple (a named tuple arrives as one)   same length, element-wise
  object    dict, OrderedDict, Counter, defaultdict      same size, key-wise; a non-str key
                                                         matches its JSON key form (1 "1",
                                                         True "true", None "null")
  -         set, frozenset, bytes, complex               never equal (JSON has none)

A result decoded by ``from_plain(keyed=False)`` (the worker's way: no hash table built from
a sample's keys) compares exactly as the same result decoded into real dicts and sets.

``float_tol`` is relative, and absolute below magnitude 1: |a - b| <= tol * max(1, |a|, |b|);
it must be finite and in [0, MAX_FLOAT_TOL]. ``stdio`` style: outputs compare token by token
(tokens are separated by ASCII whitespace only);
with ``float_tol``, two tokens that are both finite decimal numerals compare within it, any
other token (``inf``, ``nan``, words) only as exact text.
"""

from __future__ import annotations

import math
import re
from collections import Counter, OrderedDict, defaultdict
from fractions import Fraction
from typing import Any

from grader_sandbox.codec import Unkeyed

MAX_FLOAT_TOL = 1.0
_DICTS = (dict, OrderedDict, Counter, defaultdict)
_SEQS = (list, tuple)
_NUMERAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_ASCII_SPACE = re.compile(r"[ \t\n\r\v\f]+")
_INT_KEY_CEIL = 10**4300  # ints with more digits have no JSON form here (int max str digits)


def check_float_tol(float_tol: float | None) -> None:
    """Raise ValueError unless ``float_tol`` is None or a finite number in [0, MAX_FLOAT_TOL]."""
    if float_tol is None:
        return
    # The range test comes first: it compares exactly (a NaN fails it, a huge int too, and
    # neither is ever converted to float).
    if type(float_tol) not in (int, float) or not 0 <= float_tol <= MAX_FLOAT_TOL:
        raise ValueError(f"float_tol must be a finite number in [0, {MAX_FLOAT_TOL:g}] or None")


def _within(a: float | int, b: float | int, tol: float) -> bool:
    """|a - b| <= tol * max(1, |a|, |b|) for finite a, b (exactly, if floats would overflow)."""
    try:
        fa, fb = float(a), float(b)
        diff, bound = abs(fa - fb), tol * max(1.0, abs(fa), abs(fb))
        if math.isfinite(diff) and math.isfinite(bound):
            return diff <= bound
    except OverflowError:  # an int beyond the float range
        pass
    xa, xb = Fraction(a), Fraction(b)
    return abs(xa - xb) <= Fraction(tol) * max(Fraction(1), abs(xa), abs(xb))


def _num_eq(a: int | float, b: int | float, tol: float | None) -> bool:
    a_nan = type(a) is float and a != a
    b_nan = type(b) is float and b != b
    if a_nan or b_nan:
        return a_nan and b_nan  # NaN matches only NaN
    if tol is None or (type(a) is int and type(b) is int):
        return a == b  # exact: Python compares int and float without rounding
    if (type(a) is float and math.isinf(a)) or (type(b) is float and math.isinf(b)):
        return a == b  # an infinity matches only the same infinity
    return _within(a, b, tol)


def _key_form(key: Any) -> str | None:
    """The JSON object key a returned dict key becomes (None: it has none)."""
    t = type(key)
    if t is str:
        return key
    if t is bool:
        return "true" if key else "false"
    if key is None:
        return "null"
    if t is int:
        return int.__repr__(key) if -_INT_KEY_CEIL < key < _INT_KEY_CEIL else None
    if t is float:
        if key != key:
            return "NaN"
        if math.isinf(key):
            return "Infinity" if key > 0 else "-Infinity"
        return float.__repr__(key)
    return None  # tuple, frozenset, bytes, complex keys never match a JSON key


def _dict_eq(actual: Any, expected: dict[Any, Any], tol: float | None) -> bool:
    """``actual``: a dict of one of the _DICTS types, or an Unkeyed one (from the worker's
    decoding, which builds no hash table from a sample's keys). Only the keys' JSON forms
    (strings, whose hashes are randomised per process) ever go into a table here."""
    pairs = actual.items if type(actual) is Unkeyed else dict.items(actual)
    if len(pairs) != len(expected):
        return False
    forms: dict[str, Any] = {}
    for key, value in pairs:
        form = _key_form(key)
        if form is None or form in forms:
            return False  # no JSON form, or two keys with the same one ({1: .., "1": ..})
        forms[form] = value
    for key, want in expected.items():
        form = _key_form(key)
        if form is None or form not in forms or not values_equal(forms[form], want, tol):
            return False
    return True


def values_equal(actual: Any, expected: Any, float_tol: float | None = None) -> bool:
    """Compare a decoded plain result with a JSON expected value (rules: module docstring).

    The expected value's JSON type decides which returned types can match; everything else
    is unequal. Raises ValueError for a ``float_tol`` that is not finite and in range.
    """
    check_float_tol(float_tol)
    return _eq(actual, expected, float_tol)


def _eq(actual: Any, expected: Any, tol: float | None) -> bool:
    ta = type(actual)
    if expected is None:
        return actual is None
    if isinstance(expected, bool):
        return ta is bool and actual is expected
    if isinstance(expected, (int, float)):
        return (ta is int or ta is float) and _num_eq(actual, expected, tol)
    if isinstance(expected, str):
        return ta is str and actual == expected
    if isinstance(expected, (list, tuple)):
        return (ta in _SEQS and len(actual) == len(expected)
                and all(_eq(a, e, tol) for a, e in zip(actual, expected, strict=True)))
    if isinstance(expected, dict):
        return (ta in _DICTS or (ta is Unkeyed and actual.kind in _DICTS)) and _dict_eq(
            actual, expected, tol)
    return False  # not a JSON value: nothing matches it


def _token_eq(a: str, b: str, float_tol: float | None) -> bool:
    if a == b:
        return True
    if float_tol is None or not (_NUMERAL.fullmatch(a) and _NUMERAL.fullmatch(b)):
        return False
    fa, fb = float(a), float(b)
    if not (math.isfinite(fa) and math.isfinite(fb)):
        return False  # 1e999 and the like: only as the same text
    return _within(fa, fb, float_tol)


def _tokens(text: str) -> list[str]:
    return [t for t in _ASCII_SPACE.split(text) if t]


def stdout_matches(actual: str, expected: str, float_tol: float | None = None) -> bool:
    """Whitespace-insensitive, token-wise comparison of a program's output with the expected.

    Tokens are maximal runs of anything but ASCII whitespace (space, tab, line feed, carriage
    return, vertical tab, form feed); line structure and trailing spaces are ignored. Other
    characters that Python's ``str.split`` also takes for whitespace (the separators
    ``\x1c``-``\x1f``, ``\x85``, no-break and ideographic spaces, ...) are part of tokens.
    With ``float_tol``, tokens that are both finite decimal numerals compare within the
    tolerance; ``inf``, ``nan`` and every other token must match as text.
    """
    check_float_tol(float_tol)
    if actual == expected:
        return True
    ta, te = _tokens(actual), _tokens(expected)
    return len(ta) == len(te) and all(
        _token_eq(a, e, float_tol) for a, e in zip(ta, te, strict=True)
    )
