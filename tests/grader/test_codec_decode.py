"""from_plain on hostile input raises FrameError and nothing else (keyed or, as the worker
decodes, unkeyed, which refuses the same and stays linear on colliding hashes); the benign
containers cross; readers turn undecodable frames into FrameError; a forged malformed value is
a violation."""

from __future__ import annotations

import contextlib
import json
import os
import time
import typing
from collections import Counter, OrderedDict, defaultdict, namedtuple
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grader_sandbox import GraderPool
from grader_sandbox.codec import (
    MAX_DEPTH,
    FrameBuffer,
    FrameError,
    FrameReader,
    NotPlainData,
    Unkeyed,
    from_plain,
    pack,
    read_frame_from,
    to_plain,
)
from grader_sandbox.compare import values_equal

TAGS = ["$t", "$d", "$od", "$ctr", "$dd", "$s", "$fs", "$b", "$i", "$f", "$c", "$x", ""]

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
           | st.sampled_from(["nan", "inf", "-inf", "0x1f", "-0x2", "AAEC", "int", "list", "!"]))


def _tagged(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.builds(lambda tag, body: {tag: body}, st.sampled_from(TAGS), inner)


# Arbitrary JSON values in which tag-shaped objects (with right and wrong payloads) are common.
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | _tagged(inner)
    | st.dictionaries(st.sampled_from(TAGS) | st.text(max_size=3), inner, max_size=3),
    max_leaves=25,
)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_from_plain_returns_or_raises_frame_error_only(data: Any) -> None:
    with contextlib.suppress(FrameError):
        from_plain(data)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_the_workers_unkeyed_decoding_refuses_exactly_what_keyed_decoding_refuses(
        data: Any) -> None:
    outcomes = []
    for keyed in (True, False):
        try:
            from_plain(data, keyed=keyed)
            outcomes.append("ok")
        except FrameError:
            outcomes.append("FrameError")
    assert outcomes[0] == outcomes[1], data


def test_unkeyed_decoding_of_colliding_keys_takes_linear_time() -> None:
    # 100,000 distinct ints with one hash: a set or dict of them costs ~n**2/2 probes
    # (minutes); the worker's decoding builds neither.
    keys = [k * ((1 << 61) - 1) for k in range(1, 100_001)]
    assert len({hash(k) for k in keys[:1000]}) == 1
    t0 = time.monotonic()
    for value in ({"$s": keys}, {"$fs": keys}, {"$d": [[k, 1] for k in keys]},
                  {"$ctr": [[k, 1] for k in keys]}, {"$dd": ["int", [[k, 1] for k in keys]]}):
        got = from_plain(value, keyed=False)
        assert isinstance(got, Unkeyed) and len(got) == len(keys)
        assert not values_equal(got, [1]) and not values_equal(got, {"1": 1})
    assert time.monotonic() - t0 < 2.0


@given(json_values)
def test_from_plain_after_a_json_round_trip_too(data: Any) -> None:
    try:
        wire = json.loads(json.dumps(data))
    except ValueError:
        return
    with contextlib.suppress(FrameError):
        from_plain(wire)


@pytest.mark.parametrize("bad", [
    {"$s": [[1]]}, {"$fs": [{"$d": []}]}, {"$s": [{"$s": []}]}, {"$d": 5}, {"$d": [[[1], 2]]},
    {"$d": [[{"$d": []}, 1]]}, {"$d": [[1]]}, {"$d": [5]}, {"$od": "x"}, {"$ctr": [[[], 1]]},
    {"$dd": 5}, {"$dd": ["os.system", []]}, {"$dd": ["int"]}, {"$dd": [None, [[[1], 1]]]},
    {"$t": 5}, {"$t": {"$t": []}}, {"$b": 5}, {"$b": "!!!"}, {"$b": "\u00e9"}, {"$i": 5},
    {"$i": "12"}, {"$i": "0x"}, {"$i": " 0x1"}, {"$i": "0x1_0"}, {"$f": [1]}, {"$f": "1.5"},
    {"$c": 5}, {"$c": [1]}, {"$c": ["a", 1]}, {"$c": [True, 1]}, {"$c": [10**400, 0]},
    {"$x": 1}, {}, {"a": 1, "b": 2}, {1: 2}, object(), b"raw", (1, 2), {1, 2},
])
def test_malformed_values_raise_frame_error(bad: Any) -> None:
    with pytest.raises(FrameError):
        from_plain(bad)


