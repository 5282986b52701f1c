"""Code from a model's completion: the fenced block when there is one, else the text."""

from __future__ import annotations

import re

# An opening fence (```python, ```py, ``` ...) at the start of a line, up to the closing
# fence at the start of a line or the end of the text (an unterminated block).
_FENCE = re.compile(
    r"^[ \t]*```[ \t]*(?P<lang>[A-Za-z0-9_+-]*)[^\n]*\n(?P<body>.*?)(?:^[ \t]*```|\Z)",
    re.MULTILINE | re.DOTALL)
_PYTHON = {"python", "python3", "py"}


def extract_code(text: str, which: str = "first") -> str:
    """The code in `text`.

    The first (or, with which="last", the last) fenced block labelled python/python3/py;
    failing that, the first/last unlabelled fenced block; failing that, `text` unchanged.
    An unterminated fence runs to the end of the text; prose around blocks is dropped.
    """
    if which not in ("first", "last"):
        raise ValueError(f"which must be 'first' or 'last', not {which!r}")
    blocks = [(m.group("lang").lower(), m.group("body")) for m in _FENCE.finditer(text)]
    for wanted in (lambda lang: lang in _PYTHON, lambda lang: lang == ""):
        chosen = [body for lang, body in blocks if wanted(lang)]
        if chosen:
            return chosen[0] if which == "first" else chosen[-1]
    return text
