"""Plain-data codec and the comparison rules (pure functions, no sandbox)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grader_sandbox.codec import FrameBuffer, FrameError, NotPlainData, from_plain, pack, to_plain
from grader_sandbox.compare import stdout_matches, values_equal

plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary(),
    lambda inner: st.lists(inner) | st.tuples(inner, inner)
    | st.dictionaries(st.text() | st.integers(), inner),
    max_leaves=20,
)


@given(plain)
def test_plain_values_round_trip_exactly(value: object) -> None:
    back = from_plain(json.loads(json.dumps(to_plain(value))))
    assert back == value and type(back) is type(value)


def test_subclasses_and_objects_are_not_plain_data() -> None:
    class Sly(int):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = int.__hash__

    for bad in (Sly(1), object(), [1, {2: object()}], (x for x in [])):
        with pytest.raises(NotPlainData):
            to_plain(bad)


def test_decoder_rejects_unknown_tags() -> None:
    for bad in ({"$x": 1}, {"a": 1, "b": 2}, {"$t": "notalist"}):
        with pytest.raises(FrameError):
            from_plain(bad)


def test_frame_buffer_splits_frames_and_rejects_forged_sizes() -> None:
    buf = FrameBuffer(max_total=1000, max_frame=100)
    data = pack({"a": 1}) + pack([1, 2])
    assert buf.feed(data[:5]) == []
    assert buf.feed(data[5:]) == [{"a": 1}, [1, 2]]
    with pytest.raises(FrameError):
        FrameBuffer(max_total=1000, max_frame=100).feed(b"\xff" * 8)


@pytest.mark.parametrize(
    ("actual", "expected", "tol", "same"),
    [
        ((1, 2), [1, 2], None, True),
        (True, 1, None, False),
        (1, 1.0, None, True),
        (0.1 + 0.2, 0.3, None, False),
        (0.1 + 0.2, 0.3, 1e-9, True),
        ({1: "a"}, {"1": "a"}, None, True),
        ({1, 2}, [2, 1], None, False),  # JSON has no sets: a set never equals a list
        ({1, 2}, [1, 2], None, False),
        ([1, [2, 3]], [1, [2, 4]], None, False),
        (None, None, None, True),
    ],
)
def test_values_equal(actual: object, expected: object, tol: float | None, same: bool) -> None:
    assert values_equal(actual, expected, tol) is same


def test_stdout_matching_is_token_wise() -> None:
    assert stdout_matches("1 2\n3\n", "1\n2 3")
    assert not stdout_matches("1 2", "1 2 3")
    assert stdout_matches("0.3333334", "0.3333333", 1e-6)
    assert not stdout_matches("0.34", "0.3333333", 1e-6)
    assert not stdout_matches("abc", "abd", 1.0)
