from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never write into the user's cache or runs directory; the tiny policy is built
    once per session under a temporary cache unless HARNESS_CACHE is already set."""
    os.environ.setdefault("HARNESS_CACHE", str(tmp_path_factory.mktemp("harness-cache")))
    os.environ.setdefault("HARNESS_RUNS", str(tmp_path_factory.mktemp("runs")))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


# Property tests draw the same examples on every run (a CI run must not fail on a new draw).
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("harness", derandomize=True)
_hypothesis_settings.load_profile("harness")
