"""The service on a Unix socket, its client, and the `grade` command line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from grader_sandbox import GraderClient, GraderError
from grader_sandbox.codec import read_frame_from

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


# -- hostile frames, many clients, large requests ----------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "9" * 400


def _raw_exchange(sock_path: str, bodies: list[bytes]) -> list[dict | None]:
    """Send each body as one frame on one connection; the replies (None once it closed)."""
    replies: list[dict | None] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(sock_path)
        for body in bodies:
            try:
                s.sendall(len(body).to_bytes(4, "big") + body)
                replies.append(read_frame_from(s.recv))
            except OSError:
                replies.append(None)
    return replies


def _grade_body(**fields: object) -> bytes:
    return json.dumps({"op": "grade", "requests": [dict(OK, **fields)]}).encode()


def test_service_answers_hostile_frames_and_keeps_serving(service: tuple) -> None:
    _, sock = service
    bodies = [
        f'{{"op": "grade", "requests": [{DEEP}]}}'.encode(),
        _grade_body(tests=[{"args": [1], "expected": json.loads(DEEP[:150] + DEEP[-150:])}]),
        _grade_body(id="l", limits={"timeout_s": int(HUGE)}),
        _grade_body(id="f", compare={"float_tol": int(HUGE)}),
        _grade_body(id="m", limits={"memory_mb": int(HUGE)}),
        _grade_body(id="t", compare={"float_tol": float("inf")}),
        b'{"op": "grade", "requests": [{"id": "big", "code": ' + b"1" * 5000 + b"}]}",
        b"\xff\xfe not utf-8",
        b'{"op": ' + b"[" * 5000,
        json.dumps({"op": [[1]]}).encode(),
        json.dumps({"op": "health"}).encode(),
        json.dumps({"op": "grade", "requests": [OK]}).encode(),
    ]
    replies = _raw_exchange(sock, bodies)
    assert all(isinstance(r, dict) for r in replies), replies  # never a dropped connection
    *errors, health, graded = replies
    for r in errors:
        assert r is not None and r["ok"] is False, r
        assert isinstance(r["error"], str) and "\n" not in r["error"] and len(r["error"]) <= 500
    assert "'tests[0].expected'" in errors[1]["error"]
    assert "limits.timeout_s" in errors[2]["error"] and "'compare.float_tol'" in errors[3]["error"]
    assert "limits.memory_mb" in errors[4]["error"] and "'compare.float_tol'" in errors[5]["error"]
    assert health is not None and health["ok"] is True
    assert graded is not None and graded["ok"] is True and graded["verdicts"][0]["passed"]


def test_a_torn_or_oversized_frame_ends_only_its_connection(service: tuple) -> None:
    _, sock = service
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(60)
        s.connect(sock)
        s.sendall((1 << 30).to_bytes(4, "big"))  # declares 1 GiB, more than MAX_FRAME
        reply = read_frame_from(s.recv)
        assert reply is not None and reply["ok"] is False and "exceeds" in reply["error"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock)
        s.sendall((100).to_bytes(4, "big") + b'{"op"')  # and then hangs up mid-frame
    with GraderClient(sock, timeout=60) as client:
        assert client.grade([OK])[0].passed


def test_many_simultaneous_clients_all_get_their_verdicts(service: tuple) -> None:
    """40 clients connect while the service is stopped (SIGSTOP: nothing is accepted, every
    connection waits in the listen queue), then it continues: all must be served."""
    proc, sock = service
    n = 40
    clients = [GraderClient(sock, timeout=60) for _ in range(n)]
    connected = threading.Barrier(n + 1)
    results: list[object] = [None] * n

    def run(i: int) -> None:
        try:
            clients[i]._connect()
        except GraderError as exc:
            results[i] = exc
        connected.wait()
        if results[i] is None:
            try:
                results[i] = clients[i].grade([dict(OK, id=f"c{i}")])[0]
            except GraderError as exc:
                results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    proc.send_signal(signal.SIGSTOP)
    try:
        for t in threads:
            t.start()
        connected.wait(timeout=120)
    finally:
        proc.send_signal(signal.SIGCONT)
    for t in threads:
        t.join(timeout=300)
    for c in clients:
        c.close()
    failures = [r for r in results if not (hasattr(r, "passed") and r.passed)]  # type: ignore[union-attr]
    assert failures == []
    assert sorted(r.id for r in results) == sorted(f"c{i}" for i in range(n))  # type: ignore[union-attr]


def test_a_client_with_a_timeout_waits_for_a_service_that_is_starting(tmp_path: Path) -> None:
    sock = str(tmp_path / "later.sock")
    reply: list[object] = []

    def ask() -> None:
        try:
            reply.append(GraderClient(sock, timeout=120).health())
        except GraderError as exc:
            reply.append(exc)

    asker = threading.Thread(target=ask)
    asker.start()  # before the service exists: ENOENT, then ECONNREFUSED or EAGAIN, retried
    proc = subprocess.Popen(
        [sys.executable, "-m", "grader_sandbox", "serve", "--socket", sock, "--workers", "1"],
        cwd=ROOT, env=ENV)
    try:
        asker.join(timeout=180)
        assert len(reply) == 1 and isinstance(reply[0], dict) and reply[0]["ok"] is True, reply
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_large_test_code_is_carried_whole(service: tuple) -> None:
    """A 270 KB test_code (and a 1 MB program) pass through the client and the service."""
    _, sock = service
    padding = "".join(f"# padding line {i:06d} {'x' * 40}\n" for i in range(5200))
    test_code = padding + "def check(candidate):\n    assert candidate(1) == 2\n"
    assert len(test_code) > 270_000
    req = {"id": "big-tests", "style": "assert", "entry_point": "f",
           "code": OK["code"], "test_code": test_code}
    asserts = "".join(f"assert f({i}) == {i + 1}\n" for i in range(12_000))
    assert len(asserts) > 270_000
    req2 = dict(req, id="big-asserts", test_code=asserts, limits={"timeout_s": 60})
    big_code = dict(OK, id="big-code", code="#" * 1_000_000 + "\n" + str(OK["code"]))
    with GraderClient(sock, timeout=180) as client:
        reply = client._call({"op": "grade", "requests": [req, req2, big_code]})
    assert reply["ok"] is True, reply
    got = [(v["id"], v["status"], v["tests_passed"]) for v in reply["verdicts"]]
    assert got == [("big-tests", "passed", 1), ("big-asserts", "passed", 12_000),
                   ("big-code", "passed", 1)]


def test_grade_command_flags_only_the_hostile_lines(tmp_path: Path) -> None:
    reqs = tmp_path / "hostile.jsonl"
    ok2 = dict(OK, id="ok2")
    lines = [
        json.dumps(OK).encode(),
        DEEP.encode(),
        json.dumps(dict(OK, id="lim")).encode().replace(
            b'"id": "lim"', b'"id": "lim", "limits": {"timeout_s": ' + HUGE.encode() + b"}"),
        json.dumps(dict(OK, id="tol")).encode().replace(
            b'"id": "tol"', b'"id": "tol", "compare": {"float_tol": ' + HUGE.encode() + b"}"),
        b'{"id": "digits", "x": ' + b"1" * 5000 + b"}",
        b'{"id": "bytes\xff"}',
        json.dumps(dict(OK, id="deepid")).encode().replace(
            b'"id": "deepid"', b'"id": ' + ("[" * 50 + "]" * 50).encode()),
        json.dumps(ok2).encode(),
    ]
    reqs.write_bytes(b"\n".join(lines) + b"\n")
    out = subprocess.run(
        [sys.executable, "-m", "grader_sandbox", "grade", str(reqs), "--workers", "1"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 2, out.stderr
    verdicts = [json.loads(line) for line in out.stdout.splitlines()]
    assert [v["id"] for v in verdicts] == ["ok", "line2", "lim", "tol", "line5", "line6",
                                           "line7", "ok2"]
    assert [v["status"] for v in verdicts] == ["passed"] + ["error"] * 6 + ["passed"]
    assert all(v["error_type"] == "InvalidRequest" for v in verdicts[1:7])
    bad_lines = [ln for ln in out.stderr.splitlines() if ln.startswith("grader_sandbox grade:")]
    assert [ln.split(":")[1].strip() for ln in bad_lines] == [f"line {i}" for i in range(2, 8)]
    assert "limits.timeout_s" in bad_lines[1] and "compare.float_tol" in bad_lines[2]
    assert "Traceback" not in out.stderr
