"""The hostile corpus in the grader's two other modes: as an unprivileged user (the worker
then builds its layers in a user namespace) and inside the real grader container under its
seccomp profile. Same loader, same programs and expected verdicts as root mode
(test_corpus.py; a header's ``expect_userns`` / ``expect_container`` would differ).

Both run fixtures/corpus_driver.py, the caller a sample would attack: it grades the plan
through ``python -m grader_sandbox grade --workers 1`` (so each pair's samples follow one
another on one worker), while a second ``grade`` process grades sleepers and a bystander
process sleeps, all with the samples' own outer uid; the signalling programs aim at the
driver and the bystander (their pids in TARGETS) and scan for the rest.

User-namespace mode (run as root; skipped otherwise): the driver runs as uid/gid 65534 in a
private mount namespace in which every directory on the way to the interpreter that others
cannot search (/root, for pyenv) is covered by an empty tmpfs with only the interpreter's
prefix bound back, and /tmp is a private tmpfs holding only the driver's directory (owned
by 65534, mode 0700: its files and outputs), the canary and the pools' scratch. The package
is a copy of this checkout's grader_sandbox/ in that directory.

Container mode (slow): the grader image from the `docker_images` fixture, the documented run
flags (test_container.RUN_FLAGS), the driver and the plan mounted read-only at /corpus, a
writable volume at /run/grader (nothing may land there), and `--init`: the driver must not
be the container's process 1, which the kernel shields from SIGKILL sent inside its namespace
(that would make "the caller survives" hold trivially) and which must reap the processes
orphaned when a pool's workers exit (their templates).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_corpus import ALL, ITEMS, PAIRS, corpus_plan, plant_leftovers, verdict_problem

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DRIVER = HERE / "fixtures" / "corpus_driver.py"
NOBODY = 65534
CANARY = "/tmp/grader-sandbox-canary"
# Programs that do no harm: in every mode they must pass, whatever the hostile ones get,
# which is what proves the runner itself works.
BENIGN_PROGRAMS = ("capacity_eight_live_threads", "capacity_large_test_code_asserts",
                   "capacity_large_test_code_check", "capacity_sixty_four_live_threads",
                   "write_own_workdir_benign", "stdio_exit_after_answer_benign",
                   "benign_standard_containers", "stdio_ascii_whitespace_benign")


def _write_plan(directory: Path, mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plan as one JSON-lines file (the command line's input); (expects, requests)."""
    groups, expects = corpus_plan(mode)
    reqs = {r["id"]: r for g in groups for r in g}
    (directory / "requests.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for g in groups for r in g))
    shutil.copy(DRIVER, directory / "driver.py")
    return expects, reqs


def _last_json(stdout: str) -> dict[str, Any]:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    assert lines, f"the driver printed no result:\n{stdout[-3000:]}"
    return json.loads(lines[-1])


def _blocking_ancestor(path: str) -> str | None:
    """The first directory on the way to ``path`` that others cannot search, if any."""
    cur = "/"
    for part in Path(path).parts[1:]:
        cur = os.path.join(cur, part)
        if not os.stat(cur).st_mode & stat.S_IXOTH:
            return cur
    return None


def _userns_script(work: Path) -> str:
    """The shell run by `unshare --mount --propagation private`: covers, binds, drops to 65534."""
    keep = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)})
    covers: dict[str, list[str]] = {}
    for path in keep:
        top = _blocking_ancestor(path)
        if top is not None:
            covers.setdefault(top, []).append(path)
    q = shlex.quote
    lines = ["set -e", f"cd {q(str(work))}"]
    holds = []
    for top, paths in covers.items():
        for path in paths:
            hold = f".hold-{len(holds)}"
            holds.append((hold, path))
            lines += [f"mkdir {hold}", f"mount --bind {q(path)} {hold}"]
        lines.append(f"mount -t tmpfs -o mode=0755,size=4m grader-cover {q(top)}")
    for hold, path in holds:
        lines += [f"mkdir -p {q(path)}", f"mount --move {hold} {q(path)}", f"rmdir {hold}"]
    # A private /tmp: the driver's directory (still reachable as the cwd), the canary and the
    # pools' scratch, nothing of the machine's /tmp.
    lines += ["mount -t tmpfs -o mode=1777,size=512m grader-tmp /tmp",
              "mkdir /tmp/corpus", "mount --no-canonicalize --bind . /tmp/corpus", "cd /tmp/corpus"]
    py = q(os.path.realpath(sys.executable))
    lines.append(
        f"exec setpriv --reuid {NOBODY} --regid {NOBODY} --clear-groups -- env -i "
        f"PATH=/usr/bin:/bin LANG=C.UTF-8 HOME=/tmp/corpus PYTHONPATH=/tmp/corpus/pkg "
        f"{py} driver.py --requests requests.jsonl --scratch /tmp/corpus/run --python {py} "
        f"--watch /tmp --canary {CANARY}")
    return "\n".join(lines)


