"""The comparison rules (grader_sandbox/README.md "Comparison rules"), one expected JSON type at a time, as pure
functions; and the same rules through a real pool for the cases a red team found."""

from __future__ import annotations

import json
import math
from collections import Counter, OrderedDict, defaultdict, namedtuple
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grader_sandbox import GraderError, GraderPool
from grader_sandbox.codec import from_plain, to_plain
from grader_sandbox.compare import MAX_FLOAT_TOL, stdout_matches, values_equal

INF, NAN = float("inf"), float("nan")
Point = namedtuple("Point", "x y")


def same(actual: Any, expected: Any, tol: float | None = None) -> bool:
    """values_equal after the result crossed the sandbox boundary (encode, JSON, decode),
    decoded both into real containers and as the worker does (keyed=False: no hash table
    built from the sample's keys), which must agree."""
    wire = json.loads(json.dumps(to_plain(actual)))
    keyed = values_equal(from_plain(wire), expected, tol)
    assert values_equal(from_plain(wire, keyed=False), expected, tol) is keyed, (actual, expected)
    return keyed


# -- A1: infinities and NaN ------------------------------------------------------------------

@pytest.mark.parametrize("tol", [None, 0.0, 1e-9, 0.5, MAX_FLOAT_TOL])
@pytest.mark.parametrize("finite", [0, 1, -1, 5, 0.5, 1e300, -1e300, 10**400])
def test_an_infinity_never_equals_a_finite_number(tol: float | None, finite: Any) -> None:
    for inf in (INF, -INF):
        assert not same(inf, finite, tol)
        assert not values_equal(finite, inf, tol)
        assert not same([inf], [finite], tol)
        assert not same({"k": inf}, {"k": finite}, tol)


@pytest.mark.parametrize("tol", [None, 0.0, 1e-6, MAX_FLOAT_TOL])
def test_infinities_equal_only_themselves_and_nan_only_nan(tol: float | None) -> None:
    assert same(INF, INF, tol) and same(-INF, -INF, tol)
    assert not same(INF, -INF, tol) and not same(-INF, INF, tol)
    assert same(NAN, NAN, tol)
    for other in (0, 0.0, 1.0, INF, -INF):
        assert not same(NAN, other, tol) and not values_equal(other, NAN, tol)


@pytest.mark.parametrize("bad", [INF, -INF, NAN, -1e-9, -1, MAX_FLOAT_TOL * 2, 10**400, True])
def test_compare_functions_refuse_a_tolerance_out_of_range(bad: Any) -> None:
    with pytest.raises(ValueError, match="float_tol"):
        values_equal(1.0, 1.0, bad)
    with pytest.raises(ValueError, match="float_tol"):
        stdout_matches("1.0", "1.0", bad)


def test_tolerance_is_relative_and_absolute_below_one() -> None:
    assert values_equal(1e6 + 1, 1e6, 1e-5) and not values_equal(1e6 + 20, 1e6, 1e-5)
    assert values_equal(1e-7, 0, 1e-6) and not values_equal(1e-5, 0, 1e-6)
    assert not values_equal(1e308, -1e308, MAX_FLOAT_TOL)  # the difference overflows
    assert values_equal(10**309, 1e308, MAX_FLOAT_TOL)  # int beyond float range: exact math
    assert not values_equal(10**400, 1e308, 1e-9)
    assert values_equal(10**400, 10**400, 1e-9) and not values_equal(10**400 + 1, 10**400)


@pytest.mark.parametrize("tol", [1e-6, 0.5, MAX_FLOAT_TOL])
@pytest.mark.parametrize("token", ["inf", "-inf", "Infinity", "nan", "NaN", "1e999", "-1e400"])
def test_stdio_non_finite_tokens_match_only_as_text(tol: float, token: str) -> None:
    for finite in ("0", "1", "5.0", "1e308", "-3"):
        assert not stdout_matches(token, finite, tol)
        assert not stdout_matches(finite, token, tol)
        assert not stdout_matches(f"1 {token}\n", f"1 {finite}\n", tol)
    assert stdout_matches(token, token, tol)
    assert not stdout_matches("1e999", "2e999", tol)  # both overflow, but differ as text


def test_stdio_tolerance_applies_to_decimal_numerals_only() -> None:
    assert stdout_matches("0.3333334 2", "0.3333333 2", 1e-6)
    assert stdout_matches("3", "3.0000001", 1e-6)
    assert not stdout_matches("1_000", "1000", 1e-6)  # float() would accept the underscore
    assert not stdout_matches("\u0661", "1", 1e-6)  # nor non-ASCII digits
    assert not stdout_matches("0x10", "16", 1e-6)


