"""grader_sandbox: a fast, seccomp- and namespace-isolated grader for model-written code.

Library: ``GraderPool(workers=2).grade(requests) -> list[Verdict]``. Service: ``python -m
grader_sandbox serve --socket PATH`` and ``GraderClient(PATH).grade(requests)``. See README.md.
"""

from grader_sandbox.schema import DEFAULT_LIMITS, GraderError, Verdict

__all__ = ["DEFAULT_LIMITS", "GraderClient", "GraderError", "GraderPool", "Verdict"]


def __getattr__(name: str) -> object:
    # Lazy, so `import grader_sandbox` stays cheap inside workers and sandboxed children.
    if name == "GraderPool":
        from grader_sandbox.pool import GraderPool

        return GraderPool
    if name == "GraderClient":
        from grader_sandbox.service import GraderClient

        return GraderClient
    raise AttributeError(f"module 'grader_sandbox' has no attribute {name!r}")
