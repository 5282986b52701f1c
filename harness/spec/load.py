"""Load spec files: YAML with line numbers, `extends` inheritance, validation into `Spec`.

Every problem a user can cause becomes a `SpecProblem` (file, line, key path, message with a
did-you-mean where one helps); all problems of a file are reported together as a `SpecError`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

import harness.spec.limits as limits
from harness.errors import SpecError, SpecProblem, UserError
from harness.registry import did_you_mean
from harness.spec.schema import Spec

KeyPath = tuple[str | int, ...]
# Keys a spec file must state itself: a child spec never inherits its parent's identity.
NOT_INHERITED = ("name", "version")


def benchmarks_dir() -> Path:
    """Where registered specs live: $HARNESS_BENCHMARKS, else the repository's benchmarks/."""
    env = os.environ.get("HARNESS_BENCHMARKS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2] / "benchmarks"
    return here if here.is_dir() else Path.cwd() / "benchmarks"


def registered_specs() -> dict[str, Path]:
    """Registered spec names -> files (`benchmarks/*.yaml`). $HARNESS_BENCHMARKS naming a
    directory that is not there is a UserError (a typo must not read as "no specs")."""
    d = benchmarks_dir()
    if os.environ.get("HARNESS_BENCHMARKS") and not d.is_dir():
        raise UserError(f"HARNESS_BENCHMARKS={d} is not a directory; point it at the folder of "
                        "spec files (*.yaml), or unset it for the repository's benchmarks/")
    return {p.stem: p for p in sorted(d.glob("*.yaml"))} if d.is_dir() else {}


def _spec_path(ref: str, relative_to: Path | None) -> Path:
    """The file a path reference names, or a SpecError naming the path it tried."""
    p = Path(ref).expanduser()
    if not p.is_absolute() and relative_to is not None:
        p = relative_to / p
    if p.is_file():
        return p
    if p.is_dir():
        inside = sorted(q.name for q in p.glob("*.y*ml"))[:5]
        hint = (f" (it holds {', '.join(inside)})" if inside else "")
        raise SpecError([SpecProblem(ref, None, "", f"{p} is a directory, not a spec file; "
                                     f"pass one of its .yaml files{hint}")])
    tried = "" if str(p) == ref else f" ({p})"
    raise SpecError([SpecProblem(ref, None, "", f"no such spec file{tried}; check the path")])


def find_spec_file(ref: str, relative_to: Path | None = None) -> Path:
    """A spec reference is a registered name or a path to a YAML file (relative to
    `relative_to` when given: the folder of the file that extends it)."""
    looks_like_path = ref.endswith((".yaml", ".yml")) or os.sep in ref
    if looks_like_path:
        return _spec_path(ref, relative_to)
    reg = registered_specs()
    if ref in reg:
        return reg[ref]
    if relative_to is None and Path(ref).exists():  # `harness validate somedir`
        return _spec_path(ref, None)
    hint = did_you_mean(ref, list(reg))
    raise SpecError([SpecProblem(
        ref, None, "",
        f"no registered spec named {ref!r}{hint}; `harness list` shows the registered specs, "
        "or pass a path to a .yaml file")])


# --------------------------------------------------------------------------- YAML
def _walk(root: yaml.Node, lines: dict[KeyPath, int],
          problems: list[tuple[KeyPath, int, str]]) -> None:
    """The line of every key path, and duplicate keys (iterative: depth is bounded by
    `limits.MAX_DEPTH`, not by Python's stack)."""
    stack: list[tuple[yaml.Node, KeyPath]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for k, v in node.value:
                key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
                if key in seen:
                    problems.append(((*path, key), k.start_mark.line + 1,
                                     f"duplicate key {key!r}: keep one"))
                seen.add(key)
                lines[(*path, key)] = k.start_mark.line + 1
                stack.append((v, (*path, key)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((v, (*path, i)) for i, v in enumerate(node.value))


def _limit(name: str, line: int | None, what: str) -> SpecError:
    return SpecError([SpecProblem(name, line, "", f"{what} ({limits.DOC})")])


def _read_text(path: Path) -> str:
    """The file's text, read only when it is within `limits.MAX_SPEC_BYTES`."""
    name, cap = str(path), limits.MAX_SPEC_BYTES
    too_big = (f"the limit on a spec file is {cap // 1024} KiB: a spec states a grid and its "
               "settings, not data; keep long lists out of it")
    try:
        size = path.stat().st_size
        if size > cap:
            raise _limit(name, None, f"spec file is {size / 2**20:.1f} MiB; {too_big}")
        with open(path, "rb") as f:
            raw = f.read(cap + 1)
        if len(raw) > cap:  # grew, or a special file that reports no size
            raise _limit(name, None, f"spec file is over {cap // 1024} KiB; {too_big}")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise SpecError([SpecProblem(name, line, "", f"not UTF-8 text (byte "
                                         f"{raw[e.start]:#04x}); save the file as UTF-8")]
                            ) from None
    except OSError as e:
        raise SpecError([SpecProblem(name, None, "", f"cannot read spec file: {e}")]) from None


def _check_shape(text: str, name: str) -> None:
    """Refuse, from the event stream and before anything is built from it, a document nested
    deeper than `limits.MAX_DEPTH`, one whose aliases expand to more than `limits.MAX_NODES`
    nodes (the "billion laughs"), and a recursive alias. Raises SpecError or yaml.YAMLError."""
    sizes: dict[str, int] = {}  # anchor -> nodes of its value, aliases expanded
    stack: list[tuple[str | None, int]] = []  # open collections: (anchor, nodes before it)
    nodes = 0
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        line = ev.start_mark.line + 1
        if isinstance(ev, yaml.CollectionStartEvent):
            if len(stack) >= limits.MAX_DEPTH:
                raise _limit(name, line, f"mappings and lists nest more than "
                             f"{limits.MAX_DEPTH} levels deep here; flatten the spec")
            stack.append((ev.anchor, nodes))
            nodes += 1
        elif isinstance(ev, yaml.CollectionEndEvent):
            anchor, before = stack.pop()
            if anchor is not None:
                sizes[anchor] = nodes - before
        elif isinstance(ev, yaml.ScalarEvent):
            nodes += 1
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
        elif isinstance(ev, yaml.AliasEvent):
            if ev.anchor in (a for a, _ in stack):
                raise SpecError([SpecProblem(name, line, "", f"recursive YAML alias "
                                             f"*{ev.anchor}: a value cannot contain itself")])
            nodes += sizes.get(ev.anchor, 1)  # an undefined alias is the composer's error
        if nodes > limits.MAX_NODES:
            raise _limit(name, line, f"the document has more than {limits.MAX_NODES:,} "
                         "values with its YAML aliases expanded; write fewer values, or "
                         "alias fewer of them")


@contextmanager
def _stack_for_depth() -> Iterator[None]:
    """Room on Python's stack for the YAML composer and the merge to recurse
    `limits.MAX_DEPTH` levels (a few frames a level)."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 4 * limits.MAX_DEPTH + 1000))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def read_yaml(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse a YAML file within the limits (`harness.spec.limits`); return (data, line of
    each key path). Raises SpecError."""
    name = str(path)
    text = _read_text(path)
    try:
        _check_shape(text, name)
        with _stack_for_depth():
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = None if node is None else yaml.SafeLoader("").construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError([SpecProblem(name, line, "", f"YAML syntax error: {what}")]) from None
    lines: dict[KeyPath, int] = {}
    problems: list[tuple[KeyPath, int, str]] = []
    if node is not None:
        _walk(node, lines, problems)
    if problems:
        raise SpecError([SpecProblem(name, ln, fmt_path(p), m)
                         for p, ln, m in sorted(problems, key=lambda x: x[1])])
    if not isinstance(data, dict):
        raise SpecError([SpecProblem(name, 1, "", "a spec must be a YAML mapping of keys "
                                     "(name, version, models, ...)")])
    return data, lines


def fmt_path(path: KeyPath) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


# --------------------------------------------------------------------------- inheritance
def _merge(base: Any, over: Any) -> Any:
    """Deep merge: mappings merge key by key; lists and scalars replace."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base[k], v) if k in base else v
        return out
    return over


Where = dict[KeyPath, tuple[str, int]]


def _extended_by(problem: SpecProblem, extenders: dict[str, str]) -> SpecProblem:
    """`problem` (in an extended file) saying which file extends that one, and so on up to
    the spec given."""
    chain, seen = [], {problem.file}
    child = extenders.get(problem.file)
    while child is not None and child not in seen:
        chain.append(child)
        seen.add(child)
        child = extenders.get(child)
    if not chain or "(extended by " in problem.message:
        return problem
    return SpecProblem(problem.file, problem.line, problem.path,
                       f"{problem.message} (extended by {', extended by '.join(chain)})")


def _load_raw(path: Path, chain: tuple[Path, ...], extenders: dict[str, str] | None = None
              ) -> tuple[dict, Where]:
    """Raw mapping with `extends` applied, and where each key path was written.
    `extenders` receives, for each extended file, the file that extends it."""
    extenders = {} if extenders is None else extenders
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise SpecError([SpecProblem(str(chain[0]), None, "extends",
                                     f"inheritance cycle: {cycle}; remove one `extends`")])
    data, lines = read_yaml(path)
    where = {k: (str(path), ln) for k, ln in lines.items()}
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data, where
    if not isinstance(parent_ref, str):
        raise SpecError([SpecProblem(str(path), lines.get(("extends",)), "extends",
                                     "must be a spec name or a path to a .yaml file")])
    try:
        parent_path = find_spec_file(parent_ref, relative_to=path.parent)
    except SpecError as e:
        p = e.problems[0]
        raise SpecError([SpecProblem(str(path), lines.get(("extends",)), "extends",
                                     p.message)]) from None
    extenders.setdefault(str(parent_path.resolve()), str(path))
    try:
        parent, parent_where = _load_raw(parent_path, (*chain, path), extenders)
    except SpecError as e:
        raise SpecError([_extended_by(p, extenders) for p in e.problems]) from None
    for k in NOT_INHERITED:
        parent.pop(k, None)
    merged = _merge(parent, data)
    return merged, {**parent_where, **where}


# --------------------------------------------------------------------------- validation
def _model_at(loc: KeyPath) -> type[BaseModel] | None:
    """The pydantic model class that the value at `loc` is validated by."""
    cls: Any = Spec
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return None
        field = cls.model_fields.get(part)
        if field is None:
            return None
        cls = _inner_model(field.annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _inner_model(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if get_origin(ann) is not None or get_args(ann):
        for a in get_args(ann):
            m = _inner_model(a)
            if m is not None:
                return m
    return None


def _clean_msg(err: dict) -> str:
    msg = str(err.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if err.get("type") == "extra_forbidden":
        loc = err["loc"]
        model = _model_at(tuple(loc[:-1]))
        known = list(model.model_fields) if model else []
        key = str(loc[-1])
        return (f"unknown key {key!r}{did_you_mean(key, known)}"
                + (f"; allowed: {', '.join(known)}" if known else ""))
    if err.get("type") == "missing":
        return "required key is missing"
    inp = err.get("input")
    if not isinstance(inp, dict | list) and "got" not in msg and repr(inp) not in msg:
        shown = repr(inp)
        msg += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
    field = _field_at(tuple(err["loc"]))
    kind = err.get("type")
    if (kind in ("less_than_equal", "too_long") and field is not None
            and limits.DOC in (field.description or "")):
        fix = "use fewer, or split the spec" if kind == "too_long" else "use a smaller value"
        msg += f": the harness's limit ({limits.DOC}); {fix}"
    return msg


def _field_at(loc: KeyPath) -> FieldInfo | None:
    """The schema field that the value at `loc` belongs to (a list item's: its list's)."""
    keys = list(loc)
    while keys and isinstance(keys[-1], int):
        keys.pop()
    if not keys:
        return None
    model = _model_at(tuple(keys[:-1]))
    return None if model is None else model.model_fields.get(str(keys[-1]))


def _line_for(loc: KeyPath, where: dict[KeyPath, tuple[str, int]], default_file: str
              ) -> tuple[str, int | None]:
    for n in range(len(loc), -1, -1):
        if loc[:n] in where:
            return where[loc[:n]]
    return default_file, None


def validate_data(data: dict, where: Where, file: str,
                  extenders: dict[str, str] | None = None) -> Spec:
    """Validate a merged mapping into a `Spec`; every problem becomes a SpecProblem (one in
    an extended file says which file extends it: `extenders`, as `_load_raw` fills it)."""
    extenders = extenders or {}
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            f, ln = _line_for(loc, where, file)
            problems.append(_extended_by(SpecProblem(f, ln, fmt_path(loc), _clean_msg(err)),
                                         extenders))
        problems.sort(key=lambda p: (p.file, p.line or 0))
        raise SpecError(problems) from None
    problems = []
    for loc, msg in reference_problems(spec):
        f, ln = _line_for(loc, where, file)
        problems.append(_extended_by(SpecProblem(f, ln, fmt_path(loc), msg), extenders))
    if problems:
        raise SpecError(problems)
    return spec


def reference_problems(spec: Spec) -> list[tuple[KeyPath, str]]:
    """Cross-field checks: the grid within `limits.MAX_CELLS` (checked before anything is
    expanded), labels unique per axis, references to labels exist, grid not empty."""
    from harness.spec.grid import expand_cells

    sizes = (len(spec.models), len(spec.methods), len(spec.controllers), len(spec.seeds))
    cells = sizes[0] * sizes[1] * sizes[2] * sizes[3]
    if cells > limits.MAX_CELLS:
        return [((), f"the grid has {cells:,} cells (models x methods x controllers x seeds = "
                 f"{' x '.join(map(str, sizes))}); the limit is {limits.MAX_CELLS:,} "
                 f"({limits.DOC}): split the spec, or use fewer seeds")]
    out: list[tuple[KeyPath, str]] = []
    axes = {
        "model": ("models", [m.name for m in spec.models]),
        "method": ("methods", [m.arm for m in spec.methods]),
        "controller": ("controllers", [c.arm for c in spec.controllers]),
    }
    for axis, (key, labels) in axes.items():
        for i, lab in enumerate(labels):
            if labels.index(lab) != i:
                out.append(((key, i), f"duplicate {axis} label {lab!r}: give each entry a "
                            "distinct `label`"))
    for i, rule in enumerate(spec.exclude):
        for axis in axes:
            val = getattr(rule, axis)
            known = axes[axis][1]
            if val is not None and val not in known:
                out.append((("exclude", i, axis), f"unknown {axis} label {val!r}"
                            f"{did_you_mean(val, known)}; known: {', '.join(known)}"))
        if rule.seed is not None and rule.seed not in spec.seeds:
            out.append((("exclude", i, "seed"), f"seed {rule.seed} is not in seeds"))
    for i, comp in enumerate(spec.comparisons):
        for side in ("candidate", "baseline"):
            ref = getattr(comp, side)
            for axis in axes:
                val = getattr(ref, axis)
                known = axes[axis][1]
                if val is not None and val not in known:
                    out.append((("comparisons", i, side, axis), f"unknown {axis} label {val!r}"
                                f"{did_you_mean(val, known)}; known: {', '.join(known)}"))
    if not out and not expand_cells(spec):
        out.append((("exclude",), "the grid is empty after `exclude`: loosen the rules"))
    return out


def _registered_as(path: Path) -> str | None:
    """The registered name of a spec file (its stem) when it is one of `registered_specs()`,
    else None."""
    d = benchmarks_dir()
    if not d.is_dir() or path.suffix != ".yaml":
        return None
    return path.stem if path.resolve().parent == d.resolve() else None


def load_spec(ref: str) -> tuple[Spec, Path]:
    """Load a spec by registered name or path: inheritance applied, defaults filled, every
    limit of `harness.spec.limits` checked. A registered spec's `name` must be its file's stem
    (`harness list` shows names, `harness bench NAME` finds files by stem)."""
    path = find_spec_file(ref)
    extenders: dict[str, str] = {}
    with _stack_for_depth():
        data, where = _load_raw(path, (), extenders)
        spec = validate_data(data, where, str(path), extenders)
    stem = _registered_as(path)
    if stem is not None and spec.name != stem:
        _, line = _line_for(("name",), where, str(path))
        raise SpecError([SpecProblem(
            str(path), line, "name",
            f"{spec.name!r} is not this registered spec's file name ({path.name}): `harness "
            f"bench {stem}` finds the file by its name, runs and baselines go by `name`; "
            f"set `name: {stem}`, or rename the file to {spec.name}.yaml")])
    return spec, path


def name_clash(spec: Spec, path: Path) -> str | None:
    """A warning when a spec file that is not registered takes a registered spec's name (a
    copy not renamed): its runs, MLflow experiment and baseline would share that spec's."""
    if _registered_as(path) is not None or not benchmarks_dir().is_dir():
        return None
    other = registered_specs().get(spec.name)
    if other is None or other.resolve() == path.resolve():
        return None
    return (f"warning: {path}: name {spec.name!r} is the registered spec {other}'s: this "
            f"file's runs (runs/{spec.name}@{spec.version}/), MLflow experiment and baseline "
            f"(baselines/{spec.name}.json) would share that spec's; give it a name of its own")
