"""One client connection: a reader that handles requests inline, a coalescing writer.

The reader feeds bytes to a :class:`FrameDecoder` and runs each complete request to
its end before reading on: validation, the core call, the reply, then
``core.service(now)`` and the dispatch of the core's events, with no ``await`` in
between, so the single-threaded core needs no lock. Everything this connection sends
is appended to one outgoing list; the writer takes the whole list per wake-up and
sends it with a single ``send_all``. Unsent bytes are capped by ``max_outbuf``: past
it the connection is dropped, as if the client had disconnected.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Final

import structlog
import trio

from iopfd.core.errors import CoreError
from iopfd.protocol.errors import EINVAL, ENOSPC, EPERM, EPROTO, RequestError
from iopfd.protocol.frames import FrameDecoder, ProtocolViolation, encode_frame
from iopfd.protocol.models import ADMIN_OPS, request_id, request_op, validate_args
from iopfd.server.peer import PeerCred

if TYPE_CHECKING:
    from iopfd.core import Context
    from iopfd.server.daemon import Daemon

log = structlog.get_logger("iopfd.connection")

RECEIVE_SIZE: Final = 256 * 1024
#: Error messages are for people; a client's bad input never makes them long.
MAX_ERROR_MESSAGE: Final = 1024
#: How long a closing connection may take to flush its last frames (an EPROTO error).
FLUSH_TIMEOUT_S: Final = 2.0


#: Ops that report the core's state: they run on a serviced core even in the middle of
#: a batch of requests (the batch is otherwise serviced once, at its end).
OBSERVING_OPS: Final = frozenset({"status", "pending", "objects", "topology", "devices"})


class Deferred:
    """Returned by an op whose reply comes later (``dma``: on its DmaDone event;
    ``unplug``: on its UnplugDone event)."""


DEFERRED: Final = Deferred()


class Connection:
    def __init__(self, daemon: Daemon, stream: trio.SocketStream, conn_id: int,
                 cred: PeerCred, admin: bool) -> None:
        self.daemon = daemon
        self.stream = stream
        self.id = conn_id
        self.cred = cred
        self.admin = admin
        self.client = ""
        self.label = f"conn{conn_id}"
        self.ctx: Context | None = None
        self.decoder = FrameDecoder(daemon.limits.max_frame)
        self.seq = 0
        self.dma_inflight: set[int] = set()
        #: Request ids of ``unplug`` calls waiting for the device to go (``UnplugDone``).
        self.unplug_inflight: set[int] = set()
        self.topics: frozenset[str] = frozenset()
        self.trace_queued = 0
        self.trace_lost = 0
        self.requests = 0
        self.opened = time.monotonic()
        self._out: list[bytes] = []
        self.outbytes = 0
        self._writer_wake = trio.Event()
        #: The writer holds bytes taken from ``_out`` that are not all sent yet.
        self._writer_busy = False
        #: The reader is running a batch and will send what it queued itself.
        self._in_batch = False
        self._finishing = False
        #: No more output is accepted; set when the connection is being torn down.
        self.closed = False
        self.close_reason = "eof"
        self.released = False
        self._scope: trio.CancelScope | None = None
        self._fd = stream.socket.fileno()

    # --- output ------------------------------------------------------------------

    def _enqueue(self, frame: bytes) -> None:
        if self.closed:
            return
        self.outbytes += len(frame)
        self._out.append(frame)
        if self.outbytes > self.daemon.limits.max_outbuf:
            self.daemon.counters["outbuf_overflows"] += 1
            log.warning("outgoing buffer over max_outbuf, dropping connection",
                        conn=self.id, outbytes=self.outbytes)
            self.abort("outbuf_overflow")
            return
        if not self._in_batch:
            self._writer_wake.set()

    def _frame(self, msg: dict[str, object]) -> bytes:
        frame = encode_frame(msg)
        if len(frame) - 4 > self.daemon.limits.max_frame:
            raise RequestError(ENOSPC, f"result of {len(frame) - 4} bytes exceeds max_frame")
        return frame

    def reply_ok(self, rid: int, result: dict[str, object]) -> None:
        try:
            frame = self._frame({"id": rid, "ok": True, "result": result})
        except RequestError as exc:
            self.reply_error(rid, exc.errno, exc.message)
            return
        self._enqueue(frame)

    def reply_error(self, rid: int | None, code: str, message: str) -> None:
        if len(message) > MAX_ERROR_MESSAGE:
            message = message[:MAX_ERROR_MESSAGE] + "..."
        self._enqueue(encode_frame(
            {"id": rid, "ok": False, "error": {"code": code, "message": message}}))

    def push_event(self, event: str, body: dict[str, object]) -> None:
        """An event frame: ``event`` and ``seq`` (per connection, from 1) first."""
        if self.closed:
            return
        self.seq += 1
        msg = {"event": event, "seq": self.seq, **body}
        msg["event"], msg["seq"] = event, self.seq  # a body key never overrides these
        self._enqueue(encode_frame(msg))

    def push_trace(self, topic: str, t: float, record: dict[str, object]) -> None:
        """A trace record, or a dropped one if ``trace_buffer`` records wait unsent."""
        if self.closed:
            return
        if self.trace_queued >= self.daemon.limits.trace_buffer:
            self.trace_lost += 1
            self.daemon.counters["trace_lost"] += 1
            return
        body: dict[str, object] = {"topic": topic, "t": t, **record}
        body["topic"], body["t"] = topic, t
        if self.trace_lost:
            body["lost"] = self.trace_lost
            self.trace_lost = 0
        self.trace_queued += 1
        self.push_event("trace", body)

    async def _writer(self) -> None:
        while True:
            if not self._out:
                if self._finishing:
                    return
                await self._writer_wake.wait()
                self._writer_wake = trio.Event()
                continue
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self.trace_queued = 0
            self._writer_busy = True
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.abort("peer_gone")
                return
            finally:
                self._writer_busy = False
            self.outbytes -= len(data)

    def _send_now(self) -> None:
        """End of a batch: send what it queued straight from the reader with one
        non-blocking write, as a plain server replies; only what the socket would not
        take goes to the writer task. Saves the task hop on every request/reply."""
        self._in_batch = False
        if not self._out or self.closed:
            return
        if self._writer_busy:
            self._writer_wake.set()  # keep byte order: the writer sends after its chunk
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            n = 0
        except OSError:
            self.abort("peer_gone")
            return
        self.outbytes -= n
        self.trace_queued = 0
        if n == len(data):
            self._out.clear()
        else:
            self._out[:] = [data[n:]]
            self._writer_wake.set()

    # --- lifecycle ---------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Stop at once: no more output, the tasks are cancelled, the owner releases."""
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self._out.clear()
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        with structlog.contextvars.bound_contextvars(
            conn=self.id, peer_pid=self.cred.pid, peer_uid=self.cred.uid
        ):
            log.info("connection accepted", admin=self.admin)
            try:
                async with trio.open_nursery() as nursery:
                    self._scope = nursery.cancel_scope
                    if self.closed:
                        nursery.cancel_scope.cancel()
                    nursery.start_soon(self._writer)
                    await self._reader()
                    # Let the writer flush what is queued (an EPROTO error), briefly.
                    self._finishing = True
                    self._writer_wake.set()
                    nursery.cancel_scope.deadline = trio.current_time() + FLUSH_TIMEOUT_S
            except Exception:
                # A bug in this connection's tasks closes this connection, not the daemon.
                self.daemon.counters["internal_errors"] += 1
                self.close_reason = "internal_error"
                log.exception("connection task failed")
            finally:
                self.closed = True
                self.daemon.release(self)
                with trio.CancelScope(shield=True):
                    await self.stream.aclose()
                log.info("connection closed", reason=self.close_reason,
                         requests=self.requests)

    async def _reader(self) -> None:
        hello_timeout = self.daemon.limits.hello_timeout_s
        hello_deadline = trio.current_time() + hello_timeout
        while True:
            try:
                if self.hello_done:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                else:
                    # A connection that never says hello must not hold a slot forever.
                    with trio.move_on_at(hello_deadline) as waited:
                        data = await self.stream.receive_some(RECEIVE_SIZE)
                    if waited.cancelled_caught:
                        self._violation(f"no hello within {hello_timeout:g} s")
                        self.close_reason = "hello_timeout"
                        return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.close_reason = "reset"
                return
            if not data:
                if self.decoder.buffered:
                    self._violation(f"connection closed inside a frame "
                                    f"({self.decoder.buffered} bytes held)")
                return
            try:
                msgs = self.decoder.feed(data)
            except ProtocolViolation as exc:
                self._violation(str(exc))
                return
            # Every request of this read runs to its end, then the hardware is serviced
            # once for all of them (the emulated interrupt): one PRQ pass, one head
            # write and batched answers for a burst, with no await in between.
            daemon = self.daemon
            self._in_batch = True
            try:
                for msg in msgs:
                    if not self.handle(msg) or self.closed:
                        return
            finally:
                if msgs:
                    daemon.after_call(daemon.now_ns())
                self._send_now()
            try:
                self.decoder.check()
            except ProtocolViolation as exc:
                self._violation(str(exc))
                return

    def _violation(self, message: str, rid: int | None = None) -> None:
        self.daemon.counters["protocol_errors"] += 1
        log.warning("protocol violation", error=message)
        self.reply_error(rid, EPROTO, message)
        self.close_reason = "protocol_violation"

    # --- requests ----------------------------------------------------------------

    def handle(self, msg: dict[str, object]) -> bool:
        """Run one request to its end; False when the connection must close (EPROTO).
        The caller services the hardware (``Daemon.after_call``) after a batch."""
        daemon = self.daemon
        now = daemon.now_ns()
        self.requests += 1
        rid: int | None = None
        op = "?"
        keep_open = True
        try:
            rid = request_id(msg)
            op = request_op(msg, rid)
            self._admit(op, rid)
            args = validate_args(op, {k: v for k, v in msg.items() if k != "op" and k != "id"},
                                 rid)
            if op in OBSERVING_OPS:
                # It must see the effect of every request before it, serviced.
                daemon.after_call(now)
            result = daemon.ops[op](self, rid, args, now)
        except RequestError as exc:
            if exc.closes_connection:
                self._violation(exc.message, exc.request_id)
                keep_open = False
            else:
                self.reply_error(exc.request_id, exc.errno, exc.message)
        except CoreError as exc:
            self.reply_error(rid, exc.errno, exc.message)
        except Exception as exc:
            # A bug of ours must cost this request only, never the daemon.
            daemon.counters["internal_errors"] += 1
            log.exception("request failed inside the daemon", op=op, request_id=rid)
            self.reply_error(rid, EINVAL, f"internal error: {type(exc).__name__}")
        else:
            if not isinstance(result, Deferred):
                self.reply_ok(rid, result)
        return keep_open

    def _admit(self, op: str, rid: int) -> None:
        """The session rule (``hello`` first), then the admin rule."""
        if not self.hello_done and op != "hello":
            raise RequestError(EPROTO, "the first request must be hello", rid)
        if op in ADMIN_OPS and not self.admin:
            raise RequestError(EPERM, f"{op} is an admin op", rid)

    @property
    def hello_done(self) -> bool:
        return self.ctx is not None