# Python's str.split() also splits at these; no judge takes them for whitespace.
NOT_ASCII_SPACE = ["\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u1680", "\u2000",
                   "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]


@pytest.mark.parametrize("tol", [None, 1e-6])
@pytest.mark.parametrize("sep", NOT_ASCII_SPACE)
def test_stdio_tokens_are_separated_by_ascii_whitespace_only(tol: float | None, sep: str) -> None:
    assert sep.isspace()  # what str.split() would have split at
    assert not stdout_matches(f"1{sep}2", "1 2", tol)
    assert not stdout_matches(f"4{sep}", "4", tol) and not stdout_matches(f"{sep}4", "4", tol)
    assert not stdout_matches("1 2", f"1{sep}2", tol)
    assert stdout_matches(f"1{sep}2", f"1{sep}2", tol)
    assert stdout_matches(f"1{sep}2 \t\r\n\x0b\x0c", f"1{sep}2\n", tol)
    assert stdout_matches(" 1\t2\r\n\x0b3\x0c\n\n", "1 2\n3", tol)


# -- A2: sets and bools ----------------------------------------------------------------------

@pytest.mark.parametrize("tol", [None, 1e-6])
def test_a_set_never_equals_a_json_value(tol: float | None) -> None:
    for result in ({1, 2}, frozenset({1, 2}), {1}, set()):
        for expected in ([1, 2], [2, 1], [1, 1, 2], [1], [], {"1": None}, 1, "x", None):
            assert not same(result, expected, tol)
    assert not same([{1, 2}], [[1, 2]], tol) and not same({"k": {1}}, {"k": [1]}, tol)
    assert not same({True, 2}, [1, 2], tol) and not same({1, 2}, [True, 2], tol)


@pytest.mark.parametrize("tol", [None, 1e-6])
def test_bools_never_equal_numbers_at_any_depth(tol: float | None) -> None:
    pairs = [(True, 1), (False, 0), (1, True), (0, False), (1.0, True), (True, 1.0)]
    for got, want in pairs:
        assert not same(got, want, tol)
        assert not same([got], [want], tol)
        assert not same((0, got), [0, want], tol)
        assert not same({"k": got}, {"k": want}, tol)
        assert not same([[{"k": [got]}]], [[{"k": [want]}]], tol)
    # Dict keys: a bool key's JSON form is "true"/"false", never "1"/"0".
    assert not same({True: "a"}, {"1": "a"}, tol) and not same({False: "a"}, {"0": "a"}, tol)
    assert same({True: "a"}, {"true": "a"}, tol) and same({1: "a"}, {"1": "a"}, tol)
    assert same(True, True, tol) and same([False], [False], tol)


# -- A3: benign containers -------------------------------------------------------------------

def test_benign_containers_compare_as_dicts_and_tuples() -> None:
    assert same(OrderedDict([("b", 1), ("a", 2)]), {"a": 2, "b": 1})
    assert same(Counter("abca"), {"a": 2, "b": 1, "c": 1})
    assert not same(Counter("abca"), {"a": 2, "b": 1})
    assert same(defaultdict(list, {1: [2]}), {"1": [2]})
    assert same(Point(1, 2), [1, 2]) and not same(Point(1, 2), [2, 1])
    assert same([Point(1, [Counter("a")])], [[1, [{"a": 1}]]])


# -- A4: the table, row by row ---------------------------------------------------------------

ROWS: list[tuple[Any, list[Any], list[Any]]] = [
    # expected, returned values that match, returned values that do not
    (None, [None], [0, False, "", [], {}, "None"]),
    (True, [True], [1, 1.0, "true", [True], None]),
    (False, [False], [0, 0.0, None, "", []]),
    (3, [3, 3.0], [True, "3", [3], 3 + 0j, 4, {3}]),
    (0.5, [0.5], [0.50001, "0.5", True, [0.5], 0.5 + 0j]),
    ("ab", ["ab"], [b"ab", ["a", "b"], ("a", "b"), "ab ", None]),
    ([1, [2]], [[1, [2]], (1, (2,)), [1, (2,)], Point(1, [2])],
     [[1, 2], [1, [2], 3], {1, 2}, {"0": 1, "1": [2]}, "[1, [2]]", [[2], 1]]),
    ({"1": "a", "x": [1]}, [{1: "a", "x": [1]}, {"1": "a", "x": (1,)},
                            OrderedDict([("x", [1]), ("1", "a")])],
     [{1: "a", "1": "a", "x": [1]}, {"1": "a"}, {(1,): "a", "x": [1]}, [("1", "a"), ("x", [1])],
      {True: "a", "x": [1]}, {1.0: "a", "x": [1]}]),
    ({"null": 1, "true": 2, "1.5": 3}, [{None: 1, True: 2, 1.5: 3}], [{None: 1, 1: 2, 1.5: 3}]),
]


@pytest.mark.parametrize(("expected", "good", "bad"), ROWS)
def test_rule_table_rows(expected: Any, good: list[Any], bad: list[Any]) -> None:
    for got in good:
        assert same(got, expected), (got, expected)
    for got in bad:
        assert not same(got, expected), (got, expected)
        assert not same(got, expected, 1e-9), (got, expected)


def test_nothing_equals_a_non_json_expected_value() -> None:
    for expected in ({1, 2}, b"ab", 1j, object()):
        assert not values_equal(expected, expected)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=15,
)


