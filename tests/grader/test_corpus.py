"""Hostile and reward-hacking programs: each gets its intended verdict, the workers survive,
nothing is left running and no file outside the sample's directory changes.

Every program in fixtures/corpus/ starts with ``# grader: {json}``: the expected verdict
(``expect``) and any request fields that differ from the default (a ``call`` of ``f(2) == 4``).
``expect_root``, ``expect_userns`` or ``expect_container`` replace ``expect`` in that mode
(none is needed so far). Besides ``status``, an expectation may name the ``error_type``, the
number of ``tests_passed`` (a program that tries one variant per test expects 0: the first
failing test alone decides the status) and a ``max_wall_s``. ``test_code_repeat: {"head",
"body", "times"}`` builds a large ``test_code`` (``head`` then ``body`` ``times`` times, ``{n}``
the repetition's number).
fixtures/corpus_pairs/<name>/ holds attacks on later samples: its programs (same header) are
graded in file-name order, one after another on one worker.

A program with a ``TARGETS = []`` line has the pids it should aim at written there: the
caller, the pool's workers and templates, another pool's, a bystander process.

This module holds the corpus's loader, shared by every mode (here: root, with the session
pool; test_corpus_modes.py: an unprivileged user, and inside the grader container).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from grader_sandbox import GraderPool, Verdict

CORPUS = Path(__file__).parent / "fixtures" / "corpus"
PAIRS_DIR = Path(__file__).parent / "fixtures" / "corpus_pairs"
CANARY = Path("/tmp/grader-sandbox-canary")
LIMITS = {"timeout_s": 1.0, "memory_mb": 256, "output_bytes": 1 << 16}
BENIGN = {"style": "call", "code": "def f(x):\n    return x * 2\n", "entry_point": "f",
          "tests": [{"args": [21], "expected": 42}]}
MODES = ("root", "userns", "container")
# What the persistence programs (corpus_pairs/persist_*) plant, if they can.
PLANT_NAME = "grader-corpus-plant"
SYSV_KEY = 0x6A7E5E
TARGETS_LINE = "\nTARGETS = []\n"  # fixtures/corpus_driver.py has the same (it imports nothing)
# A benign sample of a second pool that runs while the corpus is graded: long enough for a
# signalling program to find it alive.
SLEEPER = {"style": "call", "entry_point": "f",
           "code": "import time\ndef f(x):\n    time.sleep(0.25)\n    return x * 2\n",
           "tests": [{"args": [21], "expected": 42}], "limits": {"timeout_s": 5.0}}

Item = tuple[str, dict[str, Any], dict[str, Any]]


def load_program(path: Path, rid: str, mode: str = "root") -> Item:
    """(id, request, expected verdict in ``mode``) of one corpus program."""
    text = path.read_text()
    first, _, _ = text.partition("\n")
    assert first.startswith("# grader: "), f"{path.name} lacks its '# grader:' header"
    header = json.loads(first[len("# grader: "):])
    expect = header.pop("expect")
    per_mode = {m: header.pop(f"expect_{m}", None) for m in MODES}
    repeat = header.pop("test_code_repeat", None)
    if repeat is not None:
        header["test_code"] = repeat["head"] + "".join(
            repeat["body"].replace("{n}", str(n)) for n in range(repeat["times"]))
    req = {"id": rid, "style": "call", "entry_point": "f",
           "tests": [{"args": [2], "expected": 4}], "limits": dict(LIMITS), "code": text}
    req.update(header)
    return rid, req, per_mode[mode] or expect


def load_corpus(mode: str = "root") -> list[Item]:
    return [load_program(p, p.stem, mode) for p in sorted(CORPUS.glob("*.py"))]


def load_pairs(mode: str = "root") -> list[tuple[str, list[Item]]]:
    return [(d.name, [load_program(p, f"{d.name}.{p.stem}", mode)
                      for p in sorted(d.glob("*.py"))])
            for d in sorted(PAIRS_DIR.iterdir()) if d.is_dir()]


def corpus_plan(mode: str = "root") -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    """Every mode grades this: the programs in one batch, each followed by a benign sample;
    then each pair's programs one at a time, then a benign sample. Returns the groups (each
    one ``grade`` call; flattened, one file for the command line) and the expected verdict of
    every id (``{"status": "passed"}`` for the benign ones)."""
    expects: dict[str, Any] = {}
    batch: list[dict[str, Any]] = []
    for name, req, expect in load_corpus(mode):
        batch += [req, dict(BENIGN, id=f"benign-after-{name}")]
        expects[name] = expect
        expects[f"benign-after-{name}"] = {"status": "passed"}
    groups = [batch]
    for pair, steps in load_pairs(mode):
        for rid, req, expect in steps:
            groups.append([req])
            expects[rid] = expect
        groups.append([dict(BENIGN, id=f"benign-after-{pair}")])
        expects[f"benign-after-{pair}"] = {"status": "passed"}
    return groups, expects


def verdict_problem(v: dict[str, Any], expect: dict[str, Any],
                    req: dict[str, Any] | None = None) -> str | None:
    """Why verdict ``v`` (a Verdict.to_dict()) is not the expected one; None when it is."""
    if v.get("status") != expect["status"]:
        return f"status {v.get('status')!r}, expected {expect['status']!r}: {v}"
    if v.get("passed") is not (expect["status"] == "passed"):
        return f"passed is {v.get('passed')!r}: {v}"
    if "error_type" in expect and v.get("error_type") != expect["error_type"]:
        return f"error_type {v.get('error_type')!r}, expected {expect['error_type']!r}: {v}"
    if "tests_passed" in expect and v.get("tests_passed") != expect["tests_passed"]:
        return f"tests_passed {v.get('tests_passed')!r}, expected {expect['tests_passed']!r}: {v}"
    if "max_wall_s" in expect and v.get("wall_s", 0.0) > expect["max_wall_s"]:
        return f"wall_s {v.get('wall_s')} > {expect['max_wall_s']}: {v}"
    if v.get("status") == "timeout" and req is not None and (
            v.get("wall_s", 0.0) >= req["limits"]["timeout_s"] + 0.5):
        return f"timed out late: {v}"
    return None


def plant_leftovers() -> list[str]:
    """What the persistence programs planted on this machine, if anything: files named
    PLANT_NAME in the places they try, System V objects under SYSV_KEY."""
    found = []
    for pattern in ("/tmp", "/var/tmp", "/dev/shm", "/run", "/run/user", "/tmp/grader-sandbox-*",
                    "/tmp/grader-sandbox-*/*", "/tmp/grader-sandbox-*/*/*"):
        found += [p for d in glob.glob(pattern) if os.path.exists(p := f"{d}/{PLANT_NAME}")]
    for kind in ("shm", "msg"):
        try:
            rows = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        except OSError:
            continue
        found += [f"sysv {kind} key {SYSV_KEY:#x}" for row in rows
                  if row.split() and int(row.split()[0]) == SYSV_KEY]
    return found


# --------------------------------------------------------------------------- running it


def pool_pids(pool: GraderPool) -> list[int]:
    """The pool's workers and their template processes (as the workers reported them)."""
    templates = [h.info.get("template_pid") for h in getattr(pool, "_handles", [])]
    return [*pool.worker_pids, *(p for p in templates if isinstance(p, int))]


