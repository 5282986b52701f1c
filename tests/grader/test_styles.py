"""The three request styles, the verdict shape and request validation."""

from __future__ import annotations

import threading

import pytest

from grader_sandbox import GraderError, GraderPool, Verdict

DOUBLE = "def f(x):\n    return (x + 3) * 2\n"


def call(code: str, tests: list[dict], **extra: object) -> dict:
    return {"id": "c", "style": "call", "code": code, "entry_point": "f", "tests": tests, **extra}


def test_call_style_counts_each_test(pool: GraderPool) -> None:
    tests = [{"args": [i], "expected": (i + 3) * 2} for i in range(4)]
    tests.append({"args": [0], "expected": 7})
    v = pool.grade([call(DOUBLE, tests)])[0]
    assert (v.passed, v.status, v.tests_passed, v.tests_total) == (False, "failed", 4, 5)


def test_verdict_dict_has_the_contract_fields(pool: GraderPool) -> None:
    v = pool.grade([call(DOUBLE, [{"args": [1], "expected": 8}])])[0]
    d = v.to_dict()
    assert set(d) == {"id", "passed", "status", "error_type", "tests_passed", "tests_total",
                      "wall_s"}
    assert d["passed"] is True and d["status"] == "passed" and d["error_type"] is None
    assert 0 < d["wall_s"] < 5
    assert Verdict.from_dict(d) == v


def test_call_style_kwargs_tuples_and_float_tolerance(pool: GraderPool) -> None:
    code = "def f(a, b=1.0):\n    return (a / 3, b)\n"
    exact = call(code, [{"args": [1], "kwargs": {"b": 2}, "expected": [0.3333333, 2]}])
    loose = dict(exact, id="loose", compare={"float_tol": 1e-6})
    a, b = pool.grade([exact, loose])
    assert a.status == "failed"
    assert b.passed


def test_call_style_bool_is_not_an_int(pool: GraderPool) -> None:
    v = pool.grade([call("def f(x):\n    return True\n", [{"args": [0], "expected": 1}])])[0]
    assert v.status == "failed"


def test_call_style_exception_gives_error_with_type(pool: GraderPool) -> None:
    v = pool.grade([call("def f(x):\n    return {}[x]\n", [{"args": [1], "expected": 1}])])[0]
    assert (v.status, v.error_type) == ("error", "KeyError")


def test_syntax_error_is_an_error_verdict(pool: GraderPool) -> None:
    v = pool.grade([call("def f(x) return x\n", [{"args": [1], "expected": 1}])])[0]
    assert (v.status, v.error_type) == ("error", "SyntaxError")


def test_stdio_style_compares_tokens_not_whitespace(pool: GraderPool) -> None:
    code = "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b, a * b)\n"
    req = {"id": "s", "style": "stdio", "code": code,
           "tests": [{"input": "2 3\n", "output": "5   6"}, {"input": "1\n1", "output": "2\n1\n"},
                     {"input": "2 2", "output": "4 5"}]}
    v = pool.grade([req])[0]
    assert (v.status, v.tests_passed, v.tests_total) == ("failed", 2, 3)


def test_stdio_style_float_tolerance_and_main_guard(pool: GraderPool) -> None:
    code = "def main():\n    print(1 / 3)\nif __name__ == '__main__':\n    main()\n"
    tests = [{"input": "", "output": "0.333333"}]
    strict = {"id": "a", "style": "stdio", "code": code, "tests": tests}
    tol = dict(strict, id="b", compare={"float_tol": 1e-5})
    a, b = pool.grade([strict, tol])
    assert a.status == "failed" and b.passed


def test_stdio_runtime_error_is_error(pool: GraderPool) -> None:
    req = {"id": "s", "style": "stdio", "code": "print(int(input()) // 0)\n",
           "tests": [{"input": "3\n", "output": "1\n"}]}
    v = pool.grade([req])[0]
    assert (v.status, v.error_type) == ("error", "ZeroDivisionError")


def test_site_builtins_behave_as_under_python(pool: GraderPool) -> None:
    # The template runs without `site`; exit(), quit() and friends must still be there.
    ok = "n = int(input())\nprint(n * 2)\nexit()\nprint('never')\n"
    quit0 = "print(int(input()) * 2)\nquit(0)\n"
    fail = "print(int(input()) * 2)\nexit(3)\n"
    names = ("print(int(input()) * 2 if all(callable(b) for b in "
             "(help, copyright, credits, license)) else 'missing')\n")
    tests = [{"input": "4\n", "output": "8"}]
    reqs = [{"id": str(i), "style": "stdio", "code": c, "tests": tests}
            for i, c in enumerate((ok, quit0, fail, names))]
    reqs.append(call("def f(x):\n    exit(1)\n", [{"args": [1], "expected": 1}]))
    a, b, c, d, e = pool.grade(reqs)
    assert a.passed and b.passed and d.passed
    assert (c.status, c.error_type) == ("error", "SystemExit")
    assert not e.passed