@given(json_values)
def test_every_json_value_equals_its_own_python_value(value: Any) -> None:
    assert values_equal(value, value) and values_equal(value, value, 1e-9)
    assert same(value, json.loads(json.dumps(value)))


# -- through a real pool ---------------------------------------------------------------------

def _call(rid: str, ret: str, expected: Any, tol: float | None = None, prelude: str = "") -> dict:
    return {"id": rid, "style": "call", "entry_point": "f",
            "code": f"{prelude}def f():\n    return {ret}\n", "tests": [{"args": [], "expected": expected}],
            "compare": {"float_tol": tol}}


def test_pool_applies_the_strict_rules(pool: GraderPool) -> None:
    imports = "import collections, typing\n"
    cases = [
        (_call("inf-call", "float('inf')", 5, 1e-6), "failed"),
        (_call("inf-same", "float('-inf')", -INF, 1e-6), "passed"),
        (_call("set-list", "{2, 1}", [1, 2]), "failed"),
        (_call("set-dups", "{1}", [1, 1]), "failed"),
        (_call("set-bool", "[{True}]", [[1]]), "failed"),
        (_call("bool-key", "{True: 1}", {"1": 1}), "failed"),
        (_call("bool-val", "{'k': [False]}", {"k": [0]}), "failed"),
        (_call("odict", "collections.OrderedDict([('b', 1), ('a', 2)])", {"a": 2, "b": 1},
               prelude=imports), "passed"),
        (_call("counter", "collections.Counter('abca')", {"a": 2, "b": 1, "c": 1},
               prelude=imports), "passed"),
        (_call("ddict", "collections.defaultdict(int, {1: 2})", {"1": 2}, prelude=imports),
         "passed"),
        (_call("ntuple", "collections.namedtuple('P', 'x y')(1, 2)", [1, 2], prelude=imports),
         "passed"),
        (_call("typed-nt", "N(1, 'a')", [1, "a"],
               prelude=imports + "class N(typing.NamedTuple):\n    a: int\n    b: str\n"),
         "passed"),
    ]
    stdio = {"id": "inf-stdio", "style": "stdio", "code": "print(float('inf'))\n",
             "tests": [{"input": "", "output": "5"}], "compare": {"float_tol": 0.5}}
    verdicts = pool.grade([r for r, _ in cases] + [stdio])
    got = {v.id: (v.status, v.error_type) for v in verdicts}
    want = {r["id"]: (status, None) for r, status in cases}
    want["inf-stdio"] = ("failed", None)
    assert got == want


def test_pool_assert_style_keeps_the_container_types(pool: GraderPool) -> None:
    code = ("import collections\n"
            "def f():\n    return collections.OrderedDict([('b', 1), ('a', 2)])\n"
            "def g():\n    return collections.Counter('aab')\n"
            "def h():\n    return collections.defaultdict(list)\n"
            "def p():\n    return collections.namedtuple('P', 'x y')(1, 2)\n")
    test_code = ("import collections\n"
                 "assert f() == collections.OrderedDict([('b', 1), ('a', 2)])\n"
                 "assert f() != collections.OrderedDict([('a', 2), ('b', 1)])\n"
                 "assert g()['z'] == 0 and g().most_common(1) == [('a', 2)]\n"
                 "assert h()['new'] == []\n"
                 "assert p() == (1, 2)\n")
    v = pool.grade([{"id": "kinds", "style": "assert", "code": code, "entry_point": "f",
                     "test_code": test_code}])[0]
    assert (v.status, v.tests_passed, v.tests_total) == ("passed", 5, 5)


@pytest.mark.parametrize("tol", [INF, -INF, NAN, -0.5, 2.0, 10**400, "0.1", True])
def test_requests_with_a_bad_tolerance_are_refused_naming_the_field(
        pool: GraderPool, tol: Any) -> None:
    with pytest.raises(GraderError, match=r"id='t'.*'compare\.float_tol'.*finite"):
        pool.grade([_call("t", "1", 1, tol)])


def test_requests_with_an_unknown_compare_key_are_refused(pool: GraderPool) -> None:
    req = _call("t", "1", 1)
    req["compare"] = {"float_tolerance": 1e-6}
    with pytest.raises(GraderError, match=r"'compare\.float_tolerance' is unknown"):
        pool.grade([req])


def test_expected_nan_is_an_answer(pool: GraderPool) -> None:
    a, b = pool.grade([_call("nan", "float('nan')", NAN), _call("num", "1.0", NAN, 0.5)])
    assert (a.status, b.status) == ("passed", "failed")
    assert math.isnan(json.loads(json.dumps(NAN)))  # how an expected NaN arrives as JSON
