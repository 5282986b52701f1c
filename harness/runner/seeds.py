"""Seeds derived from names: every random draw of a cell is seeded from (cell seed, purpose,
campaign, step), so a rerun and a resumed run draw the same numbers."""

from __future__ import annotations

import hashlib
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and machines)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
