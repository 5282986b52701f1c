"""Plain-data serialisation and message framing.

Everything a sandboxed child sends back is *plain data*: None, bool, int, float, str, bytes,
list, tuple, dict, set, frozenset, of exactly those types (no subclasses), so that no object the
program built (an ``int`` subclass, an object whose ``__eq__`` is always true) ever reaches the
code that compares. Values are encoded as JSON with tags for the types JSON lacks; decoding is
plain ``json.loads`` plus rebuilding those containers, safe on hostile input.

Frames are a 4-byte big-endian length followed by that many bytes of UTF-8 JSON.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Callable
from typing import Any

MAX_DEPTH = 200
_HDR = struct.Struct(">I")


class NotPlainData(TypeError):
    """A value that is not plain data (the message names the offending type)."""


class FrameError(ValueError):
    """A malformed or oversized frame."""


class OutputLimitError(FrameError):
    """More bytes than the reader accepts in total."""


def to_plain(value: Any, depth: int = 0) -> Any:
    """Encode a plain value into JSON-able data with tags; raise NotPlainData otherwise."""
    if depth > MAX_DEPTH:
        raise NotPlainData("value nests too deeply")
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        # Strings for huge ints keep json from refusing them (int max str digits).
        return value if -(1 << 63) <= value < (1 << 63) else {"$i": hex(value)}
    if t is float:
        if value != value or value in (float("inf"), float("-inf")):
            return {"$f": repr(value)}
        return value
    if t is list:
        return [to_plain(v, depth + 1) for v in value]
    if t is tuple:
        return {"$t": [to_plain(v, depth + 1) for v in value]}
    if t is dict:
        return {"$d": [[to_plain(k, depth + 1), to_plain(v, depth + 1)] for k, v in value.items()]}
    if t is set or t is frozenset:
        tag = "$s" if t is set else "$fs"
        return {tag: [to_plain(v, depth + 1) for v in value]}
    if t is bytes:
        return {"$b": base64.b64encode(value).decode("ascii")}
    if t is complex:
        return {"$c": [value.real, value.imag]}
    raise NotPlainData(f"value of type {t.__name__} is not plain data")


def from_plain(data: Any, depth: int = 0) -> Any:
    """Decode what :func:`to_plain` produced. Raises ValueError on anything else."""
    if depth > MAX_DEPTH:
        raise ValueError("value nests too deeply")
    t = type(data)
    if data is None or t in (bool, int, float, str):
        return data
    if t is list:
        return [from_plain(v, depth + 1) for v in data]
    if t is dict and len(data) == 1:
        ((tag, body),) = data.items()
        if tag == "$t" and type(body) is list:
            return tuple(from_plain(v, depth + 1) for v in body)
        if tag == "$d" and type(body) is list:
            out = {}
            for pair in body:
                if type(pair) is not list or len(pair) != 2:
                    raise ValueError("bad dict item")
                out[from_plain(pair[0], depth + 1)] = from_plain(pair[1], depth + 1)
            return out
        if tag in ("$s", "$fs") and type(body) is list:
            items = [from_plain(v, depth + 1) for v in body]
            return set(items) if tag == "$s" else frozenset(items)
        if tag == "$b" and type(body) is str:
            return base64.b64decode(body.encode("ascii"), validate=True)
        if tag == "$i" and type(body) is str:
            return int(body, 16)
        if tag == "$f" and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag == "$c" and type(body) is list and len(body) == 2:
            return complex(float(body[0]), float(body[1]))
    raise ValueError(f"not an encoded plain value: {type(data).__name__}")


def pack(message: Any) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return _HDR.pack(len(body)) + body


def write_frame(fd: int, message: Any) -> None:
    data = memoryview(pack(message))
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _read_exact(read: Callable[[int], bytes], n: int) -> bytes | None:
    """Exactly n bytes from `read(max)`; None on EOF before the first byte; FrameError on a
    short read."""
    chunks = []
    got = 0
    while got < n:
        chunk = read(min(n - got, 1 << 20))
        if not chunk:
            if got == 0:
                return None
            raise FrameError("truncated frame")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_frame_from(read: Callable[[int], bytes], max_bytes: int = 256 << 20) -> Any:
    """One frame from any byte source (`os.read` of a pipe, `sock.recv`); None at EOF."""
    hdr = _read_exact(read, _HDR.size)
    if hdr is None:
        return None
    (size,) = _HDR.unpack(hdr)
    if size > max_bytes:
        raise FrameError(f"frame of {size} bytes exceeds {max_bytes}")
    body = _read_exact(read, size)
    if body is None:
        raise FrameError("truncated frame")
    return json.loads(body)


def read_exact(fd: int, n: int) -> bytes | None:
    """Read exactly n bytes from a descriptor (see `_read_exact`)."""
    return _read_exact(lambda k: os.read(fd, k), n)


def read_frame(fd: int, max_bytes: int = 256 << 20) -> Any:
    """Blocking read of one frame from a descriptor; None at EOF."""
    return read_frame_from(lambda k: os.read(fd, k), max_bytes)


class FrameBuffer:
    """Incremental frame parser for non-blocking reads, with a cap on total bytes."""

    def __init__(self, max_total: int, max_frame: int | None = None) -> None:
        self.buf = bytearray()
        self.total = 0
        self.max_total = max_total
        self.max_frame = max_total if max_frame is None else max_frame

    def feed(self, data: bytes) -> list[Any]:
        self.total += len(data)
        if self.total > self.max_total:
            raise OutputLimitError(f"more than {self.max_total} bytes of results")
        self.buf += data
        out = []
        while len(self.buf) >= _HDR.size:
            (size,) = _HDR.unpack_from(self.buf)
            if size > self.max_frame:
                raise FrameError(f"malformed frame: declares {size} bytes")
            if len(self.buf) < _HDR.size + size:
                break
            body = bytes(self.buf[_HDR.size : _HDR.size + size])
            del self.buf[: _HDR.size + size]
            try:
                out.append(json.loads(body))
            except (ValueError, RecursionError) as exc:
                raise FrameError(f"undecodable frame: {exc}") from None
        return out

    @property
    def pending(self) -> bool:
        return bool(self.buf)


class FrameReader:
    """Blocking frame reader with its own buffer: one ``read`` per frame in the common case."""

    def __init__(self, fd: int, max_bytes: int = 256 << 20) -> None:
        self.fd = fd
        self.max_bytes = max_bytes
        self.buf = bytearray()

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = os.read(self.fd, max(1 << 16, n - len(self.buf)))
            if not chunk:
                return False
            self.buf += chunk
        return True

    def read(self) -> Any:
        """The next frame's decoded JSON; None at EOF; FrameError when malformed."""
        if not self._fill(_HDR.size):
            if self.buf:
                raise FrameError("truncated frame")
            return None
        (size,) = _HDR.unpack_from(self.buf)
        if size > self.max_bytes:
            raise FrameError(f"frame of {size} bytes exceeds {self.max_bytes}")
        if not self._fill(_HDR.size + size):
            raise FrameError("truncated frame")
        body = bytes(self.buf[_HDR.size : _HDR.size + size])
        del self.buf[: _HDR.size + size]
        return json.loads(body)