def test_sixty_four_live_threads_fit_the_default_limits(pool: GraderPool) -> None:
    # No limits in the request: the defaults (memory_mb 512) must hold 64 live threads.
    code = ("import threading\ndef f(n):\n    go = threading.Event()\n"
            "    ts = [threading.Thread(target=go.wait) for _ in range(n)]\n"
            "    for t in ts:\n        t.start()\n"
            "    alive = sum(t.is_alive() for t in ts)\n    go.set()\n"
            "    for t in ts:\n        t.join()\n    return alive\n")
    v = pool.grade([call(code, [{"args": [64], "expected": 64}])])[0]
    assert v.passed, v


def test_assert_style_with_check_function(pool: GraderPool) -> None:
    test_code = "def check(candidate):\n    assert candidate([3, 1, 2]) == [1, 2, 3]\n"
    good = {"id": "g", "style": "assert", "entry_point": "srt", "test_code": test_code,
            "code": "def srt(xs):\n    return sorted(xs)\n"}
    bad = dict(good, id="b", code="def srt(xs):\n    return xs\n")
    g, b = pool.grade([good, bad])
    assert g.passed and (g.tests_passed, g.tests_total) == (1, 1)
    assert b.status == "failed"


def test_assert_style_plain_assert_lines_use_names_and_helpers(pool: GraderPool) -> None:
    code = ("import math\nLIMIT = 10\ndef helper(x):\n    return x * x\n"
            "def hyp(a, b):\n    return math.sqrt(helper(a) + helper(b))\n")
    test_code = ("assert hyp(3, 4) == 5\nassert helper(LIMIT) == 100\n"
                 "assert math.isclose(hyp(1, 1), 2 ** 0.5)\nassert hyp(1, 1) == 9\n")
    req = {"id": "a", "style": "assert", "code": code, "entry_point": "hyp",
           "test_code": test_code}
    v = pool.grade([req])[0]
    assert (v.status, v.tests_passed, v.tests_total) == ("failed", 3, 4)


def test_assert_style_expected_exception_crosses_as_builtin_type(pool: GraderPool) -> None:
    code = "def f(x):\n    if x < 0:\n        raise ValueError('neg')\n    return x\n"
    test_code = ("def check(candidate):\n    try:\n        candidate(-1)\n    except ValueError:\n"
                 "        pass\n    else:\n        raise AssertionError\n")
    v = pool.grade([{"id": "e", "style": "assert", "code": code, "entry_point": "f",
                     "test_code": test_code}])[0]
    assert v.passed


def test_verdicts_keep_the_input_order(pool: GraderPool) -> None:
    reqs = [call(f"def f(x):\n    return {i}\n", [{"args": [0], "expected": i % 3}])
            for i in range(40)]
    for i, r in enumerate(reqs):
        r["id"] = f"r{i}"
    out = pool.grade(reqs)
    assert [v.id for v in out] == [r["id"] for r in reqs]
    assert [v.passed for v in out] == [i % 3 == i for i in range(40)]


def test_pool_is_usable_from_several_threads(pool: GraderPool) -> None:
    results: list[bool] = []

    def run() -> None:
        out = pool.grade([call(DOUBLE, [{"args": [1], "expected": 8}]) for _ in range(5)])
        results.append(all(v.passed for v in out))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True, True, True]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({"style": "call"}, "'id'"),
        ({"id": "x", "style": "bogus", "code": ""}, "'style'"),
        ({"id": "x", "style": "call", "code": "", "entry_point": "f"}, "'tests'"),
        ({"id": "x", "style": "call", "code": "", "entry_point": "1f",
          "tests": [{"args": [], "expected": 1}]}, "'entry_point'"),
        ({"id": "x", "style": "call", "code": "", "entry_point": "f",
          "tests": [{"args": [object()], "expected": 1}]}, "'tests[0].args'"),
        ({"id": "x", "style": "stdio", "code": "", "tests": [{"input": 1, "output": ""}]},
         "'tests[0].input'"),
        ({"id": "x", "style": "assert", "code": "", "entry_point": "f"}, "'test_code'"),
        ({"id": "x", "style": "stdio", "code": "", "tests": [{"input": "", "output": ""}],
          "limits": {"timeout_s": -1}}, "'limits.timeout_s'"),
    ],
)
def test_invalid_request_raises_naming_id_and_field(
    pool: GraderPool, request_: dict, field: str
) -> None:
    with pytest.raises(GraderError) as info:
        pool.grade([request_])
    assert field in str(info.value)
    if "id" in request_:
        assert "id='x'" in str(info.value)


def test_default_limits_apply_and_requests_override(pool: GraderPool) -> None:
    slow = call("import time\ndef f(x):\n    time.sleep(0.6)\n    return x\n",
                [{"args": [1], "expected": 1}], limits={"timeout_s": 0.3})
    ok = dict(slow, id="ok", limits={"timeout_s": 3})
    a, b = pool.grade([slow, ok])
    assert a.status == "timeout" and b.passed


def test_bad_pool_arguments_fail_clearly() -> None:
    with pytest.raises(GraderError, match="workers"):
        GraderPool(workers=0)
    with pytest.raises(GraderError, match=r"limits\.memory_mb"):
        GraderPool(workers=1, default_limits={"memory_mb": "lots"})