def with_targets(req: dict[str, Any], pids: list[int]) -> dict[str, Any]:
    """The request with the pids a signalling program should aim at written into its
    ``TARGETS = []`` line (a program without one is returned unchanged)."""
    if TARGETS_LINE not in req["code"]:
        return req
    return dict(req, code=req["code"].replace(TARGETS_LINE, f"\nTARGETS = {pids!r}\n", 1))


def grade_groups(pool: GraderPool, groups: list[list[dict[str, Any]]],
                 targets: list[int]) -> list[Verdict]:
    """Grade each group with one ``grade`` call, in order: a group of one sample goes to the
    pool's first worker, so the samples of a pair run one after another on one worker."""
    out: list[Verdict] = []
    for group in groups:
        out.extend(pool.grade([with_targets(r, targets) for r in group]))
    return out


@contextlib.contextmanager
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process of the caller's uid that no sample may be able to signal."""
    proc = subprocess.Popen(["sleep", "3600"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


class SecondPool:
    """Another pool on the same machine grading benign sleepers until the block ends
    (``with SecondPool() as b: ...``); then ``b.verdicts``, ``b.pids_before``, ``b.pids_after``."""

    def __init__(self, workers: int = 1) -> None:
        self.pool = GraderPool(workers=workers)
        self.pids_before = pool_pids(self.pool)
        self.pids_after: list[int] = []
        self.verdicts: list[Verdict] = []
        self.errors: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._done.is_set():
            try:
                self.verdicts.extend(self.pool.grade([dict(SLEEPER, id=f"sleeper-{n}")]))
            except Exception as exc:  # reported by the tests, never raised in the thread
                self.errors.append(repr(exc))
                return
            n += 1

    def __enter__(self) -> SecondPool:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=60)
        self.pids_after = pool_pids(self.pool)
        self.pool.close()


ITEMS = load_corpus()
PAIRS = load_pairs()
PAIR_STEPS = [step for _, steps in PAIRS for step in steps]
ALL = ITEMS + PAIR_STEPS


# --------------------------------------------------------------------------- root mode


def _real_uids() -> dict[int, int]:
    """pid -> real uid of every process on the machine now."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                found[int(entry)] = int(line.split()[1])
    return found


def _sandbox_processes(uids: set[int]) -> list[int]:
    return [pid for pid, uid in _real_uids().items() if uid in uids]


def _snapshot() -> dict[str, Any]:
    return {
        "canary": sorted((p.name, p.read_bytes()) for p in CANARY.iterdir()),
        "fixtures": sorted(p.name for p in CORPUS.iterdir()),
        "pwned": os.path.exists("/tmp/pwned"),
        "planted": plant_leftovers(),
    }


@pytest.fixture(scope="module")
def graded(pool: GraderPool) -> Iterator[dict[str, Any]]:
    """The whole plan on the session pool (root: fresh uids, namespaces), while a second
    pool grades sleepers and a bystander process runs; their pids, the caller's and the
    pool's own are every signalling program's targets."""
    CANARY.mkdir(exist_ok=True)
    (CANARY / "canary.txt").write_text("original")
    before = _snapshot()
    pids = pool.worker_pids
    groups, expects = corpus_plan("root")
    running = set(_real_uids().values())
    with bystander() as by, SecondPool() as second:
        targets = [os.getpid(), by.pid, *pool_pids(pool), *second.pids_before]
        verdicts = grade_groups(pool, groups, targets)
        bystander_alive = by.poll() is None
    uids_a, uids_b = list(pool.sandbox_uids), list(second.pool.sandbox_uids)
    uids = set(uids_a) | set(uids_b)
    deadline = time.monotonic() + 5.0
    leftovers = _sandbox_processes(uids)
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.05)
        leftovers = _sandbox_processes(uids)
    yield {"verdicts": {v.id: v for v in verdicts}, "expects": expects, "before": before,
           "after": _snapshot(), "pids_before": pids, "pids_after": pool.worker_pids,
           "leftovers": leftovers, "second": second, "bystander_alive": bystander_alive,
           "uids_a": uids_a, "uids_b": uids_b, "uids_running_before": running}
    shutil.rmtree(CANARY, ignore_errors=True)
    for path in plant_leftovers():  # never leave a successful plant for the next run
        with contextlib.suppress(OSError):
            if path.startswith("/"):
                os.unlink(path)
            else:  # a System V object
                subprocess.run(["ipcrm", "-M" if " shm " in path else "-Q", hex(SYSV_KEY)],
                               capture_output=True, timeout=10)


def test_corpus_is_large_enough() -> None:
    assert len(ITEMS) >= 40
    assert len(PAIRS) >= 6


@pytest.mark.parametrize(("name", "req", "expect"), ALL, ids=[i[0] for i in ALL])
def test_hostile_program_gets_intended_verdict(
    graded: dict[str, Any], name: str, req: dict[str, Any], expect: dict[str, Any]
) -> None:
    v: Verdict = graded["verdicts"][name]
    problem = verdict_problem(v.to_dict(), expect, req)
    assert problem is None, problem


def test_root_runs_the_corpus_in_root_mode(pool: GraderPool) -> None:
    # As root the session pool must take the root path (fresh uids from a locked block, its
    # own namespaces): a silent fall-back to another mode would leave root mode untested.
    if os.geteuid() != 0:
        pytest.skip("root mode needs root; test_corpus_modes.py covers the unprivileged user")
    assert pool.isolation.get("mode") == "namespaces", pool.isolation
    assert len(set(pool.sandbox_uids)) > 1


LAYERS = {"worker", "network", "filesystem", "processes", "files", "uid", "limits", "seccomp"}


def test_check_names_every_layer_active_in_root_mode() -> None:
    if os.geteuid() != 0:
        pytest.skip("root mode needs root; test_corpus_modes.py checks the unprivileged user")
    out = subprocess.run([sys.executable, "-m", "grader_sandbox", "check"], capture_output=True,
                         text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert (got["isolation"], got["benign"], got["fork"]) == ("namespaces", "passed", "violation")
    layers = got["layers"]
    assert set(layers) == LAYERS
    assert "fresh uid per sample" in layers["uid"] and "PID namespace" in layers["processes"]
    assert "no /proc" in layers["filesystem"] and "no site-packages" in layers["filesystem"]


def test_two_pools_never_share_a_uid(graded: dict[str, Any]) -> None:
    # A sample can signal only processes of its own uid: two pools' blocks must not overlap,
    # nor include any uid a process on this machine already ran as (the judges' among them).
    if os.geteuid() != 0:
        pytest.skip("uid blocks are root mode's; in a user namespace children keep one uid")
    ours, theirs = set(graded["uids_a"]), set(graded["uids_b"])
    assert ours and theirs and not ours & theirs
    assert not (ours | theirs) & set(graded["uids_running_before"])


def test_worker_serves_the_next_sample_after_every_hostile_one(graded: dict[str, Any]) -> None:
    benign = {k: v for k, v in graded["verdicts"].items() if k.startswith("benign-after-")}
    assert len(benign) == len(ITEMS) + len(PAIRS)
    assert all(v.passed for v in benign.values()), [v.id for v in benign.values() if not v.passed]
    assert graded["pids_after"] == graded["pids_before"], "a worker died and was replaced"


def test_another_pools_samples_and_a_bystander_survive_the_corpus(
        graded: dict[str, Any]) -> None:
    second: SecondPool = graded["second"]
    assert second.errors == []
    assert len(second.verdicts) >= 3, "the second pool did not run alongside the corpus"
    assert [v.id for v in second.verdicts if not v.passed] == []
    assert second.pids_after == second.pids_before, "the second pool lost a process"
    assert graded["bystander_alive"]


def test_no_sandboxed_process_is_left_behind(graded: dict[str, Any]) -> None:
    assert graded["leftovers"] == []


def test_no_file_outside_the_sample_directory_changes(graded: dict[str, Any]) -> None:
    assert graded["after"] == graded["before"]
