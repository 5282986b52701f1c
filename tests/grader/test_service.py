"""The service on a Unix socket, its client, and the `grade` command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from grader_sandbox import GraderClient, GraderError

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
OK = {"id": "ok", "style": "call", "code": "def f(x):\n    return x + 1\n", "entry_point": "f",
      "tests": [{"args": [1], "expected": 2}]}
FORK = {"id": "fork", "style": "call", "entry_point": "f",
        "code": "import os\ndef f(x):\n    os.fork()\n    return x\n",
        "tests": [{"args": [1], "expected": 1}]}


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    sock = str(tmp_path / "grader.sock")
    proc = subprocess.Popen(
        [sys.executable, "-m", "grader_sandbox", "serve", "--socket", sock, "--workers", "2"],
        cwd=ROOT, env=ENV,
    )
    deadline = time.monotonic() + 60
    while not os.path.exists(sock):
        assert proc.poll() is None, "service exited at start"
        assert time.monotonic() < deadline, "service did not start"
        time.sleep(0.05)
    yield proc, sock
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_client_grades_batches_like_the_pool(service: tuple) -> None:
    _, sock = service
    with GraderClient(sock) as client:
        assert client.health()["ok"] is True
        verdicts = client.grade([OK, FORK, dict(OK, id="ok2")])
        assert [(v.id, v.status) for v in verdicts] == [
            ("ok", "passed"), ("fork", "violation"), ("ok2", "passed")]
        assert client.grade([]) == []


def test_health_command_reports_a_running_service(service: tuple) -> None:
    _, sock = service
    out = subprocess.run([sys.executable, "-m", "grader_sandbox", "health", "--socket", sock],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ok"] is True


def test_invalid_request_is_refused_with_one_clear_error(service: tuple) -> None:
    _, sock = service
    with GraderClient(sock) as client, pytest.raises(GraderError, match=r"id='bad'.*'style'"):
        client.grade([dict(OK, id="bad", style="nope")])
    with GraderClient(sock) as client:
        reply = client._call({"op": "grade", "requests": [dict(OK, id="bad2", tests=[])]})
        assert reply["ok"] is False and "id='bad2'" in reply["error"]
        assert client._call({"op": "nope"})["ok"] is False


def test_sigterm_shuts_down_cleanly(service: tuple) -> None:
    proc, sock = service
    with GraderClient(sock) as client:
        assert client.grade([OK])[0].passed
    workers = _children(proc.pid)
    assert workers
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not os.path.exists(sock)
    time.sleep(0.2)
    assert [pid for pid in workers if os.path.exists(f"/proc/{pid}")] == []


def test_client_without_service_fails_with_cause_and_fix(tmp_path: Path) -> None:
    with pytest.raises(GraderError, match="grader_sandbox serve"):
        GraderClient(str(tmp_path / "nothing.sock")).grade([OK])


def test_grade_command_writes_one_verdict_line_per_request_in_order(tmp_path: Path) -> None:
    reqs = tmp_path / "requests.jsonl"
    lines = [json.dumps(OK), json.dumps(FORK), "{not json", json.dumps(dict(OK, id="x", style="?")),
             json.dumps({"id": "s", "style": "stdio", "code": "print(input()[::-1])",
                         "tests": [{"input": "abc\n", "output": "cba\n"}]})]
    reqs.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [sys.executable, "-m", "grader_sandbox", "grade", str(reqs), "--workers", "1"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2, out.stderr  # invalid lines are graded as errors and flagged
    assert out.stderr.count("line 3:") == 1 and "line 4:" in out.stderr
    verdicts = [json.loads(line) for line in out.stdout.splitlines()]
    assert [v["id"] for v in verdicts] == ["ok", "fork", "line3", "x", "s"]
    assert [v["status"] for v in verdicts] == ["passed", "violation", "error", "error", "passed"]
    assert verdicts[2]["error_type"] == "InvalidRequest"
    for v in verdicts:
        assert set(v) == {"id", "passed", "status", "error_type", "tests_passed", "tests_total",
                          "wall_s"}