def _userns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root, to run the corpus as uid 65534 in a private mount namespace"
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            return f"needs {tool} (util-linux)"
    probe = subprocess.run(["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY),
                            "--clear-groups", "unshare", "--user", "--map-root-user", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return ("unprivileged user namespaces are not available here "
                f"({probe.stderr.strip()}): the grader's user-namespace mode cannot run")
    return None


@pytest.fixture(scope="module")
def userns_run() -> Iterator[dict[str, Any]]:
    why = _userns_unavailable()
    if why:
        pytest.skip(why)
    work = Path(tempfile.mkdtemp(prefix="grader-corpus-userns-", dir="/tmp"))
    try:
        expects, reqs = _write_plan(work, "userns")
        shutil.copytree(REPO / "grader_sandbox", work / "pkg" / "grader_sandbox",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for here, dirs, files in os.walk(work):
            for name in [*dirs, *files]:
                os.chown(os.path.join(here, name), NOBODY, NOBODY)
        os.chown(work, NOBODY, NOBODY)
        os.chmod(work, 0o700)
        planted_before = plant_leftovers()
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            _userns_script(work)], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        result = _last_json(r.stdout)
        result.update(expects=expects, reqs=reqs, planted_before=planted_before,
                      planted_after=plant_leftovers())
        yield result
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def container_run(docker_images: dict[str, str]) -> Iterator[dict[str, Any]]:
    from test_container import RUN_FLAGS

    work = Path(tempfile.mkdtemp(prefix="grader-corpus-container-"))
    # A writable volume, as the documented run mounts /run/grader: nothing a sample writes
    # may land (or persist) there.
    volume = Path(tempfile.mkdtemp(prefix="grader-corpus-volume-"))
    volume.chmod(0o777)
    try:
        expects, reqs = _write_plan(work, "container")
        os.chmod(work, 0o755)
        for p in work.iterdir():
            p.chmod(0o644)
        r = subprocess.run(
            ["docker", "run", *RUN_FLAGS, "--init", "-v", f"{work}:/corpus:ro",
             "-v", f"{volume}:/run/grader",
             "--entrypoint", "python3",
             docker_images["grader"], "/corpus/driver.py", "--requests",
             "/corpus/requests.jsonl", "--scratch", "/tmp/run", "--python", "python3",
             "--watch", "/tmp", "--canary", CANARY],
            capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        result = _last_json(r.stdout)
        result.update(expects=expects, reqs=reqs, volume_after=sorted(os.listdir(volume)))
        yield result
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(volume, ignore_errors=True)


MODE_FIXTURES = {"userns": "userns_run", "container": "container_run"}
MODE_MARKS = {"userns": (), "container": (pytest.mark.slow,)}


PER_MODE = [pytest.param(m, id=m, marks=MODE_MARKS[m]) for m in MODE_FIXTURES]


def _mode_params(items: list[Any]) -> list[Any]:
    return [pytest.param(mode, *item, id=f"{mode}-{item[0]}", marks=MODE_MARKS[mode])
            for mode in MODE_FIXTURES for item in items]


def _run(request: pytest.FixtureRequest, mode: str) -> dict[str, Any]:
    return request.getfixturevalue(MODE_FIXTURES[mode])


def _verdicts(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["id"]: v for v in run["a"]["verdicts"]}


@pytest.mark.parametrize("mode", PER_MODE)
def test_the_workers_take_this_modes_path(request: pytest.FixtureRequest, mode: str) -> None:
    run = _run(request, mode)
    assert run["check"].get("isolation") == mode, run["check"]
    assert run["check"].get("benign") == "passed" and run["check"].get("fork") == "violation"
    layers = run["check"].get("layers", {})
    assert "user namespace" in layers.get("worker", ""), layers
    assert "PID namespace" in layers.get("processes", "") and "no /proc" in layers["filesystem"]
    assert run["uid"] == (NOBODY if mode == "userns" else 10001)


@pytest.mark.parametrize("mode", PER_MODE)
def test_the_runner_works_benign_samples_pass(request: pytest.FixtureRequest, mode: str) -> None:
    run = _run(request, mode)
    assert run["a"]["rc"] == 0, run["a"]["stderr"]
    got = _verdicts(run)
    assert set(got) == set(run["expects"]), "the command line lost or added verdicts"
    benign = [rid for rid in got if rid.startswith("benign-after-") or rid in BENIGN_PROGRAMS]
    assert len(benign) == len(ITEMS) + len(PAIRS) + len(BENIGN_PROGRAMS)
    assert [rid for rid in benign if got[rid]["status"] != "passed"] == []


@pytest.mark.parametrize(("mode", "name", "req", "expect"), _mode_params(ALL))
def test_hostile_program_gets_intended_verdict(request: pytest.FixtureRequest, mode: str,
                                               name: str, req: dict[str, Any],
                                               expect: dict[str, Any]) -> None:
    run = _run(request, mode)
    v = _verdicts(run).get(name)
    assert v is not None, f"no verdict for {name}"
    problem = verdict_problem(v, run["expects"][name], run["reqs"][name])
    assert problem is None, problem


@pytest.mark.parametrize("mode", PER_MODE)
def test_the_caller_another_pool_and_a_bystander_survive(request: pytest.FixtureRequest,
                                                         mode: str) -> None:
    run = _run(request, mode)
    assert run["a"]["rc"] == 0, run["a"]["stderr"]  # the driver printed: it survived too
    assert run["bystander_alive"]
    assert run["b"], "the second pool never ran"
    bad = [(b["rc"], v) for b in run["b"] for v in b["verdicts"] if v["status"] != "passed"]
    assert bad == [] and all(b["rc"] == 0 for b in run["b"]), run["b"][-1]
    assert sum(len(b["verdicts"]) for b in run["b"]) >= 4


@pytest.mark.parametrize("mode", PER_MODE)
def test_no_sandboxed_process_is_left_behind(request: pytest.FixtureRequest, mode: str) -> None:
    assert _run(request, mode)["leftovers"] == []


@pytest.mark.parametrize("mode", PER_MODE)
def test_no_file_outside_the_sample_directory_changes(request: pytest.FixtureRequest,
                                                      mode: str) -> None:
    run = _run(request, mode)
    before, after = run["before"]["/tmp"], run["after"]["/tmp"]
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert changed == []
    assert f"{CANARY}/canary.txt" in after
    if mode == "userns":  # the machine's own shared places (the container has its own)
        assert run["planted_after"] == run["planted_before"] == []
    else:  # the container's writable volume
        assert run["volume_after"] == []
