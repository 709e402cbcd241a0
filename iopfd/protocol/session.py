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

from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
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
from iopfd.protocol.fastargs import FastArgs, fast_args
from iopfd.protocol.frames import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    ProtocolViolation,
    encode_frame,
)
from iopfd.protocol.ops import OPS, OpSpec, Result

#: Error messages are for people; a client's bad input never makes them long.
MAX_ERROR_MESSAGE: Final = 1024


@dataclass(slots=True)
class Request:
    """A request that passed every session rule: run it, then ``reply`` or ``error``.
    ``args``: the op's model, or for the fault path's ops the named tuple of
    :mod:`iopfd.protocol.fastargs` with the same fields. (Not frozen: a frozen
    dataclass pays an ``object.__setattr__`` per field, on every request.)"""

    op: str
    id: int
    args: m.Args | FastArgs
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

    def __init__(
        self, *, admin: bool, max_frame: int = DEFAULT_MAX_FRAME, max_deferred: int = 256
    ) -> None:
        self.admin = admin
        self.max_frame = max_frame
        self.max_deferred = max_deferred
        self.decoder = FrameDecoder(max_frame)
        self.hello_done = False
        self.closed = False
        self.seq = 0
        #: Requests whose reply is deferred (``dma``, ``unplug``) and still to come, by op.
        self.deferred: dict[int, str] = {}
        #: How many of ``deferred`` each bounded op holds (``max_deferred`` each).
        self._waiting: Counter[str] = Counter()
        self.requests = 0

    # ------------------------------------------------------------------ input
    def receive_data(self, data: bytes | bytearray) -> list[Request | Rejected]:
        """Every complete frame in ``data``, in order. Frames before a framing violation
        are still returned; the violation comes last, as a closing ``Rejected``."""
        return list(self.iter_requests(data))

    def iter_requests(self, data: bytes | bytearray) -> Iterator[Request | Rejected]:
        """``receive_data``, one request at a time: each frame is judged only when the
        caller asks for it, after the caller ran (and answered) the ones before it, as a
        daemon that runs requests one by one sees them. So a deferred request refused by
        the daemon frees its ``id`` for the next frame of the same read."""
        if self.closed:
            return
        try:
            msgs = self.decoder.feed(data)
        except ProtocolViolation as exc:
            yield self._violation(None, str(exc))
            return
        for msg in msgs:
            if self.closed:
                return
            item = self._classify(msg)
            yield item
            if type(item) is Rejected and item.close:
                return
        try:
            self.decoder.check()
        except ProtocolViolation as exc:
            yield self._violation(None, str(exc))

    def receive_eof(self) -> Rejected | None:
        """The peer closed its end: a violation if it did so inside a frame."""
        if self.decoder.buffered and not self.closed:
            return self._violation(
                None, f"connection closed inside a frame ({self.decoder.buffered} bytes held)"
            )
        self.closed = True
        return None

    def hello_timeout(self, seconds: float) -> Rejected:
        """No ``hello`` came within the daemon's limit."""
        return self._violation(None, f"no hello within {seconds:g} s")

    def idle_timeout(self, seconds: float) -> Rejected:
        """Silent for the daemon's limit while holding nothing."""
        return self._violation(None, f"idle for {seconds:g} s holding nothing")

    def _classify(self, msg: Mapping[str, object]) -> Request | Rejected:
        self.requests += 1
        try:
            return self._admit(msg)
        except RequestError as exc:
            if exc.closes_connection:
                return self._violation(exc.request_id, exc.message)
            return Rejected(
                exc.request_id,
                exc.errno,
                exc.message,
                error_frame(exc.request_id, exc.errno, exc.message),
                False,
            )

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
        args: m.Args | FastArgs | None = fast_args(op, msg)
        if args is None:
            args = m.validate_args(
                op, {k: v for k, v in msg.items() if k != "op" and k != "id"}, rid
            )
        if op == "hello":
            self._hello(args, rid)
        if spec.deferred:
            if rid in self.deferred:
                raise RequestError(
                    EINVAL, f"a {self.deferred[rid]} with id {rid} is still in flight", rid
                )
            # Bounded where the contract lets the op say ENOSPC (``dma``, per connection:
            # max_dma_inflight); an ``unplug`` waits on a device, of which there are few.
            if ENOSPC in spec.errnos:
                if self._waiting[op] >= self.max_deferred:
                    raise RequestError(
                        ENOSPC,
                        f"{self.max_deferred} {op} requests already wait for their replies",
                        rid,
                    )
                self._waiting[op] += 1
            self.deferred[rid] = op
        return Request(op, rid, args, spec)

    def _done(self, rid: int) -> None:
        op = self.deferred.pop(rid, None)
        if op is not None and self._waiting[op]:
            self._waiting[op] -= 1

    def _hello(self, args: m.Args | FastArgs, rid: int) -> None:
        assert isinstance(args, m.HelloArgs)
        if self.hello_done:
            raise RequestError(EINVAL, "hello was already accepted on this connection", rid)
        if args.version not in m.SUPPORTED_VERSIONS:
            raise RequestError(
                EPROTONOSUPPORT, f"supported versions: {list(m.SUPPORTED_VERSIONS)}", rid
            )
        self.hello_done = True

    def _violation(self, rid: int | None, message: str) -> Rejected:
        data = error_frame(rid, EPROTO, message)
        self.closed = True
        return Rejected(rid, EPROTO, message, data, True)

    # ------------------------------------------------------------------ output
    def reply(self, rid: int, result: Mapping[str, object]) -> bytes:
        """The reply frame; ``ENOSPC`` instead when the result would exceed
        ``max_frame`` (a huge ``pending`` listing, say)."""
        self._done(rid)
        frame = encode_frame({"id": rid, "ok": True, "result": result})
        if len(frame) - 4 > self.max_frame:
            return error_frame(rid, ENOSPC, f"result of {len(frame) - 4} bytes exceeds max_frame")
        return frame

    def error(self, rid: int | None, errno: str, message: str) -> bytes:
        """The error reply to a request the daemon ran (a deferred one is done)."""
        if rid is not None:
            self._done(rid)
        return error_frame(rid, errno, message)

    def event(self, name: str, body: Mapping[str, object]) -> bytes:
        """An event frame: ``event`` and ``seq`` (per connection, from 1) first; a body
        key never overrides them."""
        self.seq += 1
        msg: dict[str, object] = {"event": name, "seq": self.seq, **body}
        if len(msg) != len(body) + 2:  # body named one of them
            msg["event"], msg["seq"] = name, self.seq
        return encode_frame(msg)


