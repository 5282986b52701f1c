"""The grader as a service on a Unix domain socket (no TCP: the container has no network).

Protocol: on one stream connection, any number of exchanges of frames (4-byte big-endian
length + UTF-8 JSON):

  {"op": "grade", "requests": [request, ...]} -> {"ok": true, "verdicts": [verdict, ...]}
  {"op": "health"}                            -> {"ok": true, "workers": N, "isolation": ...}
  anything invalid                            -> {"ok": false, "error": "one line"}

Batches from concurrent connections are graded one after another, each on all workers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import stat
import threading
from typing import Any

from grader_sandbox.codec import FrameError, pack, read_frame_from
from grader_sandbox.pool import GraderPool
from grader_sandbox.schema import GraderError, Verdict, validate_request

MAX_FRAME = 256 << 20


def _recv_frame(sock: socket.socket) -> Any:
    """One frame through the socket's own calls (which honour its timeout); None at EOF."""
    return read_frame_from(sock.recv, MAX_FRAME)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            try:
                msg = _recv_frame(sock)
            except (FrameError, ValueError, OSError) as exc:
                with contextlib.suppress(OSError):
                    sock.sendall(pack({"ok": False, "error": f"bad frame: {exc}"}))
                return
            if msg is None:
                return
            reply = self.server.answer(msg)
            try:
                sock.sendall(pack(reply))
            except OSError:
                return


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: str, pool: GraderPool) -> None:
        self.pool = pool
        super().__init__(path, _Handler)

    def answer(self, msg: Any) -> dict[str, Any]:
        if not isinstance(msg, dict):
            return {"ok": False, "error": "message must be an object with 'op'"}
        op = msg.get("op")
        if op == "health":
            return self.pool.health()
        if op == "grade":
            try:
                verdicts = self.pool.grade(msg.get("requests"))  # type: ignore[arg-type]
            except GraderError as exc:
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "verdicts": [v.to_dict() for v in verdicts]}
        return {"ok": False, "error": f"unknown op {op!r} (grade or health)"}


def serve(socket_path: str, workers: int = 2, default_limits: dict[str, Any] | None = None,
          ready: threading.Event | None = None) -> int:
    """Run the service until SIGTERM or SIGINT; returns the exit code."""
    if os.path.exists(socket_path):
        if not stat.S_ISSOCK(os.lstat(socket_path).st_mode):
            raise GraderError(f"{socket_path} exists and is not a socket; pick another --socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(socket_path)
        except OSError:
            os.unlink(socket_path)  # a stale socket from a service that died
        else:
            raise GraderError(f"a grader service is already listening on {socket_path}")
        finally:
            probe.close()
    pool = GraderPool(workers=workers, default_limits=default_limits)
    old_umask = os.umask(0o177)  # the socket is the service's only door: owner only
    try:
        server = _Server(socket_path, pool)
    finally:
        os.umask(old_umask)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=server.shutdown, daemon=True).start()

    in_main = threading.current_thread() is threading.main_thread()
    if in_main:
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if ready is not None:
            ready.set()
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
        pool.close()
        if in_main:
            for s, h in old.items():
                signal.signal(s, h)
    return 0


class GraderClient:
    """Talks to ``python -m grader_sandbox serve``; same ``grade`` as :class:`GraderPool`.

    Requests are validated here too, so a malformed one raises GraderError before it is sent.
    """

    def __init__(self, socket_path: str, timeout: float | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                sock.close()
                raise GraderError(
                    f"cannot reach the grader service at {self.socket_path} ({exc.strerror}); "
                    "start it with `python -m grader_sandbox serve --socket PATH`"
                ) from None
            self._sock = sock
        return self._sock

    def _call(self, msg: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            for attempt in (0, 1):
                sock = self._connect()
                try:
                    sock.sendall(pack(msg))
                    reply = _recv_frame(sock)
                except (OSError, FrameError, ValueError) as exc:
                    self.close()
                    if attempt:
                        raise GraderError(f"grader service connection failed: {exc}") from None
                    continue
                if reply is None:
                    self.close()
                    if attempt:
                        raise GraderError("grader service closed the connection")
                    continue
                return reply
        raise GraderError("grader service unreachable")  # pragma: no cover

    def grade(self, requests: list[dict[str, Any]]) -> list[Verdict]:
        if not isinstance(requests, list):
            raise GraderError("grade() takes a list of request dicts")
        for r in requests:
            validate_request(r)
        if not requests:
            return []
        reply = self._call({"op": "grade", "requests": requests})
        if not reply.get("ok"):
            raise GraderError(str(reply.get("error", "grader service error")))
        return [Verdict.from_dict(v) for v in reply["verdicts"]]

    def health(self) -> dict[str, Any]:
        return self._call({"op": "health"})

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> GraderClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
