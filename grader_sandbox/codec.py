"""Plain-data serialisation and message framing.

Everything a sandboxed child sends back is *plain data*: None, bool, int, float, str, bytes,
list, tuple, dict, set, frozenset, complex, of exactly those types (no subclasses), so that no
object the program built (an ``int`` subclass, an object whose ``__eq__`` is always true) ever
reaches the code that compares. Three standard containers are accepted as well, because
ordinary programs return them: ``collections.OrderedDict``, ``Counter`` and ``defaultdict``
(each crosses with its items and is rebuilt as the same standard type; a ``defaultdict``'s
factory crosses only when it is a builtin type such as ``int`` or ``list``, otherwise it
arrives with none), and named tuples (``collections.namedtuple``, ``typing.NamedTuple``),
which cross as their elements and arrive as a plain ``tuple``: the receiving side never
creates a class from names a sample chose.

Values are encoded as JSON with tags for the types JSON lacks (a one-key object:
``$t`` tuple, ``$d`` dict, ``$od`` OrderedDict, ``$ctr`` Counter, ``$dd`` defaultdict,
``$s``/``$fs`` set/frozenset, ``$b`` bytes, ``$i`` huge int, ``$f`` non-finite float,
``$c`` complex); both directions stop at ``MAX_DEPTH`` levels. Decoding is plain
``json.loads`` plus rebuilding those containers from fresh standard objects, safe on hostile
input: :func:`from_plain` raises :class:`FrameError` (and nothing else) on anything that
:func:`to_plain` could not have produced. ``from_plain(data, keyed=False)``, what the worker
uses on results, builds no hash table from the data: mappings and sets arrive as
:class:`Unkeyed` (their elements in a list), so that keys a sample chose to collide (ints
``k * (2**61 - 1)`` all hash alike) cannot make decoding quadratic in the worker, outside
every sample's clock; it validates exactly as the keyed decoding does.

Frames are a 4-byte big-endian length followed by that many bytes of UTF-8 JSON; every reader
here raises :class:`FrameError` on a malformed frame (bad length, torn body, undecodable or
too deeply nested JSON).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import struct
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from typing import Any

MAX_DEPTH = 200
_HDR = struct.Struct(">I")

# defaultdict factories that cross by name (anything else arrives as no factory).
_FACTORIES: dict[str, type] = {
    t.__name__: t
    for t in (int, float, complex, str, bytes, bool, list, tuple, dict, set, frozenset)
}
_HEX_INT = re.compile(r"-?0x[0-9a-f]+", re.ASCII)


class NotPlainData(TypeError):
    """A value that is not plain data (the message names the offending type)."""


class FrameError(ValueError):
    """A malformed or oversized frame, or a malformed encoded value."""


class OutputLimitError(FrameError):
    """More bytes than the reader accepts in total."""


class Unkeyed:
    """A decoded mapping or set whose elements were not put into a hash table (see
    ``from_plain(keyed=False)``): ``kind`` is the type it stands for (dict, OrderedDict,
    Counter, defaultdict, set or frozenset), ``items`` its [key, value] pairs or elements, in
    the order they arrived. Hashable exactly when a real one would be (a frozenset), so that
    decoding refuses the same unhashable keys and elements; never equal to anything else."""

    __slots__ = ("items", "kind")

    def __init__(self, kind: type, items: list[Any]) -> None:
        self.kind, self.items = kind, items

    def __hash__(self) -> int:
        if self.kind is not frozenset:
            raise TypeError(f"unhashable type: '{self.kind.__name__}'")
        return 0  # never put into a table: the hash only proves hashability

    def __eq__(self, other: object) -> bool:
        return self is other

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"Unkeyed({self.kind.__name__}, {self.items!r})"


def _pairs_to_plain(items: Iterable[tuple[Any, Any]], depth: int) -> list[list[Any]]:
    return [[to_plain(k, depth + 1), to_plain(v, depth + 1)] for k, v in items]


def _namedtuple_fields(t: type, value: Any) -> bool:
    """True for an instance of a named tuple class (namedtuple, typing.NamedTuple)."""
    fields = getattr(t, "_fields", None)
    return (type(fields) is tuple and all(type(f) is str for f in fields)
            and len(fields) == tuple.__len__(value) and callable(getattr(t, "_make", None)))


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
        return {"$d": _pairs_to_plain(value.items(), depth)}
    if t is set or t is frozenset:
        tag = "$s" if t is set else "$fs"
        return {tag: [to_plain(v, depth + 1) for v in value]}
    if t is bytes:
        return {"$b": base64.b64encode(value).decode("ascii")}
    if t is complex:
        return {"$c": [value.real, value.imag]}
    if t is OrderedDict:
        return {"$od": _pairs_to_plain(value.items(), depth)}  # its own order
    if t is Counter:
        return {"$ctr": _pairs_to_plain(dict.items(value), depth)}
    if t is defaultdict:
        factory = value.default_factory
        name = next((n for n, f in _FACTORIES.items() if f is factory), None)
        return {"$dd": [name, _pairs_to_plain(dict.items(value), depth)]}
    if issubclass(t, tuple) and _namedtuple_fields(t, value):
        return {"$t": [to_plain(v, depth + 1) for v in tuple.__iter__(value)]}
    raise NotPlainData(f"value of type {t.__name__} is not plain data")


def from_plain(data: Any, depth: int = 0, *, keyed: bool = True) -> Any:
    """Decode what :func:`to_plain` produced (after a JSON round trip).

    Raises :class:`FrameError`, and only that, on anything else: unknown tags, wrong payload
    types, unhashable set elements or dict keys, nesting beyond ``MAX_DEPTH``. With
    ``keyed=False`` mappings and sets arrive as :class:`Unkeyed` (no hash table is built:
    linear time whatever the keys' hashes).
    """
    try:
        return (_KEYED if keyed else _UNKEYED).decode(data, depth)
    except FrameError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError, LookupError) as exc:
        # Unhashable keys and elements surface as TypeError from the containers themselves.
        raise FrameError(f"malformed plain value ({type(exc).__name__})") from None


class _Decoder:
    """from_plain's decoding, keyed (real dicts and sets) or not (:class:`Unkeyed`)."""

    def __init__(self, keyed: bool) -> None:
        self.keyed = keyed
        self.tags: dict[str, Callable[[Any, int], Any]] = {
            "$t": lambda body, depth: tuple(self.items(body, depth)),
            "$d": lambda body, depth: self.mapping(body, depth, dict),
            "$od": lambda body, depth: self.mapping(body, depth, OrderedDict),
            "$ctr": lambda body, depth: self.mapping(body, depth, Counter),
            "$dd": self.defaultdict,
            "$s": lambda body, depth: self.set(body, depth, set),
            "$fs": lambda body, depth: self.set(body, depth, frozenset),
            "$b": _dec_bytes,
            "$i": _dec_int,
            "$f": _dec_float,
            "$c": _dec_complex,
        }

    def decode(self, data: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise FrameError("value nests too deeply")
        t = type(data)
        if data is None or t is bool or t is int or t is float or t is str:
            return data
        if t is list:
            return [self.decode(v, depth + 1) for v in data]
        if t is not dict:
            raise FrameError(f"not an encoded plain value: {t.__name__}")
        if len(data) != 1:
            raise FrameError("not an encoded plain value: an object without exactly one tag")
        ((tag, body),) = data.items()
        decode = self.tags.get(tag) if type(tag) is str else None
        if decode is None:
            raise FrameError("not an encoded plain value: unknown tag")
        return decode(body, depth)

    def items(self, body: Any, depth: int) -> list[Any]:
        if type(body) is not list:
            raise FrameError("tag payload must be a list")
        return [self.decode(v, depth + 1) for v in body]

    def pairs(self, body: Any, depth: int) -> list[tuple[Any, Any]]:
        if type(body) is not list:
            raise FrameError("mapping payload must be a list of pairs")
        out = []
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise FrameError("mapping item must be a [key, value] pair")
            out.append((self.decode(pair[0], depth + 1), self.decode(pair[1], depth + 1)))
        return out

    def mapping(self, body: Any, depth: int, kind: type, factory: type | None = None) -> Any:
        pairs = self.pairs(body, depth)
        try:
            if not self.keyed:
                for key, _ in pairs:
                    hash(key)
                return Unkeyed(kind, [list(p) for p in pairs])
            out = defaultdict(factory) if kind is defaultdict else kind()
            for key, value in pairs:
                out[key] = value
            return out
        except TypeError:
            raise FrameError("unhashable mapping key") from None

    def set(self, body: Any, depth: int, kind: type) -> Any:
        items = self.items(body, depth)
        try:
            if not self.keyed:
                for item in items:
                    hash(item)
                return Unkeyed(kind, items)
            return kind(items)
        except TypeError:
            raise FrameError("unhashable set element") from None

    def defaultdict(self, body: Any, depth: int) -> Any:
        if type(body) is not list or len(body) != 2:
            raise FrameError("defaultdict payload must be [factory, pairs]")
        name, pairs = body
        if name is not None and (type(name) is not str or name not in _FACTORIES):
            raise FrameError("defaultdict factory must be null or a builtin type's name")
        return self.mapping(pairs, depth, defaultdict, None if name is None else _FACTORIES[name])


def _dec_bytes(body: Any, _depth: int) -> bytes:
    if type(body) is not str:
        raise FrameError("bytes payload must be a string")
    try:
        return base64.b64decode(body.encode("ascii"), validate=True)
    except (ValueError, binascii.Error):
        raise FrameError("bytes payload is not base64") from None


def _dec_int(body: Any, _depth: int) -> int:
    if type(body) is not str or not _HEX_INT.fullmatch(body):
        raise FrameError("int payload must be a hex string")
    return int(body, 16)


def _dec_float(body: Any, _depth: int) -> float:
    if type(body) is not str or body not in ("nan", "inf", "-inf"):
        raise FrameError("float payload must be nan, inf or -inf")
    return float(body)


def _dec_complex(body: Any, _depth: int) -> complex:
    if (type(body) is not list or len(body) != 2
            or not all(type(x) is float or type(x) is int for x in body)):
        raise FrameError("complex payload must be [real, imag] numbers")
    try:
        return complex(float(body[0]), float(body[1]))
    except OverflowError:
        raise FrameError("complex part out of range") from None


_KEYED, _UNKEYED = _Decoder(keyed=True), _Decoder(keyed=False)


def decode_json(body: bytes) -> Any:
    """A frame body's JSON; FrameError when it is not UTF-8 JSON or nests too deeply."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"undecodable frame: {type(exc).__name__}") from None


def pack(message: Any) -> bytes:
    """One frame: the 4-byte big-endian length, then compact UTF-8 JSON."""
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return _HDR.pack(len(body)) + body


def write_frame(fd: int, message: Any) -> None:
    """Write one frame to a descriptor, all of it."""
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


def read_body_from(read: Callable[[int], bytes], max_bytes: int = 256 << 20) -> bytes | None:
    """One frame's undecoded body from any byte source; None at EOF; FrameError when the
    frame is torn or declares more than ``max_bytes`` (the stream cannot be resynchronised
    after either)."""
    hdr = _read_exact(read, _HDR.size)
    if hdr is None:
        return None
    (size,) = _HDR.unpack(hdr)
    if size > max_bytes:
        raise FrameError(f"frame of {size} bytes exceeds {max_bytes}")
    body = _read_exact(read, size)
    if body is None:
        raise FrameError("truncated frame")
    return body


def read_frame_from(read: Callable[[int], bytes], max_bytes: int = 256 << 20) -> Any:
    """One frame from any byte source (`os.read` of a pipe, `sock.recv`); None at EOF."""
    body = read_body_from(read, max_bytes)
    return None if body is None else decode_json(body)


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
            out.append(decode_json(body))
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
        return decode_json(body)