def error_frame(rid: int | None, errno: str, message: str) -> bytes:
    """An error reply frame, its message cut to ``MAX_ERROR_MESSAGE``; also what a daemon
    sends on a connection it refuses before any session (too many connections)."""
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
    #: fds passed with an ok reply to an op whose ``OpSpec.fds`` says so (``fault_fd``):
    #: the caller owns them now.
    fds: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """An event the daemon pushed. When its ``seq`` is not the one due, ``expected`` is
    the one that was (0 otherwise) and ``gap`` counts the events missed before it."""

    name: str
    seq: int
    body: dict[str, Any]
    gap: int = 0
    expected: int = 0


class ClientSession:
    """One connection, as a client sees it: request ids, the frame limit ``hello``
    sets, replies matched to what is waiting, event ``seq`` checked, and the counters
    a client reports (``requests``, ``replies``, ``events``, ``seq_gaps``,
    ``missed_events``, ``late_replies``).

    fds the daemon passes (SCM_RIGHTS) arrive with the first byte of the frame that owns
    them, so by the time that frame is decoded they were handed to ``receive_data``:
    they queue in arrival order and each ok reply of an op with ``OpSpec.fds`` takes
    its count from the head (the daemon passes fds with nothing else). fds of a reply
    nobody waits for wait in :meth:`take_stray_fds` for the I/O loop to close."""

    def __init__(self, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.decoder = FrameDecoder(max_frame)
        self.max_frame = max_frame
        self.next_id = 1
        self.last_seq = 0
        #: Requests sent and not answered yet: id -> op.
        self.waiting: dict[int, str] = {}
        #: Requests whose caller gave up (cancelled, timed out): their reply is dropped
        #: when it comes, and until then their id is not reused.
        self.abandoned: dict[int, str] = {}
        self.requests = 0
        self.replies = 0
        self.events = 0
        self.seq_gaps = 0
        self.missed_events = 0
        #: Replies nobody waits for: to abandoned requests, or ids never sent.
        self.late_replies = 0
        #: fds received and not claimed by a reply yet, in arrival order.
        self._fds: deque[int] = deque()
        #: fds nobody will take (their reply was abandoned): the I/O loop closes them.
        self._stray_fds: list[int] = []

    def request(self, op: str, args: Mapping[str, object]) -> tuple[int, bytes]:
        """A request frame with a fresh id; ``RequestError(EINVAL)`` before anything is
        sent when the op is unknown or the arguments would be refused."""
        spec = OPS.get(op)
        if spec is None:
            raise RequestError(EINVAL, f"unknown op {op!r}")
        rid = self._fresh_id()
        m.validate_args(op, args, rid)
        frame = encode_frame({"op": op, "id": rid, **args})
        if len(frame) - 4 > self.max_frame:
            raise RequestError(
                EINVAL,
                f"request of {len(frame) - 4} bytes exceeds max_frame ({self.max_frame})",
                rid,
            )
        self.waiting[rid] = op
        self.requests += 1
        return rid, frame

    def _fresh_id(self) -> int:
        """The next id not in flight: after 2**32 requests ids wrap, and an id whose
        reply is still to come (a long ``dma``, an abandoned call) is skipped."""
        while True:
            rid = self.next_id
            self.next_id = 1 if rid >= m.U32_MAX else rid + 1
            if rid not in self.waiting and rid not in self.abandoned:
                return rid

    def hello(self, client: str) -> tuple[int, bytes]:
        return self.request("hello", {"version": m.PROTOCOL_VERSION, "client": client})

    def abandon(self, rid: int) -> None:
        """The caller no longer wants the reply to ``rid``; it is dropped on arrival."""
        op = self.waiting.pop(rid, None)
        if op is not None:
            self.abandoned[rid] = op

    @property
    def in_flight(self) -> int:
        """Requests sent whose reply somebody still waits for."""
        return len(self.waiting)

    def receive_data(self, data: bytes, fds: Iterable[int] = ()) -> list[Reply | Event]:
        """Replies and events in ``data``, except replies to abandoned requests;
        ``ProtocolViolation`` when the daemon broke the framing (the connection is then
        useless). A violation after good frames is held back: :meth:`check` raises it.
        ``fds``: those the read brought (SCM_RIGHTS); the session owns them until a
        reply takes them."""
        self._fds.extend(fds)
        out: list[Reply | Event] = []
        for msg in self.decoder.feed(data):
            if "event" in msg:
                out.append(self._event(msg))
            else:
                reply = self._reply(msg)
                if reply is not None:
                    out.append(reply)
        return out

    def check(self) -> None:
        """Raise the framing violation the last :meth:`receive_data` held back, if any."""
        self.decoder.check()

    def _event(self, msg: Mapping[str, Any]) -> Event:
        self.events += 1
        seq = msg.get("seq")
        gap = expected = 0
        if isinstance(seq, int):
            if seq != self.last_seq + 1:
                expected = self.last_seq + 1
                gap = max(0, seq - expected)
                self.seq_gaps += 1
                self.missed_events += gap
            self.last_seq = seq
        body = {k: v for k, v in msg.items() if k != "event" and k != "seq"}
        return Event(str(msg.get("event")), seq if isinstance(seq, int) else 0, body, gap, expected)

    def _reply(self, msg: Mapping[str, Any]) -> Reply | None:
        self.replies += 1
        rid = msg.get("id")
        rid = rid if isinstance(rid, int) else None
        op = None
        if rid is not None:
            abandoned = self.abandoned.pop(rid, None)
            if abandoned is not None:
                self.late_replies += 1
                if msg.get("ok") is True:
                    self._stray_fds += self._take_fds(abandoned)
                return None
            op = self.waiting.pop(rid, None)
            if op is None:
                self.late_replies += 1
        if msg.get("ok") is True:
            result = msg.get("result")
            result = dict(result) if isinstance(result, Mapping) else {}
            if op == "hello":
                self._adopt_max_frame(result.get("max_frame"))
            return Reply(rid, True, result, fds=self._take_fds(op))
        err = msg.get("error")
        err = err if isinstance(err, Mapping) else {}
        return Reply(
            rid, False, code=str(err.get("code", "EPROTO")), message=str(err.get("message", ""))
        )

    def _adopt_max_frame(self, max_frame: object) -> None:
        """``hello`` names the daemon's frame limit: requests must fit it, and replies up
        to it (never less than the default) are accepted."""
        if type(max_frame) is int and max_frame > 0:
            self.max_frame = max_frame
            self.decoder.max_frame = max(max_frame, DEFAULT_MAX_FRAME)

    def _take_fds(self, op: str | None) -> tuple[int, ...]:
        """The fds an ok reply of ``op`` owns: its ``OpSpec.fds`` from the queue's head
        (fewer if fewer came: the caller finds out)."""
        spec = OPS.get(op) if op is not None else None
        if spec is None or not spec.fds:
            return ()
        n = min(spec.fds, len(self._fds))
        return tuple(self._fds.popleft() for _ in range(n))

    def take_stray_fds(self) -> list[int]:
        """fds nobody will claim (their reply was abandoned), for the caller to close."""
        out, self._stray_fds = self._stray_fds, []
        return out

    def release_fds(self) -> list[int]:
        """Every fd the session still holds, for a closing I/O loop to close."""
        out = self.take_stray_fds() + list(self._fds)
        self._fds.clear()
        return out


def parse_result(op: str, result: Mapping[str, object]) -> Result:
    """The op's result model over a reply's ``result`` (unknown keys kept);
    ``ValueError`` when the daemon's reply does not fit the contract."""
    try:
        return OPS[op].result.model_validate(result)
    except ValidationError as exc:
        raise ValueError(
            f"{op}: result does not fit the protocol: {m.format_validation_error(exc)}"
        ) from None


__all__ = [
    "MAX_ERROR_MESSAGE",
    "ClientSession",
    "Event",
    "Rejected",
    "Reply",
    "Request",
    "ServerSession",
    "error_frame",
    "parse_result",
]
