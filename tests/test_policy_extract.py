"""extract_code: fenced blocks, unterminated fences, prose, plain text."""

from __future__ import annotations

import pytest

from harness.policy import extract_code


@pytest.mark.parametrize(("text", "expected"), [
    ("    x += 1\n    return x\n", "    x += 1\n    return x\n"),
    ("Here:\n```python\ndef f(x):\n    return x\n```\nThis works.", "def f(x):\n    return x\n"),
    ("```py\nprint(1)\n```", "print(1)\n"),
    ("```python\ndef f(x):\n    return x\n", "def f(x):\n    return x\n"),  # unterminated
    ("```\nprint(2)\n```\n", "print(2)\n"),  # unlabelled
    ("```bash\nls\n```\n```python\nprint(3)\n```", "print(3)\n"),  # python wins
    ("a ```python inline``` b", "a ```python inline``` b"),  # not a fence at line start
    ("Sure!\n  ```Python3\nprint(4)\n  ```\nbye", "print(4)\n"),
])
def test_extract_code(text: str, expected: str):
    assert extract_code(text) == expected


def test_first_and_last_block():
    text = "```python\nA\n```\ntext\n```python\nB\n```\n"
    assert extract_code(text) == "A\n"
    assert extract_code(text, which="last") == "B\n"
    with pytest.raises(ValueError):
        extract_code(text, which="middle")


@pytest.mark.parametrize(("text", "expected"), [
    # leading and trailing prose around unfenced code
    ("Here is the solution:\ndef f(x):\n    return x + 1\nThis adds one.\n",
     "def f(x):\n    return x + 1\n"),
    ("Sure. The program:\nn = int(input())\nprint(n * 2)\n\nHope it helps!",
     "n = int(input())\nprint(n * 2)\n"),
    ("import sys\nprint(sys.argv)\n", "import sys\nprint(sys.argv)\n"),  # compiles: as is
    ("no code at all here.", "no code at all here."),  # nothing compiles: unchanged
])
def test_prose_around_unfenced_code_is_cut(text: str, expected: str):
    assert extract_code(text) == expected


def test_block_defining_the_entry_point_is_preferred():
    text = ("```python\nprint(add(1, 2))\n```\nand the function:\n"
            "```python\ndef add(a, b):\n    return a + b\n```\n")
    assert extract_code(text) == "print(add(1, 2))\n"
    assert extract_code(text, entry_point="add") == "def add(a, b):\n    return a + b\n"
    lc = "```python\nclass Solution:\n    def f(self):\n        return 1\n```"
    assert extract_code("```python\nx = 1\n```\n" + lc, entry_point="f").startswith(
        "class Solution")


def test_truncate_at_stops():
    from harness.policy import truncate_at_stops

    text = "    return x\n\ndef other():\n    pass\n"
    assert truncate_at_stops(text, ["\ndef ", "\nclass "]) == "    return x\n"
    assert truncate_at_stops(text, ["\nnope"]) == text
    assert truncate_at_stops(text, []) == text
