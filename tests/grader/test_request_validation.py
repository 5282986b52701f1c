"""Request validation raises GraderError naming the field, and nothing else, for any input:
numbers out of range (huge ints, NaN, infinities), deep nesting, hostile ids."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grader_sandbox.schema import (
    MAX_TEST_CODE_BYTES,
    GraderError,
    resolve_limits,
    validate_request,
)

HUGE = 10**400
CALL = {"id": "x", "style": "call", "code": "def f(x):\n    return x\n", "entry_point": "f",
        "tests": [{"args": [1], "expected": 1}]}
ASSERT = {"id": "x", "style": "assert", "code": "def f(x):\n    return x\n", "entry_point": "f",
          "test_code": "assert f(1) == 1\n"}
STDIO = {"id": "x", "style": "stdio", "code": "print(1)\n", "tests": [{"input": "", "output": "1"}]}


def _deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value]
    return value


@pytest.mark.parametrize("key", ["timeout_s", "memory_mb", "output_bytes"])
@pytest.mark.parametrize("value", [HUGE, -HUGE, float("inf"), float("nan"), -float("inf"), 0,
                                   -1, 0.0, True, "1", None, [1], 1e300])
def test_limits_out_of_range_are_field_errors(key: str, value: Any) -> None:
    with pytest.raises(GraderError, match=rf"id='x'.*'limits\.{key}'"):
        validate_request(dict(CALL, limits={key: value}))
    with pytest.raises(GraderError, match=rf"limits\.{key}"):
        resolve_limits("<default_limits>", {key: value})


@pytest.mark.parametrize("tol", [HUGE, -HUGE, float("inf"), float("nan"), -1e-12, 1.5, "0",
                                 True, [0.1]])
def test_float_tol_must_be_finite_and_in_range(tol: Any) -> None:
    with pytest.raises(GraderError, match=r"id='x'.*'compare\.float_tol'"):
        validate_request(dict(CALL, compare={"float_tol": tol}))


@pytest.mark.parametrize("tol", [None, 0, 0.0, 1e-9, 1, 1.0])
def test_float_tol_in_range_is_accepted_as_a_float(tol: Any) -> None:
    out = validate_request(dict(STDIO, compare={"float_tol": tol}))
    assert out["compare"] == {"float_tol": None if tol is None else float(tol)}


def test_integers_json_cannot_carry_are_refused() -> None:
    with pytest.raises(GraderError, match=r"'tests\[0\]\.expected'"):
        validate_request(dict(CALL, tests=[{"args": [1], "expected": 10**5000}]))
    with pytest.raises(GraderError, match=r"'tests\[0\]\.args'"):
        validate_request(dict(CALL, tests=[{"args": [10**5000], "expected": 1}]))
    ok = validate_request(dict(CALL, tests=[{"args": [HUGE], "expected": HUGE}]))
    assert ok["tests"][0]["expected"] == HUGE


def test_deep_nesting_is_refused_without_recursion_error() -> None:
    deep = _deep(100_000)
    for req in (dict(CALL, tests=[{"args": [1], "expected": deep}]),
                dict(CALL, tests=[{"args": deep, "expected": 1}]),
                dict(CALL, id=deep), dict(CALL, limits=deep), dict(CALL, compare=deep),
                dict(CALL, limits={"timeout_s": deep}), dict(CALL, compare={"float_tol": deep})):
        with pytest.raises(GraderError):
            validate_request(req)


def test_hostile_ids_give_short_one_line_errors() -> None:
    for rid in (_deep(10_000), 10**5000, "x" * 1_000_000, {"a": 1}, b"id"):
        with pytest.raises(GraderError) as info:
            validate_request(dict(CALL, id=rid, style="nope"))
        assert len(str(info.value)) < 300 and "\n" not in str(info.value)


def test_large_test_code_is_accepted_up_to_the_documented_ceiling() -> None:
    big = "assert f(1) == 1\n" * (300_000 // 17)
    assert validate_request(dict(ASSERT, test_code=big))["test_code"] == big
    with pytest.raises(GraderError, match="'test_code' is larger than"):
        validate_request(dict(ASSERT, test_code="#" * (MAX_TEST_CODE_BYTES + 1)))


def _big(k: int) -> int:
    """Huge ints, built inside the strategy (hypothesis cannot repr a 5000-digit int)."""
    return (HUGE, -HUGE, 10**5000)[k]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats()
    | st.integers(0, 2).map(_big) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=12,
)
FIELDS = ["id", "code", "style", "entry_point", "tests", "test_code", "compare", "limits"]


@settings(max_examples=400)
@given(st.sampled_from([CALL, ASSERT, STDIO]), st.dictionaries(st.sampled_from(FIELDS),
                                                               json_values, max_size=3))
def test_validation_raises_only_grader_error(base: dict, changes: dict) -> None:
    req = {**base, **changes}
    try:
        out = validate_request(req)
    except GraderError as exc:
        assert "\n" not in str(exc)
        return
    json.dumps(out)  # what passes validation can be sent to a worker
    limits = out["limits"]
    assert 0 < limits["timeout_s"] <= 120 and limits["memory_mb"] >= 1


@given(json_values)
def test_validation_of_any_value_as_a_request_raises_only_grader_error(value: Any) -> None:
    with contextlib.suppress(GraderError):
        validate_request(value)
