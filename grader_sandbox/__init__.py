"""grader_sandbox: a fast, seccomp- and namespace-isolated grader for model-written code.

Library: ``GraderPool(workers=2).grade(requests) -> list[Verdict]``. Service: ``python -m
grader_sandbox serve --socket PATH`` and ``GraderClient(PATH).grade(requests)``. See README.md.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grader_sandbox.pool import GraderPool
    from grader_sandbox.schema import DEFAULT_LIMITS, GraderError, Verdict
    from grader_sandbox.service import GraderClient

# The grading behaviour's version: bump it with any change that can turn a verdict (the
# comparison rules, the isolation a program meets, the limits' meaning). Callers put it in
# the identity of what they grade (the harness: every cell's `versions`), so a change of
# grader is a change of identity. 2: comparison table, per-sample PID namespaces and view.
GRADER_VERSION = "2"

__all__ = ["DEFAULT_LIMITS", "GRADER_VERSION", "GraderClient", "GraderError", "GraderPool",
           "Verdict", "source_digest"]


def source_digest() -> str:
    """sha256 of the grader's own source files (for provenance next to GRADER_VERSION)."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def __getattr__(name: str) -> object:
    # Lazy, so `import grader_sandbox` stays cheap inside workers and sandboxed children: the
    # template (every program child's parent) then never loads schema (dataclasses, inspect,
    # ast) or the comparison rules (fractions, decimal), and each fork copies fewer pages.
    if name in ("DEFAULT_LIMITS", "GraderError", "Verdict"):
        from grader_sandbox import schema

        return getattr(schema, name)
    if name == "GraderPool":
        from grader_sandbox.pool import GraderPool

        return GraderPool
    if name == "GraderClient":
        from grader_sandbox.service import GraderClient

        return GraderClient
    raise AttributeError(f"module 'grader_sandbox' has no attribute {name!r}")
