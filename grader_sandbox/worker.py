"""The grader worker: ``python -m grader_sandbox.worker`` (started by the pool, never forked).

At start the worker enters its namespaces and builds the samples' filesystem view (see
isolation.py), builds the seccomp filters, and starts a *template* process, which pivots into
the view. Per sample the template forks the program child (and, for ``assert``-style samples,
a fresh judge); the template only ever receives the program and the test inputs, never
expected values or test code, so no sandboxed program's memory (not even freed memory) holds
an answer. The worker itself keeps the expected values, enforces the wall-clock limit
(SIGKILL: each child is process 1 of its own PID namespace, so everything in it dies), caps
the output it reads, reaps everything and compares. A sample's files live in its own tmpfs,
which the kernel frees when the sample ends.

Protocol with the pool (stdin/stdout of the worker): frames of JSON (see codec.py).
  worker -> pool: {"ready": true, "isolation": {...}} or {"error": "one line"} at start
  pool -> worker: a validated request (schema.validate_request); worker -> pool: a verdict dict
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import traceback
from dataclasses import asdict
from typing import Any

from grader_sandbox.codec import (
    FrameBuffer,
    FrameError,
    OutputLimitError,
    from_plain,
    read_frame,
    to_plain,
    write_frame,
)
from grader_sandbox.compare import stdout_matches, values_equal
from grader_sandbox.confine import PR_SET_DUMPABLE
from grader_sandbox.isolation import (
    IsolationError,
    SeccompFilters,
    WorkerIsolation,
    build_seccomp_filters,
    clear_dir_marks,
    empty_dir,
    layers,
    setup_worker,
)
from grader_sandbox.procs import Poller, Proc, Run

# Imported once by the template so that program children and the judge find them loaded:
# what model-written solutions import most. Each one costs every fork a little.
PRELOAD = ["bisect", "collections", "copy", "functools", "heapq", "itertools", "math",
           "operator", "re", "string", "typing"]

SETUP_FAILED_CODES = (70, 71)
_CHILD_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
              "HOME": "/work", "TMPDIR": "/work"}
_libc = ctypes.CDLL(None, use_errno=True)
# Fault injection, for testing what callers do when the sandbox fails (not a limit): this
# share of samples, chosen by a hash of the request (so a retry fails again), have their
# program child end as a failed sandbox set-up would (verdict crashed / SandboxSetupFailed).
INJECT_ENV = "GRADER_SANDBOX_INJECT_SETUP_FAILURES"
_INJECT_SHARE = float(os.environ.get(INJECT_ENV) or 0.0)


def _injected(req: dict[str, Any]) -> bool:
    if _INJECT_SHARE <= 0:
        return False
    import hashlib

    digest = hashlib.sha256(f"{req['id']}\0{req['code']}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < _INJECT_SHARE


# ---------------------------------------------------------------------------------------------
# one sample


_JUDGE_MAX_JOBS = 500  # replace the judge now and then so no state accumulates for long


class _Judge:
    """The confined judge process (assert style), forked by the template like a program
    child (the samples' view, its own namespaces and uid), serving many samples."""

    def __init__(self, worker: Worker) -> None:
        self.sock, jsock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = worker._fork_child({"role": "judge"}, b"",
                                           [None, None, None, jsock.fileno()])
        finally:
            jsock.close()
        self.jobs = 0

    def usable(self) -> bool:
        return self.proc.alive() and self.jobs < _JUDGE_MAX_JOBS

    def stop(self) -> Proc:
        """Kill it and close its socket; returns the process, for the caller to reap."""
        self.proc.kill()
        self.sock.close()
        return self.proc


class Worker:
    def __init__(self, iso: WorkerIsolation, filters: SeccompFilters) -> None:
        self.iso = iso
        self.filters = filters
        self.my_pid = os.getpid()
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.template = self._start_template()
        self.template_pid = self.template.pid
        self.judge: _Judge | None = None
        self.inject = False  # INJECT_ENV applies once the start-up self-test has passed
        self.work = os.path.join(iso.view, "work")  # the samples' /work, as the worker sees it
        self._uid_n = 0
        self._dirty = False
        # Children we SIGKILLed once their results were in (or that ended on their own): their
        # exit reports are collected before the next sample starts, off every sample's clock.
        self._pending: list[Proc] = []

    def _start_template(self) -> subprocess.Popen[bytes]:
        """Start the lean template interpreter and hand it the filters, uids and view."""
        self.sock, tsock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = ("import sys; sys.path.insert(0, sys.argv[1]); "
                "from grader_sandbox.template import main; main(int(sys.argv[2]))")
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", code, pkg_parent, str(tsock.fileno())],
            pass_fds=(tsock.fileno(),), stdin=self.devnull, cwd="/", close_fds=True,
        )
        tsock.close()
        bpfs = []
        for prog in (self.filters.template, self.filters.program_delta,
                     self.filters.judge_delta):
            fd = os.memfd_create("bpf", os.MFD_CLOEXEC)
            os.write(fd, prog.code)
            bpfs.append(fd)
        config = {"uid_base": self.iso.uid_base, "drop_caps": self.iso.drop_caps, "env": _CHILD_ENV, "preload": PRELOAD,
                  "view": self.iso.view}
        socket.send_fds(self.sock, [json.dumps(config).encode()], bpfs)
        for fd in bpfs:
            os.close(fd)
        if self.sock.recv(4096) != b'{"ready": true}':
            raise IsolationError("the template process failed to start; see stderr")
        return proc

    # -- helpers ---------------------------------------------------------------------------

    def _fork_child(self, header: dict[str, Any], payload: bytes,
                    fds: list[int | None]) -> Proc:
        """Have the template fork a child with ``fds`` as its descriptors 0.. (None: a
        /dev/null the child opens itself, so that no open file description, with its flags
        and locks, is shared with the worker or with another sample). ``payload`` travels in
        a memfd (any size) that only the child reads, never the template."""
        header = dict(header, null=[i for i, fd in enumerate(fds) if fd is None])
        mfd = os.memfd_create("payload", os.MFD_CLOEXEC)
        try:
            os.write(mfd, payload)
            socket.send_fds(self.sock, [json.dumps(header).encode()],
                            [mfd, *(fd for fd in fds if fd is not None)])
        finally:
            os.close(mfd)
        msg = json.loads(self.sock.recv(4096))
        if not isinstance(msg, dict) or type(msg.get("pid")) is not int:
            raise RuntimeError("bad message from the template process")
        return Proc(msg["pid"])

    def _get_judge(self) -> _Judge:
        if self.judge is not None and not self.judge.usable():
            self._pending.append(self.judge.stop())
            self.judge = None
        if self.judge is None:
            self.judge = _Judge(self)
        return self.judge

    def settle(self) -> None:
        """Collect the exit reports of the previous sample's children, then empty /work
        (every process that could write there is gone: each child was process 1 of its PID
        namespace). Runs before the next sample's clock starts."""
        while self._pending:
            proc = self._pending.pop()
            proc.reap()
            proc.close()
        if self._dirty:
            self._dirty = False
            try:
                if os.listdir(self.work):
                    empty_dir(self.work)
                clear_dir_marks(self.work)  # nothing of the sample's: not /work's xattrs
                os.chmod(self.work, 0o700)  # or inode flags, its mode
                os.utime(self.work, (0, 0))  # or its times reaches the next sample
            except OSError:
                # A /work that cannot be emptied must not reach another sample: end this worker
                # (the pool replaces it; a sample in flight is reported as WorkerDied).
                traceback.print_exc()
                os._exit(4)

    def _next_uid(self) -> int | None:
        """A program child's uid: the next of this worker's block (its first is the judge's)."""
        if self.iso.uid_base is None:
            return None
        self._uid_n = self._uid_n % (self.iso.uid_count - 1) + 1
        return self.iso.uid_base + self._uid_n

    @staticmethod
    def _public_spec(req: dict[str, Any]) -> dict[str, Any]:
        """What the program child may know: never expected outputs, never the test code."""
        spec: dict[str, Any] = {"style": req["style"], "code": req["code"],
                                "limits": req["limits"]}
        if req["style"] == "call":
            spec["entry_point"] = req["entry_point"]
            spec["tests"] = [
                {"args": to_plain(t["args"]), "kwargs": to_plain(t["kwargs"])}
                for t in req["tests"]
            ]
        elif req["style"] == "stdio":
            spec["inputs"] = [t["input"] for t in req["tests"]]
            spec["output_bytes"] = req["limits"]["output_bytes"]
        else:
            spec["entry_point"] = req["entry_point"]
        return spec

    # -- grading ---------------------------------------------------------------------------

    def grade(self, req: dict[str, Any]) -> dict[str, Any]:
        self.settle()  # the previous sample's clean-up, before this sample's clock starts
        t0 = time.monotonic()
        deadline = t0 + float(req["limits"]["timeout_s"])
        run = Run(req)
        try:
            self._start_children(req, run)
            self._supervise(run, deadline)
        finally:
            run.close_fds()
            prog = run.prog
            if prog is not None and run.deferred:
                self._pending.append(prog)  # killed once complete: its status is not needed
            elif prog is not None:
                prog.kill()
                prog.reap()  # the verdict reads how it ended
                prog.close()
            if run.judge_broken and self.judge is not None:
                self._pending.append(self.judge.stop())
                self.judge = None
        verdict = self._verdict(req, run)
        verdict["wall_s"] = round(time.monotonic() - t0, 6)
        return verdict

    def _start_children(self, req: dict[str, Any], run: Run) -> None:
        style = req["style"]
        res_r, res_w = run.pipe()
        con_r, con_w = run.pipe()
        run.res_r, run.con_r = res_r, con_r
        # assert style: the program's pipes to the judge, (calls in, replies out) on its side
        # and (calls out, replies in) on the judge's
        prog_side: list[int | None] = [None, None]
        judge_side: list[int] = []
        if style == "assert":
            call_r, call_w = run.pipe()  # judge -> program
            reply_r, reply_w = run.pipe()  # program -> judge
            prog_side, judge_side = [call_r, reply_w], [reply_r, call_w]
        spec = json.dumps(self._public_spec(req)).encode()
        uid = self._next_uid()
        if uid is not None:
            os.chown(self.work, uid, uid)
        self._dirty = True
        header = {"role": "program", "uid": uid, "limits": req["limits"],
                  "fail_setup": bool(self.inject and _injected(req))}
        run.prog = self._fork_child(header, spec, [None, con_w, con_w, res_w, *prog_side])
        run.close(con_w, res_w, *(fd for fd in prog_side if fd is not None))
        if judge_side:
            judge = self._get_judge()
            code_fd = os.memfd_create("tests", os.MFD_CLOEXEC)  # any size (a socket message
            run.opened.append(code_fd)                          # is not)
            os.write(code_fd, req["test_code"].encode("utf-8", "surrogatepass"))
            try:
                socket.send_fds(judge.sock, [json.dumps({"entry_point": req["entry_point"]})
                                             .encode()], [code_fd, *judge_side])
            except OSError:
                run.judge_broken = True
            judge.jobs += 1
            run.judge = judge
            run.close(code_fd, *judge_side)

    def _supervise(self, run: Run, deadline: float) -> None:
        """Collect results until complete, the deadline, or the children's end."""
        req, prog, judge = run.req, run.prog, run.judge
        assert prog is not None
        out_cap = int(req["limits"]["output_bytes"])
        n_tests = len(req["tests"]) if req["style"] != "assert" else 0
        # The program child never writes a frame whose payload exceeds out_cap (JSON escaping
        # may grow it up to 6x): a larger declared frame is forged.
        results = FrameBuffer(max_total=8 * out_cap * (n_tests + 1) + (1 << 20),
                              max_frame=8 * out_cap + (1 << 16))
        sel = Poller()
        sel.register(run.res_r, selectors.EVENT_READ, "res")
        sel.register(run.con_r, selectors.EVENT_READ, "con")
        if prog.pidfd is not None:
            sel.register(prog.pidfd, selectors.EVENT_READ, "pexit")
        else:
            prog.reap()
        if judge is not None and not run.judge_broken:
            sel.register(judge.sock, selectors.EVENT_READ, "judge")
            if judge.proc.pidfd is not None:
                sel.register(judge.proc.pidfd, selectors.EVENT_READ, "jexit")
        res_open = True

        def stop_all() -> None:
            prog.kill()
            if judge is not None and run.judge_result is None:
                run.judge_broken = True  # killed mid-job: it cannot be reused
                judge.proc.kill()

        try:
            while True:
                if run.complete():
                    if prog.status is None:
                        prog.kill()  # everything needed is in; do not wait for stragglers
                        run.deferred = True
                    return
                if prog.status is not None and not res_open and (
                        judge is None or run.judge_broken or run.judge_result is not None):
                    return
                now = time.monotonic()
                if now >= deadline and not run.timed_out:
                    run.timed_out = True
                    stop_all()
                wait = 1.0 if run.timed_out else max(0.0, deadline - now)
                for key, _ in sel.select(timeout=wait):
                    tag = key.data
                    if tag == "pexit":
                        prog.reap()
                        sel.unregister(key.fd)
                    elif tag == "judge":
                        try:
                            raw = judge.sock.recv(1 << 16)  # type: ignore[union-attr]
                            run.judge_result = json.loads(raw) if raw else None
                        except (OSError, ValueError):
                            raw = b""
                        if not raw or not isinstance(run.judge_result, dict):
                            run.judge_result = None
                            run.judge_broken = True
                        sel.unregister(key.fd)
                    elif tag == "jexit":
                        run.judge_broken = run.judge_result is None
                        sel.unregister(key.fd)
                    elif tag == "con":
                        data = os.read(key.fd, 1 << 16)
                        run.console += len(data)
                        if not data or run.console > out_cap:
                            if data:
                                run.output_limit = True
                                stop_all()
                            sel.unregister(key.fd)
                    else:  # results
                        data = os.read(key.fd, 1 << 16)
                        if not data:
                            res_open = False
                            sel.unregister(key.fd)
                            if results.pending and not run.complete():
                                run.protocol = True  # a torn or forged frame
                            continue
                        try:
                            frames = results.feed(data)
                        except FrameError as exc:
                            if isinstance(exc, OutputLimitError):
                                run.output_limit = True
                            else:
                                run.protocol = True
                            stop_all()
                            res_open = False
                            sel.unregister(key.fd)
                            continue
                        for frame in frames:
                            self._take_result(req, frame, run)
                        if run.protocol:
                            stop_all()
        finally:
            sel.close()

    def _take_result(self, req: dict[str, Any], frame: Any, run: Run) -> None:
        if not isinstance(frame, dict):
            run.protocol = True
            return
        if "load_error" in frame and req["style"] != "assert" and run.load_error is None:
            run.load_error = str(frame["load_error"])[:100]
            return
        i = frame.get("i")
        if (req["style"] == "assert" or type(i) is not int or not 0 <= i < len(req["tests"])
                or i in run.results):
            run.protocol = True  # nothing legitimate writes twice or out of range
            return
        run.results[i] = frame

    @staticmethod
    def _test_outcome(req: dict[str, Any], i: int, frame: dict[str, Any]) -> str | None:
        """None when test i passed, "failed" when wrong, else the error type."""
        test = req["tests"][i]
        tol = req["compare"]["float_tol"]
        if req["style"] == "call":
            if "error" in frame:
                return str(frame["error"])[:100]
            try:
                # keyed=False: no hash table built from the sample's keys (colliding hashes
                # would make decoding quadratic, here, outside every sample's clock)
                value = from_plain(frame.get("value"), keyed=False)
            except (ValueError, RecursionError):
                return "ProtocolViolation"
            return None if values_equal(value, test["expected"], tol) else "failed"
        out = frame.get("stdout")
        if not isinstance(out, str):
            return "ProtocolViolation"
        if frame.get("truncated"):
            return "OutputLimit"
        if "error" in frame:
            return str(frame["error"])[:100]
        return None if stdout_matches(out, test["output"], tol) else "failed"

    def _verdict(self, req: dict[str, Any], run: Run) -> dict[str, Any]:
        v: dict[str, Any] = {"id": req["id"], "passed": False, "status": "failed",
                             "error_type": None, "tests_passed": 0, "tests_total": 0}
        outcome: str | None = None
        if req["style"] == "assert":
            jres = run.judge_result if isinstance(run.judge_result, dict) else {}
            total, passed = jres.get("total", 1), jres.get("passed", 0)
            v["tests_total"] = total if type(total) is int else 1
            v["tests_passed"] = passed if type(passed) is int else 0
            error = jres.get("error")
            if not jres and not run.timed_out:
                error = "JudgeDied"
            if error:
                outcome = str(error)[:100]
            elif not (v["tests_passed"] == v["tests_total"] and v["tests_total"] > 0):
                outcome = "failed"
        else:
            v["tests_total"] = len(req["tests"])
            if run.load_error is not None:
                outcome = run.load_error
            else:
                for i in range(len(req["tests"])):
                    frame = run.results.get(i)
                    got = "EarlyExit" if frame is None else self._test_outcome(req, i, frame)
                    if got is None:
                        v["tests_passed"] += 1
                    elif outcome is None:
                        outcome = got  # the first test that does not pass decides
        prog = run.prog
        sig = None if prog is None or prog.killed else prog.signal_name()
        cpu_limit = int(req["limits"]["timeout_s"]) + 1
        if run.timed_out:
            status, etype = "timeout", None
        elif sig == "SIGSYS":
            status, etype = "violation", "SeccompKill"
        elif run.output_limit or outcome == "OutputLimit":
            status, etype = "output_limit", None
        elif run.protocol or outcome == "ProtocolViolation":
            status, etype = "violation", "ProtocolViolation"
        elif outcome == "MemoryError":
            status, etype = "memory", "MemoryError"
        elif sig == "SIGXCPU" or (sig == "SIGKILL" and prog is not None
                                  and prog.cpu >= cpu_limit - 0.05):
            status, etype = "timeout", None
        elif sig:
            status, etype = "crashed", sig
        elif (prog is not None and prog.status is not None and os.WIFEXITED(prog.status)
              and os.WEXITSTATUS(prog.status) in SETUP_FAILED_CODES):
            status, etype = "crashed", "SandboxSetupFailed"
        elif outcome == "JudgeDied":
            status, etype = "crashed", "JudgeDied"
        elif outcome is None:
            status, etype = "passed", None
        elif outcome == "failed":
            status, etype = "failed", None
        else:
            status, etype = "error", outcome
        v["status"], v["error_type"], v["passed"] = status, etype, status == "passed"
        return v