def test_nesting_beyond_the_limit_is_a_frame_error_not_a_recursion_error() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH + 5):
        deep = {"$t": [deep]}
    with pytest.raises(FrameError):
        from_plain(deep)
    deep = 1
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(FrameError):
        from_plain(deep)


class _Sly(tuple):
    _fields = ("a",)

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = tuple.__hash__


def test_benign_containers_cross_as_standard_types() -> None:
    class Typed(typing.NamedTuple):
        a: int
        b: str

    point = namedtuple("Point", "x y")
    cases = [
        (OrderedDict([("b", 1), ("a", 2)]), OrderedDict),
        (Counter("abca"), Counter),
        (defaultdict(list, {1: [2]}), defaultdict),
        (point(1, [2]), tuple),
        (Typed(1, "x"), tuple),
        ([OrderedDict(a=Counter("x"))], list),
    ]
    for value, kind in cases:
        back = from_plain(json.loads(json.dumps(to_plain(value))))
        assert type(back) is kind and back == value
    back = from_plain(json.loads(json.dumps(to_plain(OrderedDict([("b", 1), ("a", 2)])))))
    assert list(back) == ["b", "a"]  # an OrderedDict keeps its order
    dd = from_plain(to_plain(defaultdict(int)))
    assert dd.default_factory is int and dd["new"] == 0
    dd = from_plain(to_plain(defaultdict(lambda: 7, {1: 2})))
    assert dd.default_factory is None and dd == {1: 2}  # only builtin factories cross
    # A tuple subclass that only looks like a named tuple crosses as its elements, if at all:
    # never as an object whose __eq__ is the program's.
    try:
        crossed = from_plain(to_plain(_Sly((1,))))
    except NotPlainData:
        pass
    else:
        assert type(crossed) is tuple and crossed == (1,)


def test_other_subclasses_are_still_not_plain_data() -> None:
    class D(dict):
        pass

    class L(list):
        pass

    for bad in (D(a=1), L([1]), [OrderedDict(a=D())], Counter({"a": L()})):
        with pytest.raises(NotPlainData):
            to_plain(bad)


def test_readers_turn_undecodable_frames_into_frame_errors(tmp_path: Any) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    huge_int = b"1" * 5000
    for i, body in enumerate((deep, huge_int, b"\xff\xfe", b"{not json")):
        frame = len(body).to_bytes(4, "big") + body
        with pytest.raises(FrameError):
            FrameBuffer(max_total=1 << 30).feed(frame)
        with pytest.raises(FrameError):
            read_frame_from(_reader(frame))
        path = tmp_path / f"frame{i}"
        path.write_bytes(frame)
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(FrameError):
                FrameReader(fd).read()
        finally:
            os.close(fd)


def _reader(data: bytes) -> Any:
    view = memoryview(data)
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        chunk = bytes(view[pos : pos + n])
        pos += len(chunk)
        return chunk

    return read


def test_frames_round_trip_through_the_readers() -> None:
    frame = pack({"a": [1, 2.5, None]})
    assert read_frame_from(_reader(frame)) == {"a": [1, 2.5, None]}
    assert read_frame_from(_reader(b"")) is None


# -- through a real pool: a forged, malformed value is a violation, not a worker crash -------

FORGE = (
    "import os, struct\n"
    "def f(x):\n"
    "    body = b'{\"i\": 0, \"value\": %s}'\n"
    "    os.write(3, struct.pack('>I', len(body)) + body)\n"
    "    os._exit(0)\n"
)


@pytest.mark.parametrize("value", ['{"$s": [[1]]}', '{"$d": 5}', '{"$d": [[[1], 2]]}',
                                   '{"$c": ["a", 1]}', '{"$b": "!"}', '{"$fs": [{"$d": []}]}'])
def test_a_forged_malformed_value_is_a_protocol_violation(pool: GraderPool, value: str) -> None:
    req = {"id": "forge", "style": "call", "entry_point": "f", "code": FORGE % value,
           "tests": [{"args": [1], "expected": 1}]}
    v = pool.grade([req])[0]
    assert (v.status, v.error_type) == ("violation", "ProtocolViolation")
