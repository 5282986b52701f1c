"""Checkpoints a controller may start from, with bounded retention.

Kept at any time: `init` (the chain's starting policy, in memory only: it is reloaded from
the model source on resume), `c{k}:last` and `c{k}:peak` of the latest finished campaign k,
and `c{j}:peak` of the campaign with the highest peak so far (first one on ties). So at
most five policies are held, whatever the chain length. Campaign checkpoints are written to
`cells/<cell_id>/checkpoints/` as safetensors (exact), which is what makes resume exact.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from harness.errors import UserError

State = dict[str, torch.Tensor]
Sync = Callable[[torch.nn.Module], None]


def _snapshot(model: torch.nn.Module) -> State:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


class CheckpointStore:
    """The checkpoints of one cell. In a multi-process cell (`sync` given) rank 0's store
    holds them and writes the files (`write=True`); the other ranks' stores (`write=False`)
    keep only their names and receive rank 0's weights whenever one is loaded: `sync(model)`
    broadcasts a module's weights from rank 0, and every rank calls the same methods in the
    same order."""

    def __init__(self, directory: Path, model: torch.nn.Module, write: bool = True,
                 sync: Sync | None = None) -> None:
        self.dir = directory
        self.write = write
        self.sync = sync
        self.model = model
        self._mem: dict[str, State | None] = {}  # None: held by rank 0
        self._peaks: dict[int, float] = {}
        self._running_peak: State | None = None

    def _snap(self, model: torch.nn.Module) -> State:
        return _snapshot(model) if self.write else {}

    def _load(self, model: torch.nn.Module, name: str) -> None:
        state = self._mem[name]
        if state is not None:
            model.load_state_dict(state)
        if self.sync is not None:
            self.sync(model)

    def keep_init(self) -> None:
        self._mem["init"] = _snapshot(self.model) if self.write else None

    def names(self) -> list[str]:
        return list(self._mem)

    def load_into(self, model: torch.nn.Module, name: str) -> None:
        if name not in self._mem:
            raise KeyError(f"checkpoint {name!r} is not kept (kept: {self.names()})")
        self._load(model, name)

    def reference(self, name: str) -> torch.nn.Module:
        """A frozen copy of the policy with checkpoint `name`'s weights."""
        ref = copy.deepcopy(self.model)
        self._load(ref, name)
        ref.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def mark_peak(self, model: torch.nn.Module) -> None:
        """Remember the current policy as the running campaign's peak."""
        self._running_peak = self._snap(model)

    def _keep(self) -> set[str]:
        if not self._peaks:
            return {"init"}
        last = max(self._peaks)
        best = max(self._peaks, key=lambda j: (self._peaks[j], -j))
        return {"init", f"c{last}:last", f"c{last}:peak", f"c{best}:peak"}

    def _path(self, name: str) -> Path:
        return self.dir / (name.replace(":", "_") + ".safetensors")

    def finish_campaign(self, k: int, model: torch.nn.Module, peak: float) -> None:
        assert self._running_peak is not None
        if not self.write:
            self._mem.update({f"c{k}:last": None, f"c{k}:peak": None})
            self._peaks[k] = peak
            self._running_peak = None
            return
        states = {f"c{k}:last": _snapshot(model), f"c{k}:peak": self._running_peak}
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, state in states.items():
            tmp = self._path(name).with_suffix(".tmp")
            try:
                save_file(state, str(tmp))
                tmp.replace(self._path(name))
            except (OSError, SafetensorError) as e:
                tmp.unlink(missing_ok=True)
                why = getattr(e, "strerror", None) or str(e).split(": ", 1)[-1]
                raise UserError(f"cannot save checkpoint {name} in {self.dir}: {why}; free "
                                "disk space and re-run (finished campaigns resume)") from None
            self._mem[name] = state
        self._peaks[k] = peak
        self._running_peak = None

    def prune(self) -> None:
        """Drop checkpoints no longer kept. Called only after the campaign record is in the
        trace, so a crash in between never loses a checkpoint a resume needs."""
        keep = self._keep()
        for name in list(self._mem):
            if name not in keep:
                del self._mem[name]
                if self.write:
                    self._path(name).unlink(missing_ok=True)

    def restore(self, summaries: Any) -> None:
        """On resume: reload the kept campaign checkpoints of the finished campaigns."""
        self._peaks = {s.index: s.peak for s in summaries}
        for name in sorted(self._keep() - {"init"}):
            if not self.write:
                self._mem[name] = None
                continue
            path = self._path(name)
            if not path.exists():
                raise UserError(f"cannot resume: checkpoint {path} is missing; delete the cell "
                                "directory to re-run the cell from scratch")
            self._mem[name] = load_file(str(path))
        for path in self.dir.glob("*.safetensors") if self.dir.is_dir() and self.write else []:
            if path.stem.replace("_", ":", 1) not in self._keep():
                path.unlink(missing_ok=True)
