"""Load spec files: YAML with line numbers, `extends` inheritance, validation into `Spec`.

Every problem a user can cause becomes a `SpecProblem` (file, line, key path, message with a
did-you-mean where one helps); all problems of a file are reported together as a `SpecError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from harness.errors import SpecError, SpecProblem
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
    """Registered spec names -> files (`benchmarks/*.yaml`)."""
    d = benchmarks_dir()
    return {p.stem: p for p in sorted(d.glob("*.yaml"))} if d.is_dir() else {}


def find_spec_file(ref: str, relative_to: Path | None = None) -> Path:
    """A spec reference is a registered name or a path to a YAML file."""
    looks_like_path = ref.endswith((".yaml", ".yml")) or os.sep in ref
    if looks_like_path:
        p = Path(ref).expanduser()
        if not p.is_absolute() and relative_to is not None:
            p = relative_to / p
        if p.is_file():
            return p
        raise SpecError([SpecProblem(ref, None, "", "no such spec file; check the path")])
    reg = registered_specs()
    if ref in reg:
        return reg[ref]
    hint = did_you_mean(ref, list(reg))
    raise SpecError([SpecProblem(
        ref, None, "",
        f"no registered spec named {ref!r}{hint}; `harness list` shows the registered specs, "
        "or pass a path to a .yaml file")])


# --------------------------------------------------------------------------- YAML
def _walk(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int],
          problems: list[tuple[KeyPath, int, str]]) -> None:
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
            _walk(v, (*path, key), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _walk(v, (*path, i), lines, problems)


def read_yaml(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Parse a YAML file; return (data, line of each key path). Raises SpecError."""
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([SpecProblem(name, None, "", f"cannot read spec file: {e}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError([SpecProblem(name, line, "", f"YAML syntax error: {what}")]) from None
    lines: dict[KeyPath, int] = {}
    problems: list[tuple[KeyPath, int, str]] = []
    if node is not None:
        _walk(node, (), lines, problems)
    if problems:
        raise SpecError([SpecProblem(name, ln, fmt_path(p), m) for p, ln, m in problems])
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


def _load_raw(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[KeyPath, tuple[str, int]]]:
    """Raw mapping with `extends` applied, and where each key path was written."""
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
    parent, parent_where = _load_raw(parent_path, (*chain, path))
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
        msg += f" (got {inp!r})"
    return msg


def _line_for(loc: KeyPath, where: dict[KeyPath, tuple[str, int]], default_file: str
              ) -> tuple[str, int | None]:
    for n in range(len(loc), -1, -1):
        if loc[:n] in where:
            return where[loc[:n]]
    return default_file, None


def validate_data(data: dict, where: dict[KeyPath, tuple[str, int]], file: str) -> Spec:
    """Validate a merged mapping into a `Spec`; every problem becomes a SpecProblem."""
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            f, ln = _line_for(loc, where, file)
            problems.append(SpecProblem(f, ln, fmt_path(loc), _clean_msg(err)))
        problems.sort(key=lambda p: (p.file, p.line or 0))
        raise SpecError(problems) from None
    problems = []
    for loc, msg in reference_problems(spec):
        f, ln = _line_for(loc, where, file)
        problems.append(SpecProblem(f, ln, fmt_path(loc), msg))
    if problems:
        raise SpecError(problems)
    return spec


def reference_problems(spec: Spec) -> list[tuple[KeyPath, str]]:
    """Cross-field checks: labels unique per axis, references to labels exist, grid not empty."""
    from harness.spec.grid import expand_cells

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


def load_spec(ref: str) -> tuple[Spec, Path]:
    """Load a spec by registered name or path: inheritance applied, defaults filled."""
    path = find_spec_file(ref)
    data, where = _load_raw(path, ())
    return validate_data(data, where, str(path)), path
