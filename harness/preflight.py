"""Can this machine load what a spec names? Every model and every task source, checked before
any cell starts, one line per problem.

`harness validate --offline` checks everything as it would load with no network: a model
directory must hold a loadable config, weights and a tokenizer; a hub model must be in the HF
cache at its revision; a dataset source must load its records from the cache or local files.
`harness bench` runs the same checks before its first cell, with the hub allowed unless the
process is offline (HF_HUB_OFFLINE): a hub model not in the cache must then be known to the
hub at its revision (one metadata request, `HUB_TIMEOUT_S`), so a mistyped id or an
unreachable hub is one line in seconds; cells would otherwise fail one by one, minutes in.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.spec.schema import ModelSpec, Spec, TasksSpec

_WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
_TRUE = ("1", "true", "yes", "on")


HUB_TIMEOUT_S = 10.0  # one metadata request to the hub before the first cell


def hub_offline() -> bool:
    """True when the process may not reach the hub (HF_HUB_OFFLINE)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


@contextmanager
def _offline_env() -> Iterator[None]:
    """HF_HUB_OFFLINE and HF_DATASETS_OFFLINE set for the duration (libraries that read them at
    import pick them up too: the checks import them here first)."""
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict.fromkeys(keys, "1"))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _missing_files(d: Path) -> str | None:
    """What a model directory lacks to load with from_pretrained, or None."""
    if not (d / "config.json").is_file():
        return "no config.json"
    if not any(any(d.glob(p)) for p in _WEIGHTS):
        return "no weights (*.safetensors or pytorch_model*.bin)"
    if not any((d / t).is_file() for t in _TOKENIZER):
        return "no tokenizer files (tokenizer.json or tokenizer_config.json)"
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        return f"config.json is not readable JSON ({type(e).__name__})"
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        return "config.json names no model_type"
    return _tokenizer_problem(d)


def _tokenizer_problem(d: Path) -> str | None:
    """Why the directory's tokenizer does not load (as `load_policy` loads it), or None: a
    tokenizer.json that is not one fails only at a cell's start otherwise."""
    from harness.policy.loading import is_tiny_dir

    try:
        if is_tiny_dir(d):
            from transformers import PreTrainedTokenizerFast

            PreTrainedTokenizerFast.from_pretrained(d)
        else:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(d)
    except Exception as e:  # a broken file raises whatever its parser raises
        first = (str(e).strip().splitlines() or [""])[0][:120]
        return f"its tokenizer does not load: {type(e).__name__}: {first}"
    return None


def _hub_problem(m: ModelSpec, rev: str) -> str | None:
    """With the hub allowed: None when the model is in the HF cache or the hub knows it at
    that revision; else one line. Bounded: one metadata request with a short timeout, so an
    unreachable hub costs seconds here, not a retry loop in every cell."""
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.utils import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        snapshot_download(m.id, revision=m.revision, local_files_only=True)
        return None
    except Exception:  # not cached here: ask the hub
        pass
    try:
        HfApi().model_info(m.id, revision=m.revision, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return (f"model {m.id}@{rev} is gated on the hub: accept its terms and log in "
                "(`hf auth login`), or pass a local directory")
    except RevisionNotFoundError:
        return f"model {m.id} has no revision {rev!r} on the hub: check the revision"
    except RepositoryNotFoundError:
        return (f"model {m.id!r} is not on the hub (or is private): check the id, or pass a "
                "local directory")
    except Exception as e:  # no network, a proxy, a timeout
        return (f"model {m.id}@{rev} is not in the HF cache and the hub cannot be reached "
                f"({type(e).__name__}): fetch it once with network access (`hf download "
                f"{m.id} --revision {rev}`) or pass a local directory")
    return None


def model_problem(m: ModelSpec, *, offline: bool) -> str | None:
    """Why `m` cannot be loaded here (one line naming the fix), or None. The tiny policy is
    built here on first use, so it always can."""
    if m.id == "tiny":
        return None
    if m.id.startswith(("/", "./", "../", "~")):
        d = Path(m.id).expanduser()
        if not d.is_dir():
            return (f"model directory {m.id!r} does not exist: pass a directory saved with "
                    "save_pretrained, or a hub id")
        if why := _missing_files(d):
            return (f"model directory {m.id!r} cannot be loaded ({why}): it must hold a model "
                    "saved with save_pretrained (config.json, weights, tokenizer files)")
        return None
    rev = m.revision or "main"
    if not offline:
        return _hub_problem(m, rev)  # fetched from the hub when its cell starts
    from huggingface_hub import snapshot_download

    try:
        where = Path(snapshot_download(m.id, revision=m.revision, local_files_only=True))
    except Exception as e:  # LocalEntryNotFoundError, a bad id or revision: not here
        return (f"model {m.id}@{rev} is not in the HF cache ({type(e).__name__}): fetch it "
                f"once with network access (`hf download {m.id} --revision {rev}`) or pass "
                "a local directory")
    if why := _missing_files(where):
        return (f"model {m.id}@{rev} is only partly in the HF cache ({why}): fetch it again "
                f"with network access (`hf download {m.id} --revision {rev}`)")
    return None


def tasks_problem(tasks: TasksSpec) -> str | None:
    """Why the task source of `tasks` cannot select its problems here, or None: the selection
    a cell makes at its start, made now."""
    if tasks.source == "synthetic":
        return None
    from harness.tasks import load_selection

    try:
        load_selection(tasks)
    except (ValueError, OSError, ConnectionError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"tasks ({tasks.source}) cannot be loaded here: {first}"
    except Exception as e:  # datasets raises its own types for a missing cache or network
        first = (str(e).strip().splitlines() or [""])[0]
        return (f"tasks ({tasks.source}) cannot be loaded here ({type(e).__name__}: {first}); "
                "fetch the dataset once with network access, or set tasks.options.data_files "
                "to local files")
    return None


def problems(spec: Spec, *, offline: bool) -> list[str]:
    """Every model and task source of `spec` that cannot be loaded here, one line each
    (offline: as with no network at all)."""
    out: list[str] = []

    def run() -> None:
        for m in spec.models:
            if why := model_problem(m, offline=offline):
                out.append(why)
        if why := tasks_problem(spec.tasks):
            out.append(why)

    if offline:
        with _offline_env():
            run()
    else:
        run()
    return out

