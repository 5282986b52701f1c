"""A verdict cache in front of the grader: each distinct program is graded once per cell.

Grading is a pure function of the request (program, tests, comparison rule, limits) for the
verdicts a program's own code decides: `passed`, `failed` (a wrong answer) and `error` (a
syntax error or an exception). A policy repeats itself (the G samples of a prompt, and the
eval split's samples from one step to the next, are often the very same program), so those
verdicts are kept, keyed by the sha256 of the request without its id. Verdicts that depend
on the machine or on the grader's health (`timeout`, `memory`, `output_limit`, `violation`,
`crashed`) are never kept: such a request is graded again every time it comes.

The cache lives for one cell process (a resumed cell starts with an empty one and grades
again, to the same verdicts), holds at most `max_entries` verdicts (least recently used
dropped first), and counts its hits.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import replace
from typing import Any

CACHEABLE = frozenset({"passed", "failed", "error"})


def request_key(request: dict[str, Any]) -> str:
    """sha256 of the request's canonical JSON, its `id` left out."""
    body = {k: v for k, v in request.items() if k != "id"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()


class VerdictCache:
    """Wraps a grader (anything with `grade(requests) -> verdicts`); same interface.

    `last` holds the counts of the latest `grade` call: `requests`, `hits` (answered from
    the cache or by an identical request of the same call) and `graded` (sent to the grader).
    """

    def __init__(self, grader: Any, max_entries: int = 200_000) -> None:
        self.grader = grader
        self.max_entries = max_entries
        self._verdicts: OrderedDict[str, Any] = OrderedDict()
        self.last = {"requests": 0, "hits": 0, "graded": 0}

    def grade(self, requests: list[dict[str, Any]]) -> list[Any]:
        keys = [request_key(r) for r in requests]
        out: list[Any] = [None] * len(requests)
        todo: dict[str, list[int]] = {}  # key -> positions waiting for it (first one graded)
        for i, key in enumerate(keys):
            hit = self._verdicts.get(key)
            if hit is not None:
                self._verdicts.move_to_end(key)
                out[i] = replace(hit, id=requests[i]["id"])
            else:
                todo.setdefault(key, []).append(i)
        if todo:
            firsts = [positions[0] for positions in todo.values()]
            verdicts = self.grader.grade([requests[i] for i in firsts])
            for (key, positions), verdict in zip(todo.items(), verdicts, strict=True):
                if verdict.status in CACHEABLE:
                    self._verdicts[key] = verdict
                    for i in positions:
                        out[i] = replace(verdict, id=requests[i]["id"])
                else:  # not reusable: every copy is graded on its own
                    out[positions[0]] = verdict
                    rest = positions[1:]
                    if rest:
                        for i, v in zip(rest, self.grader.grade([requests[i] for i in rest]),
                                        strict=True):
                            out[i] = v
            while len(self._verdicts) > self.max_entries:
                self._verdicts.popitem(last=False)
        graded = sum(len(p) if out[p[0]] is not None and out[p[0]].status not in CACHEABLE
                     else 1 for p in todo.values())
        self.last = {"requests": len(requests), "hits": len(requests) - graded,
                     "graded": graded}
        return out

    def close(self) -> None:
        self.grader.close()

    def __getattr__(self, name: str) -> Any:  # health(), info, ... of the wrapped grader
        return getattr(self.grader, name)
