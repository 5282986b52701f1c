"""Code from a model's completion.

Instruct models (chat template): the fenced block when there is one (a block that defines the
function under test preferred), else the text with leading and trailing prose cut away.
Base models: the completion as generated, optionally cut at stop sequences.
"""

from __future__ import annotations

import re

# An opening fence (```python, ```py, ``` ...) at the start of a line, up to the closing
# fence at the start of a line or the end of the text (an unterminated block).
_FENCE = re.compile(
    r"^[ \t]*```[ \t]*(?P<lang>[A-Za-z0-9_+-]*)[^\n]*\n(?P<body>.*?)(?:^[ \t]*```|\Z)",
    re.MULTILINE | re.DOTALL)
_PYTHON = {"python", "python3", "py"}
# A line that starts a program (at column 0): what prose before the code does not look like.
_CODE_START = re.compile(
    r"^(?:def |async def |class |import |from \S+ import |@|if __name__|for |while |with |"
    r"try:|print\(|[A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*\s*(?:[-+*/%|&^]?=(?!=)|\(|\[))")
_MAX_PROSE_LINES = 400  # beyond this, prose trimming is not attempted (bounded cost)


def _compiles(code: str) -> bool:
    try:
        compile(code, "<completion>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def strip_prose(text: str) -> str:
    """`text` without the prose around its code, when it has no fences.

    Unchanged when it compiles as it is. Otherwise: from the first line that starts a program
    at column 0 (`def`, `class`, `import`, an assignment or call...), the longest run of
    lines that compiles; trailing lines are dropped one by one. When nothing compiles, the
    text is returned unchanged (the grader reports the syntax error).
    """
    if _compiles(text):
        return text
    lines = text.splitlines(keepends=True)
    if len(lines) > _MAX_PROSE_LINES:
        return text
    starts = [i for i, ln in enumerate(lines) if _CODE_START.match(ln)][:3]
    for start in starts:
        for end in range(len(lines), start, -1):
            chunk = "".join(lines[start:end])
            if chunk.strip() and _compiles(chunk):
                return chunk.rstrip() + "\n"
    return text


def extract_code(text: str, which: str = "first", entry_point: str | None = None) -> str:
    """The code in `text`.

    The first (or, with which="last", the last) fenced block labelled python/python3/py;
    failing that, the first/last unlabelled fenced block; failing that, `text` with the prose
    around its code cut away (`strip_prose`). With `entry_point`, a block that defines that
    function (or `class Solution`) is preferred over the others of its kind. An unterminated
    fence runs to the end of the text; prose around blocks is dropped.
    """
    if which not in ("first", "last"):
        raise ValueError(f"which must be 'first' or 'last', not {which!r}")
    blocks = [(m.group("lang").lower(), m.group("body")) for m in _FENCE.finditer(text)]
    defines = None
    if entry_point:
        defines = re.compile(
            rf"^\s*(?:async\s+)?def\s+{re.escape(entry_point)}\s*\(|^class\s+Solution\b",
            re.MULTILINE)
    for wanted in (lambda lang: lang in _PYTHON, lambda lang: lang == ""):
        chosen = [body for lang, body in blocks if wanted(lang)]
        if defines is not None:
            chosen = [b for b in chosen if defines.search(b)] or chosen
        if chosen:
            return chosen[0] if which == "first" else chosen[-1]
    return strip_prose(text)


def truncate_at_stops(text: str, stops: tuple[str, ...] | list[str]) -> str:
    """`text` up to the first occurrence of any stop sequence (a base model's completion
    that runs on past the function: HumanEval's "\\ndef ", "\\nclass ", ...)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]
