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
