"""The synthetic code-task family (version 2): "apply 1-3 integer operations to x".

A problem is a sequence of operations on an integer x (add k, subtract k, multiply by k,
floor-divide by k, mod k, square, negate, abs), stated in a comment as code-like items in
order, one per operation ("x+3, x-7, x*2, x//4, x%5, x*x, -x, abs(x)"), so that the i-th
item of the statement maps to the i-th line of the solution. Two styles:

    call                                  stdio
    # x+3, x*x                            # read x; x+3, x*x
    def f(x):                             x = int(input())
        x += 3          <- completion ->  x += 3
        x *= x                            x *= x
        return x                          print(x)

Version history: 1 stated the items as words ("add 3, times 2, floordiv 4, mod 5,
subtract 7, square, negate, abs"); the ~1M-parameter tiny policy learned that mapping too
slowly for its warm-start budget (about 5% sampled pass@1 after 200-300 steps). Version 2
states them as code-like items (same operations, parameters, tests and solutions); the
bucket tag changes with the version, so the splits of version 2 differ from version 1's.

The prompt is valid Python and is also the `code_prefix`; the graded program is
prompt + completion. Each task has 5 hidden tests on inputs in [-50, 50].

Disjointness (fixed by the family version, independent of any seed or option): every
operation sequence has a fixed bucket u = sha256("syn1|" + key) in [0, 1):
    u < 0.50 -> warm-start pool (the only source of the tiny policy's supervised data),
    0.50-0.70 -> train split, 0.70-0.85 -> eval split, 0.85-1 -> test split.
So no problem (operation sequence, whatever its style) is in two splits, for any split seed,
and the warm start never sees a benchmark problem. `split_seed` only picks which problems of
each bucket are used.

Options (`tasks.options` for source `synthetic`):
    stdio_share (float, default 0.25): exact share of stdio-style tasks in each split
        (rounded); the rest are call style.
    min_ops / max_ops (int, defaults 1 / 3, within 1-3): the number of operations of each
        problem is drawn uniformly from [min_ops, max_ops]. One-operation problems are few
        (a handful per split); when a length runs out the draw moves to the next longer one.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.tasks.base import Task
from harness.tasks.registry import TASK_SOURCES

if TYPE_CHECKING:
    from harness.spec.schema import TasksSpec

FAMILY = "synthetic"
FAMILY_VERSION = 2
_TAG = f"syn{FAMILY_VERSION}"

N_TESTS = 5
TEST_RANGE = (-50, 50)
MAX_OPS = 3

# name -> (parameter values or None, statement, code line)
OPS: dict[str, tuple[range | None, str, str]] = {
    "add": (range(1, 10), "x+{k}", "x += {k}"),
    "sub": (range(1, 10), "x-{k}", "x -= {k}"),
    "mul": (range(2, 10), "x*{k}", "x *= {k}"),
    "div": (range(2, 10), "x//{k}", "x //= {k}"),
    "mod": (range(2, 10), "x%{k}", "x %= {k}"),
    "square": (None, "x*x", "x *= x"),
    "neg": (None, "-x", "x = -x"),
    "abs": (None, "abs(x)", "x = abs(x)"),
}
# Every (op, k) pair, in a fixed order: the alphabet problems are words over.
ATOMS: tuple[tuple[str, int | None], ...] = tuple(
    (name, k) for name, (ks, _, _) in OPS.items() for k in (ks if ks is not None else [None])
)
# Bucket boundaries of u (see module docstring).
PARTITIONS: dict[str, tuple[float, float]] = {
    "warm": (0.0, 0.50),
    "train": (0.50, 0.70),
    "eval": (0.70, 0.85),
    "test": (0.85, 1.0),
}
OPTION_DEFAULTS: dict[str, Any] = {"stdio_share": 0.25, "min_ops": 1, "max_ops": 3}

Atom = tuple[str, int | None]


@dataclass(frozen=True)
class SyntheticOptions:
    stdio_share: float = 0.25
    min_ops: int = 1
    max_ops: int = 3

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> SyntheticOptions:
        """Validate `tasks.options`; unknown keys and bad values raise ValueError."""
        unknown = sorted(set(options) - set(OPTION_DEFAULTS))
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for task source 'synthetic'; "
                f"known: {', '.join(OPTION_DEFAULTS)}")
        o = cls(**{**OPTION_DEFAULTS, **options})
        if isinstance(o.stdio_share, bool) or not isinstance(o.stdio_share, (int, float)) \
                or not 0 <= o.stdio_share <= 1:
            raise ValueError(f"synthetic option stdio_share must be in [0, 1], "
                             f"got {o.stdio_share!r}")
        for name in ("min_ops", "max_ops"):
            v = getattr(o, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_OPS:
                raise ValueError(f"synthetic option {name} must be an integer in "
                                 f"[1, {MAX_OPS}], got {v!r}")
        if o.min_ops > o.max_ops:
            raise ValueError(f"synthetic options: min_ops ({o.min_ops}) > max_ops ({o.max_ops})")
        return o


# --------------------------------------------------------------------------- one problem
def op_key(ops: tuple[Atom, ...]) -> str:
    """Canonical text of an operation sequence, e.g. 'add3|square|mod7'."""
    return "|".join(name if k is None else f"{name}{k}" for name, k in ops)


def bucket(ops: tuple[Atom, ...]) -> float:
    """The fixed position u in [0, 1) of a sequence; decides its partition."""
    digest = hashlib.sha256(f"{_TAG}|{op_key(ops)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def partition_of(ops: tuple[Atom, ...]) -> str:
    u = bucket(ops)
    return next(name for name, (lo, hi) in PARTITIONS.items() if lo <= u < hi)


def is_valid(ops: tuple[Atom, ...]) -> bool:
    """No immediate repeat of negate or abs (x -> x and a no-op)."""
    return all(not (a == b and a[0] in ("neg", "abs")) for a, b in itertools.pairwise(ops))


def apply_ops(ops: tuple[Atom, ...], x: int) -> int:
    for name, k in ops:
        if name == "add":
            x += k
        elif name == "sub":
            x -= k
        elif name == "mul":
            x *= k
        elif name == "div":
            x //= k
        elif name == "mod":
            x %= k
        elif name == "square":
            x *= x
        elif name == "neg":
            x = -x
        elif name == "abs":
            x = abs(x)
        else:  # pragma: no cover - OPS and this function are kept in step
            raise ValueError(f"unknown op {name!r}")
    return x


def make_task(ops: tuple[Atom, ...], style: str) -> Task:
    """The task for an operation sequence in the given style (`call` or `stdio`)."""
    key = op_key(ops)
    statement = ", ".join(OPS[name][1].format(k=k) for name, k in ops)
    lines = [OPS[name][2].format(k=k) for name, k in ops]
    rng = random.Random(f"{_TAG}|tests|{key}")
    xs = rng.sample(range(TEST_RANGE[0], TEST_RANGE[1] + 1), N_TESTS)
    ys = [apply_ops(ops, x) for x in xs]
    if style == "call":
        prompt = f"# {statement}\ndef f(x):\n"
        reference = "".join(f"    {line}\n" for line in lines) + "    return x\n"
        tests = tuple({"args": [x], "expected": y} for x, y in zip(xs, ys, strict=True))
        entry_point: str | None = "f"
    elif style == "stdio":
        prompt = f"# read x; {statement}\nx = int(input())\n"
        reference = "".join(f"{line}\n" for line in lines) + "print(x)\n"
        tests = tuple({"input": f"{x}\n", "output": f"{y}\n"} for x, y in zip(xs, ys, strict=True))
        entry_point = None
    else:
        raise ValueError(f"synthetic tasks have style call or stdio, not {style!r}")
    task_id = f"{_TAG}-" + hashlib.sha256(f"{key}|{style}".encode()).hexdigest()[:10]
    return Task(
        task_id=task_id, prompt=prompt, code_prefix=prompt, style=style,  # type: ignore[arg-type]
        entry_point=entry_point, tests=tests, test_code=None, reference=reference,
        meta={"family": FAMILY, "version": FAMILY_VERSION, "ops": key,
              "difficulty": len(ops), "partition": partition_of(ops)},
    )


# --------------------------------------------------------------------------- sampling
def _random_ops(rng: random.Random, n_ops: int) -> tuple[Atom, ...]:
    return tuple(rng.choice(ATOMS) for _ in range(n_ops))


class _Drawer:
    """Draws distinct valid sequences of a partition, by length, deterministically."""

    def __init__(self, rng: random.Random, part: str) -> None:
        self.rng, self.part = rng, part
        self.used: set[tuple[Atom, ...]] = set()
        self._pool1: list[tuple[Atom, ...]] | None = None

    def _draw_len(self, n_ops: int) -> tuple[Atom, ...] | None:
        if n_ops == 1:  # few: enumerate once, shuffled
            if self._pool1 is None:
                self._pool1 = [(a,) for a in ATOMS if partition_of((a,)) == self.part]
                self.rng.shuffle(self._pool1)
            while self._pool1:
                ops = self._pool1.pop()
                if ops not in self.used:
                    return ops
            return None
        for _ in range(2000):  # many: rejection sampling
            ops = _random_ops(self.rng, n_ops)
            if ops not in self.used and is_valid(ops) and partition_of(ops) == self.part:
                return ops
        return None  # pragma: no cover - the 2- and 3-op pools hold thousands

    def draw(self, n_ops: int, max_ops: int) -> tuple[Atom, ...]:
        for length in range(n_ops, max_ops + 1):
            ops = self._draw_len(length)
            if ops is not None:
                self.used.add(ops)
                return ops
        raise ValueError(
            f"synthetic {self.part} split: not enough distinct problems with at most "
            f"{max_ops} operations; raise max_ops or ask for fewer tasks")


def split_tasks(split: str, n: int, seed: int, options: dict[str, Any] | None = None
                ) -> list[Task]:
    """`n` distinct tasks of one benchmark split (`train`, `eval` or `test`).

    Deterministic in (split, n, seed, options); a split's tasks come only from its own
    partition, so splits are disjoint for every seed.
    """
    if split not in ("train", "eval", "test"):
        raise ValueError(f"unknown split {split!r}; known: train, eval, test")
    opts = SyntheticOptions.from_dict(options or {})
    rng = random.Random(f"{_TAG}|{split}|{seed}")
    drawer = _Drawer(rng, split)
    seqs = [drawer.draw(rng.randint(opts.min_ops, opts.max_ops), opts.max_ops)
            for _ in range(n)]
    stdio = set(rng.sample(range(n), round(opts.stdio_share * n)))
    return [make_task(ops, "stdio" if i in stdio else "call") for i, ops in enumerate(seqs)]


def warm_start_tasks(n: int, seed: int, stdio_share: float = 0.25) -> list[Task]:
    """`n` tasks from the warm-start partition (repeats allowed), default difficulty mix.

    Never contains a train/eval/test problem: the partition is fixed by the family version.
    """
    rng = random.Random(f"{_TAG}|warm|{seed}")
    out: list[Task] = []
    while len(out) < n:
        ops = _random_ops(rng, rng.randint(1, MAX_OPS))
        if is_valid(ops) and partition_of(ops) == "warm":
            out.append(make_task(ops, "stdio" if rng.random() < stdio_share else "call"))
    return out


class SyntheticSource:
    """The `synthetic` task source: `split_tasks` for each split (options checked there, and
    by `check_options` when a spec is validated)."""

    name = "synthetic"
    version = FAMILY_VERSION
    description = ('the synthetic family: "apply 1-3 integer operations to x", call or stdio '
                   "style, 5 hidden tests each (the CPU testbed's tasks).")

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        """Raises ValueError for an option the family does not take or a bad value."""
        SyntheticOptions.from_dict(options)

    def __call__(self, tasks: TasksSpec) -> dict[str, list[Task]]:
        sizes = {"train": tasks.train, "eval": tasks.eval, "test": tasks.test}
        return {s: split_tasks(s, n, tasks.split_seed, tasks.options) for s, n in sizes.items()}


TASK_SOURCES.add(SyntheticSource.name, SyntheticSource())
