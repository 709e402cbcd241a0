"""Sans-IO sessions of wire protocol v2, as h11's ``Connection`` is for HTTP/1.1.

``ServerSession`` takes the bytes a client sent and gives back requests the daemon
should run, in order, with every session rule already applied: framing, ``hello``
first, one ``hello``, the version, unknown ops and arguments (``EINVAL``), admin ops
(``EPERM``), deferred replies whose ``id`` is still in flight, and how many may be.
Replies and events go back through it as bytes (events numbered by ``seq``, frames
never larger than ``max_frame``). ``ClientSession`` is the other end: requests out
(checked against the same argument models), replies and events in, ``seq`` checked.

Neither touches a socket or a clock: the trio daemon and both client libraries are
I/O loops around them, and the session rules are tested in microseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError

from iopfd.protocol import models as m
from iopfd.protocol.errors import (
    EINVAL,
    ENOSPC,
    EPERM,
    EPROTO,
    EPROTONOSUPPORT,
    RequestError,
)
from iopfd.protocol.frames import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    ProtocolViolation,
    encode_frame,
)
from iopfd.protocol.ops import OPS, OpSpec, Result

#: Error messages are for people; a client's bad input never makes them long.
MAX_ERROR_MESSAGE: Final = 1024


@dataclass(frozen=True, slots=True)
class Request:
    """A request that passed every session rule: run it, then ``reply`` or ``error``."""

    op: str
    id: int
    args: m.Args
    spec: OpSpec


@dataclass(frozen=True, slots=True)
class Rejected:
    """A request the session answered itself; ``data`` is the error frame to send.
    ``close``: the connection must be closed after it (``EPROTO``)."""

    id: int | None
    errno: str
    message: str
    data: bytes
    close: bool


class ServerSession:
    """One connection, as the daemon sees it."""

    def __init__(self, *, admin: bool, max_frame: int = DEFAULT_MAX_FRAME,
                 max_deferred: int = 256) -> None:
        self.admin = admin
        self.max_frame = max_frame
        self.max_deferred = max_deferred
        self.decoder = FrameDecoder(max_frame)
        self.hello_done = False
        self.closed = False
        self.seq = 0
        #: Requests whose reply is deferred (``dma``, ``unplug``) and still to come, by op.
        self.deferred: dict[int, str] = {}
        self.requests = 0

    # ------------------------------------------------------------------ input
    def receive_data(self, data: bytes) -> list[Request | Rejected]:
        """Every complete frame in ``data``, in order. Frames before a framing violation
        are still returned; the violation comes last, as a closing ``Rejected``."""
        if self.closed:
            return []
        out: list[Request | Rejected] = []
        try:
            msgs = self.decoder.feed(data)
        except ProtocolViolation as exc:
            return [self._violation(None, str(exc))]
        for msg in msgs:
            item = self._classify(msg)
            out.append(item)
            if isinstance(item, Rejected) and item.close:
                return out
        try:
            self.decoder.check()
        except ProtocolViolation as exc:
            out.append(self._violation(None, str(exc)))
        return out

    def receive_eof(self) -> Rejected | None:
        """The peer closed its end: a violation if it did so inside a frame."""
        if self.decoder.buffered and not self.closed:
            return self._violation(None, f"connection closed inside a frame "
                                         f"({self.decoder.buffered} bytes held)")
        self.closed = True
        return None

    def hello_timeout(self, seconds: float) -> Rejected:
        """No ``hello`` came within the daemon's limit."""
        return self._violation(None, f"no hello within {seconds:g} s")

    def _classify(self, msg: Mapping[str, object]) -> Request | Rejected:
        self.requests += 1
        try:
            return self._admit(msg)
        except RequestError as exc:
            if exc.closes_connection:
                return self._violation(exc.request_id, exc.message)
            return Rejected(exc.request_id, exc.errno, exc.message,
                            _error_frame(exc.request_id, exc.errno, exc.message), False)

    def _admit(self, msg: Mapping[str, object]) -> Request:
        """Every session rule, in the order a client sees them broken."""
        rid = m.request_id(msg)
        op = m.request_op(msg, rid)
        if not self.hello_done and op != "hello":
            raise RequestError(EPROTO, "the first request must be hello", rid)
        spec = OPS.get(op)
        if spec is None:
            raise RequestError(EINVAL, "unknown op", rid)
        if spec.admin and not self.admin:
            raise RequestError(EPERM, f"{op} is an admin op", rid)
        args = m.validate_args(op, {k: v for k, v in msg.items()
                                    if k != "op" and k != "id"}, rid)
        if op == "hello":
            self._hello(args, rid)
        if spec.deferred:
            if rid in self.deferred:
                raise RequestError(EINVAL, f"a {self.deferred[rid]} with id {rid} is still "
                                           "in flight", rid)
            if len(self.deferred) >= self.max_deferred:
                raise RequestError(ENOSPC, f"{self.max_deferred} requests already wait for "
                                           "their replies", rid)
            self.deferred[rid] = op
        return Request(op, rid, args, spec)

    def _hello(self, args: m.Args, rid: int) -> None:
        assert isinstance(args, m.HelloArgs)
        if self.hello_done:
            raise RequestError(EINVAL, "hello was already accepted on this connection", rid)
        if args.version not in m.SUPPORTED_VERSIONS:
            raise RequestError(EPROTONOSUPPORT,
                               f"supported versions: {list(m.SUPPORTED_VERSIONS)}", rid)
        self.hello_done = True

    def _violation(self, rid: int | None, message: str) -> Rejected:
        data = _error_frame(rid, EPROTO, message)
        self.closed = True
        return Rejected(rid, EPROTO, message, data, True)

    # ------------------------------------------------------------------ output
    def reply(self, rid: int, result: Mapping[str, object]) -> bytes:
        """The reply frame; ``ENOSPC`` instead when the result would exceed
        ``max_frame`` (a huge ``pending`` listing, say)."""
        self.deferred.pop(rid, None)
        frame = encode_frame({"id": rid, "ok": True, "result": result})
        if len(frame) - 4 > self.max_frame:
            return _error_frame(rid, ENOSPC, f"result of {len(frame) - 4} bytes exceeds "
                                             "max_frame")
        return frame

    def error(self, rid: int | None, errno: str, message: str) -> bytes:
        """The error reply to a request the daemon ran (a deferred one is done)."""
        if rid is not None:
            self.deferred.pop(rid, None)
        return _error_frame(rid, errno, message)

    def event(self, name: str, body: Mapping[str, object]) -> bytes:
        """An event frame: ``event`` and ``seq`` (per connection, from 1) first; a body
        key never overrides them."""
        self.seq += 1
        msg: dict[str, object] = {"event": name, "seq": self.seq, **body}
        msg["event"], msg["seq"] = name, self.seq
        return encode_frame(msg)


