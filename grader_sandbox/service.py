"""The grader as a service on a Unix domain socket (no TCP: the container has no network).

Protocol: on one stream connection, any number of exchanges of frames (4-byte big-endian
length + UTF-8 JSON):

  {"op": "grade", "requests": [request, ...]} -> {"ok": true, "verdicts": [verdict, ...]}
  {"op": "health"}                            -> {"ok": true, "workers": N, "isolation": ...}
  anything invalid                            -> {"ok": false, "error": "one line"}

Batches from concurrent connections are graded one after another, each on all workers. A frame
may carry up to MAX_FRAME bytes; a frame that is not JSON (or nests too deeply, or holds an
integer json refuses) gets an error reply and the connection stays usable; only a torn frame or
one that declares more than MAX_FRAME bytes ends the connection (after an error reply).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import socketserver
import stat
import threading
import time
from typing import Any

from grader_sandbox.codec import FrameError, decode_json, pack, read_body_from, read_frame_from
from grader_sandbox.pool import GraderPool
from grader_sandbox.schema import GraderError, Verdict, validate_request

MAX_FRAME = 256 << 20
LISTEN_BACKLOG = 1024  # connections the kernel queues before accept (the kernel caps it)
_MAX_ERROR = 500
# connect() errors worth retrying: a full listen queue (EAGAIN on a socket with a timeout),
# and, only within a client's timeout, a service that is still starting.
_BUSY = (errno.EAGAIN, errno.EWOULDBLOCK)
_STARTING = (errno.ECONNREFUSED, errno.ENOENT)


def one_line(text: str, limit: int = _MAX_ERROR) -> str:
    """``text`` on one line (whitespace runs collapsed), at most ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _error(text: str) -> dict[str, Any]:
    return {"ok": False, "error": one_line(text)}


def _recv_frame(sock: socket.socket) -> Any:
    """One frame through the socket's own calls (which honour its timeout); None at EOF."""
    return read_frame_from(sock.recv, MAX_FRAME)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            try:
                body = read_body_from(sock.recv, MAX_FRAME)
            except FrameError as exc:  # the stream is out of step: say why, then close
                with contextlib.suppress(OSError):
                    sock.sendall(pack(_error(f"bad frame: {exc}")))
                return
            except OSError:
                return
            if body is None:
                return
            try:
                data = pack(self.server.answer_body(body))
            except Exception as exc:  # never drop a connection without a reply
                data = pack(_error(f"grader service error: {type(exc).__name__}: {exc}"))
            try:
                sock.sendall(data)
            except OSError:
                return


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, path: str, pool: GraderPool) -> None:
        self.pool = pool
        super().__init__(path, _Handler)

    def answer_body(self, body: bytes) -> dict[str, Any]:
        """The reply to one frame's body, whatever it holds."""
        try:
            msg = decode_json(body)
        except FrameError as exc:
            return _error(f"bad request: {exc} (a frame must hold one JSON object, at most "
                          f"{MAX_FRAME} bytes, nesting and integers within json's limits)")
        return self.answer(msg)

    def answer(self, msg: Any) -> dict[str, Any]:
        """The reply to one decoded message; an error reply (one line) for anything invalid."""
        if not isinstance(msg, dict):
            return _error("message must be an object with 'op'")
        op = msg.get("op")
        if op == "health":
            return self.pool.health()
        if op == "grade":
            try:
                verdicts = self.pool.grade(msg.get("requests"))  # type: ignore[arg-type]
            except GraderError as exc:
                return _error(str(exc))
            return {"ok": True, "verdicts": [v.to_dict() for v in verdicts]}
        shown = repr(op) if isinstance(op, str) or op is None else f"<{type(op).__name__}>"
        return _error(f"unknown op {shown} (grade or health)")


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

    CONNECT_WINDOW_S = 30.0

    def __init__(self, socket_path: str, timeout: float | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        """Connect, retrying while the service's listen queue is full (EAGAIN) and, with a
        timeout, while it is still starting (no socket yet, or not listening yet), until the
        timeout (CONNECT_WINDOW_S for a full queue without one)."""
        if self._sock is not None:
            return self._sock
        window = self.timeout if self.timeout is not None else self.CONNECT_WINDOW_S
        deadline = time.monotonic() + window
        delay = 0.002
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                sock.close()
                retry = exc.errno in _BUSY or (self.timeout is not None
                                               and exc.errno in _STARTING)
                if retry and time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)
                    continue
                why = exc.strerror or type(exc).__name__
                raise GraderError(
                    f"cannot reach the grader service at {self.socket_path} ({why}); "
                    "start it with `python -m grader_sandbox serve --socket PATH`"
                ) from None
            self._sock = sock
            return sock

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
