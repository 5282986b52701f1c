"""Fixtures for the grader tests: one sandboxed pool shared by the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from grader_sandbox import GraderPool


@pytest.fixture(scope="session")
def pool() -> Iterator[GraderPool]:
    with GraderPool(workers=2) as p:
        yield p