def _error_frame(rid: int | None, errno: str, message: str) -> bytes:
    if len(message) > MAX_ERROR_MESSAGE:
        message = message[:MAX_ERROR_MESSAGE] + "..."
    return encode_frame({"id": rid, "ok": False, "error": {"code": errno, "message": message}})


# ---------------------------------------------------------------------- client side


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply to one of our requests: ``result`` when ``ok``, else ``code``/``message``."""

    id: int | None
    ok: bool
    result: dict[str, Any] = field(default_factory=dict)
    code: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    """An event the daemon pushed; ``gap`` events were missed before it (seq jumped)."""

    name: str
    seq: int
    body: dict[str, Any]
    gap: int = 0


class ClientSession:
    """One connection, as a client sees it."""

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.decoder = FrameDecoder(max_frame)
        self.max_frame = max_frame
        self.next_id = 1
        self.last_seq = 0
        #: Requests sent and not answered yet: id -> op.
        self.waiting: dict[int, str] = {}

    def request(self, op: str, args: Mapping[str, object]) -> tuple[int, bytes]:
        """A request frame with a fresh id; ``RequestError(EINVAL)`` before anything is
        sent when the op is unknown or the arguments would be refused."""
        spec = OPS.get(op)
        if spec is None:
            raise RequestError(EINVAL, f"unknown op {op!r}")
        rid = self.next_id
        self.next_id = 1 if rid >= m.U32_MAX else rid + 1
        m.validate_args(op, args, rid)
        frame = encode_frame({"op": op, "id": rid, **args})
        if len(frame) - 4 > self.max_frame:
            raise RequestError(EINVAL, f"request of {len(frame) - 4} bytes exceeds "
                                       f"max_frame ({self.max_frame})", rid)
        self.waiting[rid] = op
        return rid, frame

    def hello(self, client: str) -> tuple[int, bytes]:
        return self.request("hello", {"version": m.PROTOCOL_VERSION, "client": client})

    def receive_data(self, data: bytes) -> list[Reply | Event]:
        """Replies and events in ``data``; ``ProtocolViolation`` when the daemon broke
        the framing (the connection is then useless)."""
        out: list[Reply | Event] = []
        for msg in self.decoder.feed(data):
            if "event" in msg:
                out.append(self._event(msg))
            else:
                out.append(self._reply(msg))
        return out

    def _event(self, msg: Mapping[str, Any]) -> Event:
        seq = msg.get("seq")
        gap = 0
        if isinstance(seq, int):
            if seq != self.last_seq + 1:
                gap = max(0, seq - self.last_seq - 1)
            self.last_seq = seq
        body = {k: v for k, v in msg.items() if k not in ("event", "seq")}
        return Event(str(msg.get("event")), seq if isinstance(seq, int) else 0, body, gap)

    def _reply(self, msg: Mapping[str, Any]) -> Reply:
        rid = msg.get("id")
        rid = rid if isinstance(rid, int) else None
        if rid is not None:
            self.waiting.pop(rid, None)
        if msg.get("ok") is True:
            result = msg.get("result")
            return Reply(rid, True, dict(result) if isinstance(result, Mapping) else {})
        err = msg.get("error")
        err = err if isinstance(err, Mapping) else {}
        return Reply(rid, False, code=str(err.get("code", "EPROTO")),
                     message=str(err.get("message", "")))

    def op_of(self, rid: int) -> str | None:
        return self.waiting.get(rid)


def parse_result(op: str, result: Mapping[str, object]) -> Result:
    """The op's result model over a reply's ``result`` (unknown keys kept);
    ``ValueError`` when the daemon's reply does not fit the contract."""
    try:
        return OPS[op].result.model_validate(result)
    except ValidationError as exc:
        raise ValueError(f"{op}: result does not fit the protocol: "
                         f"{m.format_validation_error(exc)}") from None


__all__ = [
    "MAX_ERROR_MESSAGE",
    "ClientSession",
    "Event",
    "Rejected",
    "Reply",
    "Request",
    "ServerSession",
    "parse_result",
]
