"""A small name -> object registry with did-you-mean messages.

Every kind of component (methods, policy losses, loss aggregations, KL estimators,
controllers, task sources, rollout backends, executors) keeps one `Registry`, the single
source of its names: the spec schema validates against it, `harness spec-schema` and
`harness components` list it. An implementation registers itself in its own module, so adding
one touches that module and a test (docs/components.md).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from difflib import get_close_matches
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(value: str, known: list[str] | tuple[str, ...] | set[str]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    close = get_close_matches(value, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line ('' for none)."""
    if not doc or not doc.strip():
        return ""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    end = para.find(". ")
    while end >= 0 and (" " + para[: end + 1]).endswith(_ABBREVIATIONS):  # "Dr. GRPO", "Yu et al. 2025"
        end = para.find(". ", end + 2)
    return para if end < 0 else para[: end + 1]


# A period that ends one of these does not end the sentence.
_ABBREVIATIONS = tuple(f"{lead}{word}." for lead in " (" for word in
                       ("Dr", "al", "e.g", "i.e", "vs", "cf", "eq", "Eq", "Fig", "No"))


def _own_doc(obj: object) -> str | None:
    """The docstring written for `obj` itself: a function's, a class's own (not one it
    inherits), an instance's class's own."""
    if isinstance(obj, type):
        return obj.__dict__.get("__doc__")
    if inspect.isroutine(obj):
        return obj.__doc__
    return type(obj).__dict__.get("__doc__")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, description: str | None = None) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name` (and return it unchanged)."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            if description is not None:
                self._descriptions[name] = description
            return obj

        return deco

    def add(self, name: str, obj: T, description: str | None = None) -> T:
        return self.register(name, description)(obj)

    def unregister(self, name: str) -> T:
        """Remove a registration (tests that register a component of their own undo it)."""
        self._descriptions.pop(name, None)
        try:
            return self._items.pop(name)
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    @contextmanager
    def registered(self, name: str, obj: T, description: str | None = None) -> Iterator[T]:
        """`obj` registered under `name` for the duration of a `with` block (for tests)."""
        self.add(name, obj, description)
        try:
            yield obj
        finally:
            self.unregister(name)

    def unknown_message(self, name: str) -> str:
        return (f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}; "
                f"known: {', '.join(sorted(self._items))}")

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def description(self, name: str) -> str:
        """One line saying what `name` is: the description given at registration, else the
        object's `description` attribute, else the first sentence of its own docstring, else
        of its module's docstring."""
        if name in self._descriptions:
            return self._descriptions[name]
        obj = self.get(name)
        text = getattr(obj, "description", None)
        if isinstance(text, str) and text:
            return text
        text = first_sentence(_own_doc(obj))
        if text:
            return text
        module = sys.modules.get(getattr(obj, "__module__", "") or type(obj).__module__)
        return first_sentence(getattr(module, "__doc__", None))

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
