"""Heavy libraries imported on first use, so the commands that only read specs stay fast.

`harness list`, `plan` and `validate` load every registry (methods, controllers, task
sources, rollout backends) to check a spec's names and parameters; the modules that register
those components also use torch, transformers or scipy, which take seconds to import. Such a
module writes `torch = lazy_module("torch")` instead of `import torch`: the name is bound at
once, the library is imported when an attribute is first read (`torch.zeros`, ...), and every
later read goes to the real module. Types used only in annotations are imported under
`if TYPE_CHECKING:`. tests/test_import_graph.py checks that reading a spec imports none of
`HEAVY`.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

# Libraries that reading, validating and planning a spec must not import.
HEAVY = ("torch", "transformers", "tokenizers", "scipy", "deepspeed", "datasets", "mlflow",
         "vllm", "ray", "trl")


class LazyModule(types.ModuleType):
    """A stand-in for module `name` that imports it on first attribute access."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_lazy_target"] = None

    def _load(self) -> types.ModuleType:
        target = self.__dict__["_lazy_target"]
        if target is None:
            target = importlib.import_module(self.__name__)
            self.__dict__["_lazy_target"] = target
        return target

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "imported" if self.__dict__["_lazy_target"] is not None else "not imported yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy_module(name: str) -> Any:
    """Module `name`, imported when one of its attributes is first used."""
    return LazyModule(name)