def _start(args: argparse.Namespace) -> tuple[Worker, dict[str, Any]]:
    iso, _uid_lock = setup_worker(args.scratch, args.isolation, args.index)  # held until exit
    filters = build_seccomp_filters()
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    worker = Worker(iso, filters)
    # Prove the whole chain (fork, confinement, seccomp load) once before accepting work.
    probe = {"id": "probe", "style": "call",
             "code": "import colorsys\ndef f(x):\n    return x + 1\n",
             "entry_point": "f", "tests": [{"args": [1], "kwargs": {}, "expected": 2}],
             "compare": {"float_tol": None},
             "limits": {"timeout_s": 10.0, "memory_mb": 256, "output_bytes": 4096}}
    verdict = worker.grade(probe)
    if not verdict["passed"]:
        raise IsolationError(
            f"the sandbox self-test failed ({verdict['status']}, {verdict['error_type']}): a "
            f"child must be able to import the standard library from "
            f"{sysconfig.get_paths()['stdlib']}; make the Python installation world-readable"
        )
    worker.inject = True
    return worker, {"mode": iso.mode, "uid_base": iso.uid_base, "uid_count": iso.uid_count,
                    "scratch": iso.scratch, "pid": os.getpid(),
                    "template_pid": worker.template_pid, "python": sys.version.split()[0],
                    "layers": layers(iso), "iso": asdict(iso)}


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m grader_sandbox.worker")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--isolation", default=os.environ.get("GRADER_SANDBOX_ISOLATION", "auto"))
    ap.add_argument("--parent-pid", type=int, default=0)
    args = ap.parse_args(argv)
    proto_in, proto_out = os.dup(0), os.dup(1)
    os.set_inheritable(proto_in, False)
    os.set_inheritable(proto_out, False)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)  # stray prints go to stderr, never into the protocol
    os.close(devnull)
    # No parent-death signal here: it fires when the *thread* that started the worker ends,
    # and a pool may be used from many threads. The worker ends at EOF on its stdin instead,
    # which happens when the pool closes it or the pool's process dies.
    if args.parent_pid and os.getppid() != args.parent_pid:
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the pool decides when the worker ends
    try:
        worker, info = _start(args)
    except IsolationError as exc:
        write_frame(proto_out, {"error": str(exc)})
        return 2
    except Exception as exc:
        write_frame(proto_out, {"error": f"worker failed to start: {type(exc).__name__}: {exc}"})
        traceback.print_exc()
        return 2
    write_frame(proto_out, {"ready": True, "isolation": info})
    while True:
        if not _readable(proto_in):
            worker.settle()  # idle: tidy up now rather than at the next sample
        try:
            req = read_frame(proto_in)
        except (FrameError, ValueError):
            return 3
        if req is None:
            return 0
        try:
            verdict = worker.grade(req)
        except Exception as exc:  # a worker bug: report it on this sample, keep serving
            traceback.print_exc()
            verdict = {"id": req.get("id", "?"), "passed": False, "status": "crashed",
                       "error_type": f"WorkerError:{type(exc).__name__}", "tests_passed": 0,
                       "tests_total": 0, "wall_s": 0.0}
        write_frame(proto_out, verdict)


if __name__ == "__main__":
    sys.exit(main())
