"""The per-cell trace: append-only JSON lines, the source of truth for everything derived.

Record types (field `type`):
- `plan`: a controller's decision for campaign `campaign` (start_from, budget, lr, reason,
  numbers);
- `step`: one step of a campaign (step 0 = evaluation before any update), with the metrics
  named in docs/run-directory.md "Trace records", a `time` mapping and a `grading` mapping (how many
  samples the sandbox graded, the rest coming from the verdict cache): the only fields that
  vary between identical runs;
- `stop`: a controller stopped a campaign early (reason);
- `campaign`: the summary of a finished campaign (docs/design.md terms) — a campaign is complete
  only once this line is written;
- `final`: end-of-chain pass@1 on the test split (and the eval-split selection value), and
  `oracles`: the trace and hindsight oracles with their checkpoints' test pass@1.

A crash loses at most the step in flight: every line is flushed and fsynced. On resume,
lines after the last `campaign` record are dropped (that campaign re-runs from its start
checkpoint and produces the same records).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness.errors import UserError

TIMING_KEYS = ("time", "grading")


class Trace:
    """A cell's `trace.jsonl`. `write=False` (the ranks of a multi-process cell other than
    rank 0): read the file, keep later records in memory only."""

    def __init__(self, path: Path, write: bool = True) -> None:
        self.path = path
        self.write = write
        self.records: list[dict[str, Any]] = read_trace(path)
        self._torn = path.exists() and path.stat().st_size > 0 and \
            not path.read_bytes().endswith(b"\n")

    def append(self, record: dict[str, Any]) -> None:
        if not self.write:
            self.records.append(record)
            return
        line = json.dumps(record, sort_keys=True, allow_nan=True) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise UserError(
                f"cannot append to {self.path}: {e.strerror or e}; free disk space and re-run "
                "(finished campaigns are kept and resume)") from None
        self.records.append(record)

    def truncate_to_complete_campaigns(self) -> int:
        """Drop records of an unfinished campaign (and a torn last line); return the number of
        finished campaigns. A `final` record right after the last campaign is kept."""
        last = -1
        for i, r in enumerate(self.records):
            if r["type"] == "campaign":
                last = i
        keep = self.records[: last + 1]
        if last + 1 < len(self.records) and self.records[last + 1]["type"] == "final":
            keep.append(self.records[last + 1])
        if not self.write:
            self.records = keep
        elif len(keep) != len(self.records) or self._torn:
            tmp = self.path.with_suffix(".jsonl.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for r in keep:
                    f.write(json.dumps(r, sort_keys=True, allow_nan=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self.records = keep
            self._torn = False
        return sum(1 for r in keep if r["type"] == "campaign")

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["type"] == kind]


def read_trace(path: Path) -> list[dict[str, Any]]:
    """All complete records of a trace (a torn last line from a crash is ignored)."""
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn write: the step in flight
            out.append(json.loads(line))
    return out


def read_trace_checked(path: Path, *, complete: bool) -> tuple[list[dict[str, Any]], int | None]:
    """A trace read line by line for evaluation (`harness gate`, `compare`, `report`):
    (records, the number of a cut-off last line or None). A line that is not a JSON object
    with a `type` is a one-line `UserError` naming `path:line`. A last line without its
    newline is the step in flight of a cell that is running or was stopped: left out and
    returned when `complete` is false; when it is true (the trace of a finished cell, which
    ends with its `final` line and is never written again) it is an error too: the file was
    cut short after the cell finished (a partial copy or download)."""
    redo = ("delete the cell directory and re-run `harness bench` (or copy the run directory "
            "again)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; {redo}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    torn = None if lines[-1] == b"" else len(lines)
    if torn is None:
        lines.pop()  # the empty string after the last newline
    records: list[dict[str, Any]] = []
    for n, raw in enumerate(lines, 1):
        if n == torn:
            if complete:
                raise UserError(f"{path}:{n}: the last line is cut off (no newline) in the "
                                f"trace of a finished cell: the file was truncated; {redo}")
            break
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else e.reason
            raise UserError(f"{path}:{n}: not a JSON line ({why}); the trace is corrupt: "
                            f"{redo}") from None
        if not isinstance(record, dict) or not isinstance(record.get("type"), str):
            raise UserError(f"{path}:{n}: not a trace record (a JSON object with a `type`); "
                            f"the trace is corrupt: {redo}")
        records.append(record)
    return records, torn


def without_timing(record: dict[str, Any]) -> dict[str, Any]:
    """A record minus the fields that legitimately differ between identical runs."""
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}
