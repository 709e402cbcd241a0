"""One client connection: an I/O loop around a ``ServerSession``.

The reader feeds each read to the connection's :class:`ServerSession`, which applies
every session rule and hands back requests, and runs each request to its end before
taking the next: the core call, the reply, with no ``await`` in between, so the
single-threaded core needs no lock. After the read's last request the host services
the core once (the emulated interrupt) and what the read produced goes out with one
non-blocking write. Whatever the socket does not take goes to the writer task, which
sends everything queued with one ``send_all`` per wake-up. Unsent bytes are capped by
``max_outbuf`` (past it the connection is dropped, as if the client had gone), trace
records waiting unsent by ``trace_buffer`` (past it they are dropped and counted), and
a connection that sends no ``hello`` within ``hello_timeout_s`` is closed (EPROTO).
"""

from __future__ import annotations

import array
import os
import socket
import time
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Protocol

import structlog
import trio

from iopfd.protocol.session import Rejected, Request, ServerSession
from iopfd.server.budgets import UidOutput
from iopfd.server.config import Limits
from iopfd.server.peer import PeerCred

if TYPE_CHECKING:
    from iopfd.core import Context
    from iopfd.server.faultfd import FaultFd
    from iopfd.server.ops import Sliced

log = structlog.get_logger("iopfd.connection")

RECEIVE_SIZE: Final = 256 * 1024
#: How long a closing connection may take to flush its last frames (an EPROTO error).
FLUSH_TIMEOUT_S: Final = 2.0
#: Fairness: the reader yields to the other tasks after this many requests of one read,
#: or once it has run this long, whichever comes first (docs/operations.md).
REQUESTS_PER_SLICE: Final = 64
SLICE_S: Final = 0.005

#: The one buffer every connection's reader reads into (one thread, and each read is
#: copied out before the reader yields); allocated once, see ``Connection._receive``.
_READ_BUFFER: Final = [bytearray(RECEIVE_SIZE)]
_READ_VIEW: Final = memoryview(_READ_BUFFER[0])


class Host(Protocol):
    """What a connection needs of the daemon that owns it (``Daemon`` is one)."""

    @property
    def limits(self) -> Limits: ...
    @property
    def counters(self) -> Counter[str]: ...

    def run_request(self, conn: Connection, request: Request, now: int) -> Sliced | None:
        """Run one request to its end and queue its reply (unless deferred), or, for a
        sliced op, its first step; then the rest is returned."""

    def continue_request(self, conn: Connection, rid: int, sliced: Sliced) -> bool:
        """The next step of a sliced request; True once it is answered."""

    def after_call(self, now: int) -> None:
        """Service the core and forward what came out."""

    def release(self, conn: Connection) -> None:
        """Everything the connection owned goes; its pending groups are answered."""

    async def release_sliced(self, conn: Connection) -> None:
        """``release``, the context torn down in steps with others served between."""


def now_ns() -> int:
    """The core's clock: trio's clock in integer nanoseconds (a ``MockClock`` in tests).
    Rounded, not truncated: woken at ``deadline / 1e9``, the hardware task must read
    ``deadline`` back, not ``deadline - 1`` (which would find nothing due and spin)."""
    return round(trio.current_time() * 1e9)


def stream_fd(stream: trio.abc.Stream) -> int | None:
    """The socket's fd for the reader's direct write; ``None`` for other streams (memory
    streams in tests): everything then goes through the writer task."""
    if isinstance(stream, trio.SocketStream):
        return stream.socket.fileno()
    return None


class FdFrame(bytes):
    """A frame that carries an fd (SCM_RIGHTS): sent by the writer task with
    ``sendmsg``, after every frame queued before it; ``sock`` is closed once sent."""

    sock: socket.socket


class Connection:
    def __init__(  # noqa: PLR0917
        self,
        host: Host,
        stream: trio.abc.Stream,
        conn_id: int,
        cred: PeerCred,
        admin: bool,
        uid_out: UidOutput | None = None,
    ) -> None:
        limits = host.limits
        self.host = host
        self.stream = stream
        self.id = conn_id
        self.cred = cred
        self.admin = admin
        self.session = ServerSession(
            admin=admin, max_frame=limits.max_frame, max_deferred=limits.max_dma_inflight
        )
        self.client = ""
        self.label = f"conn{conn_id}"
        self.ctx: Context | None = None
        self.topics: frozenset[str] = frozenset()
        self.trace_queued = 0
        self.trace_lost = 0
        self.opened = time.monotonic()
        self._max_outbuf = limits.max_outbuf
        self._trace_buffer = limits.trace_buffer
        self._out: list[bytes] = []
        self.outbytes = 0
        #: ``FdFrame``s in ``_out``: while there is one, the writer task sends.
        self._fd_frames = 0
        #: The open fault fds (``fault_fd``) of this connection's fault queues.
        self.fault_fds: dict[int, FaultFd] = {}
        #: Unsent bytes of all the peer uid's connections (``max_outbuf_per_uid``).
        self.uid_out = uid_out
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
        self._fd = stream_fd(stream)
        #: The reader's fairness slice: requests left, and when it ends (perf_counter).
        #: ``outbytes`` went back to the uid's count (``_release_output``).
        self._out_released = False
        #: The slice this connection's requests draw on: its uid's (``take_slice``).
        self._share = uid_out if uid_out is not None else UidOutput(1 << 62)

    # --- output ------------------------------------------------------------------

    def _enqueue(self, frame: bytes) -> None:
        if self.closed:
            return
        self.outbytes += len(frame)
        self._out.append(frame)
        uid_out = self.uid_out
        if uid_out is not None:
            uid_out.bytes += len(frame)
        if self.outbytes > self._max_outbuf or (uid_out is not None and uid_out.over):
            self.host.counters["outbuf_overflows"] += 1
            log.warning(
                "outgoing buffer over max_outbuf, dropping connection",
                conn=self.id,
                outbytes=self.outbytes,
            )
            self.abort("outbuf_overflow")
            return
        if not self._in_batch:
            self._writer_wake.set()

    def reply_ok(self, rid: int, result: Mapping[str, object]) -> None:
        self._enqueue(self.session.reply(rid, result))

    def reply_ok_with_fd(self, rid: int, result: Mapping[str, object], sock: socket.socket) -> None:
        """The reply frame with ``sock``'s fd passed in the same ``sendmsg``; the
        connection owns ``sock`` from now on (closed once sent, or when dropped)."""
        if self.closed:
            sock.close()
            return
        frame = FdFrame(self.session.reply(rid, result))
        frame.sock = sock
        self._fd_frames += 1
        self._enqueue(frame)

    @property
    def can_pass_fds(self) -> bool:
        """Whether the connection is a Unix socket (fds can ride on it)."""
        return isinstance(self.stream, trio.SocketStream) and (
            self.stream.socket.family == socket.AF_UNIX
        )

    def reply_error(self, rid: int | None, code: str, message: str) -> None:
        self._enqueue(self.session.error(rid, code, message))

    def push_event(self, event: str, body: dict[str, object]) -> None:
        """An event frame, numbered by the session's ``seq``."""
        if self.closed:
            return
        self._enqueue(self.session.event(event, body))

    def push_trace(self, topic: str, t: float, record: dict[str, object]) -> None:
        """A trace record, or a dropped one if ``trace_buffer`` records wait unsent."""
        if self.closed:
            return
        if self.trace_queued >= self._trace_buffer:
            self.trace_lost += 1
            self.host.counters["trace_lost"] += 1
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
            if self._fd_frames:
                if not await self._send_fd_frame():
                    return
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
            self._sent(len(data))

    async def _send_fd_frame(self) -> bool:
        """What is queued before the first ``FdFrame``, then that frame with its fd in
        one ``sendmsg`` (a partial send carries the fd with its first byte). False when
        the peer is gone."""
        i = next(i for i, f in enumerate(self._out) if type(f) is FdFrame)
        head, frame = self._out[:i], self._out[i]
        del self._out[: i + 1]
        assert isinstance(frame, FdFrame)
        self._fd_frames -= 1
        self.trace_queued = 0
        self._writer_busy = True
        try:
            if head:
                data = b"".join(head)
                await self.stream.send_all(data)
                self._sent(len(data))
            assert isinstance(self.stream, trio.SocketStream)
            fds = array.array("i", [frame.sock.fileno()])
            n = await self.stream.socket.sendmsg(
                [frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
            )
            if n < len(frame):
                await self.stream.send_all(frame[n:])
            self._sent(len(frame))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.abort("peer_gone")
            return False
        finally:
            self._writer_busy = False
            frame.sock.close()
        return True

    def drop_fd_frames(self) -> None:
        """Close the fds of reply frames that will never be sent."""
        if self._fd_frames:
            for f in self._out:
                if type(f) is FdFrame:
                    f.sock.close()
            self._fd_frames = 0

    def _send_now(self) -> None:
        """End of a batch: send what it queued straight from the reader with one
        non-blocking write, as a plain server replies; only what the socket would not
        take goes to the writer task. Saves the task hop on every request/reply."""
        self._in_batch = False
        if not self._out or self.closed:
            return
        if self._writer_busy or self._fd is None or self._fd_frames:
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
        self._sent(n)
        self.trace_queued = 0
        if n == len(data):
            self._out.clear()
        else:
            self._out[:] = [data[n:]]
            self._writer_wake.set()

    def _sent(self, n: int) -> None:
        if self._out_released:
            return  # abort gave it all back already
        self.outbytes -= n
        if self.uid_out is not None:
            self.uid_out.bytes -= n

    def _release_output(self) -> None:
        """What is queued or in flight leaves the uid's count at once: a connection
        dropped over the uid's output budget must not keep the uid over it while its
        teardown runs, and get the uid's other connections dropped too."""
        self._sent(self.outbytes)
        self._out_released = True

    # --- lifecycle ---------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Stop at once: no more output, the tasks are cancelled, the owner releases."""
        if not self.closed:
            self.closed = True
            self.close_reason = reason
            self.drop_fd_frames()
            self._out.clear()
            self._release_output()
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
                self.host.counters["internal_errors"] += 1
                self.close_reason = "internal_error"
                log.exception("connection task failed")
            finally:
                self.closed = True
                with trio.CancelScope(shield=True):
                    await self.host.release_sliced(self)
                    self._release_output()  # what was never sent leaves the uid's budget
                    await self.stream.aclose()
                log.info(
                    "connection closed", reason=self.close_reason, requests=self.session.requests
                )

    async def _receive(self) -> bytes | bytearray | None:
        """The next read: bytes, ``b""`` at EOF, ``None`` when the peer reset.

        On a socket the reader reads the fd itself, into the daemon's one read buffer,
        and parks in ``wait_readable`` only when nothing is there: a read that finds
        data costs one ``readv`` instead of trio's stream layers and the scheduler pass
        its ``receive_some`` takes after every successful read (about a third of a
        trio round trip). Fairness does not rest on that pass: :meth:`_reader` yields
        once the uid's slice is used up, counted across reads (``take_slice``).
        ``readv`` into a buffer allocated once also spares the per-read allocation of
        ``RECEIVE_SIZE`` bytes (above malloc's mmap threshold: tens of microseconds a
        read)."""
        fd = self._fd
        if fd is None:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            return data
        while True:
            try:
                n = os.readv(fd, _READ_BUFFER)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
                continue
            except OSError:
                return None  # ECONNRESET, or the fd closed under us
            # A copy: the buffer is the next read's as soon as this task yields.
            data = _READ_VIEW[:n].tobytes()
            # A read counts in the slice as a request does (a stream of partial frames
            # completes none). A client that also speaks on fault fds gets the pass
            # always: what it did there before this read (answers written, an fd
            # closed) is seen first, as it was sent.
            share = self._share
            share.slice_left -= 1
            if self.fault_fds:
                await trio.lowlevel.checkpoint()
            if (
                share.resume is not None
                or share.slice_left <= 0
                or time.perf_counter() > share.slice_end
            ):
                await self.take_slice()
            return data

    async def _reader(self) -> None:
        session = self.session
        host = self.host
        hello_timeout = host.limits.hello_timeout_s
        hello_deadline = trio.current_time() + hello_timeout
        idle_timeout = host.limits.idle_timeout_s
        perf = time.perf_counter
        share = self._share
        while True:
            data: bytes | bytearray | None
            if session.hello_done:
                if idle_timeout and self.holds_nothing:
                    with trio.move_on_after(idle_timeout) as idle:
                        data = await self._receive()
                    if idle.cancelled_caught:
                        if not self.holds_nothing:
                            continue
                        self._rejected(session.idle_timeout(idle_timeout))
                        self.close_reason = "idle_timeout"
                        return
                else:
                    data = await self._receive()
            else:
                # A connection that never says hello must not hold a slot forever.
                with trio.move_on_at(hello_deadline) as waited:
                    data = await self._receive()
                if waited.cancelled_caught:
                    self._rejected(session.hello_timeout(hello_timeout))
                    self.close_reason = "hello_timeout"
                    return
            if data is None:
                self.close_reason = "reset"
                return
            if not data:
                eof = session.receive_eof()
                if eof is not None:
                    self._rejected(eof)
                return
            # Every request of this read runs to its end, then the hardware is serviced
            # once for all of them (the emulated interrupt): one PRQ pass, one head
            # write and batched answers for a burst. Between two requests the reader
            # yields once a slice is used up (REQUESTS_PER_SLICE requests or SLICE_S,
            # whichever first, since it last yielded), so one burst cannot stall the
            # others.
            # The requests of one read arrived together: they run at one instant of the
            # core's clock (read again after a yield), the service after them at its own.
            self._in_batch = True
            ran = False
            now = now_ns()
            try:
                for item in session.iter_requests(data):
                    if (
                        share.resume is not None
                        or share.slice_left <= 0
                        or perf() > share.slice_end
                    ):
                        await self.take_slice()
                        if self.closed:
                            return
                        now = now_ns()
                    share.slice_left -= 1
                    if type(item) is Request:
                        ran = True
                        sliced = host.run_request(self, item, now)
                        if sliced is not None:
                            await self._finish_sliced(item.id, sliced)
                            now = now_ns()
                    else:
                        assert isinstance(item, Rejected)
                        self._rejected(item)
                    if self.closed or session.closed:
                        return
            finally:
                if ran:
                    host.after_call(now_ns())
                self._send_now()

    # --- the uid's slice ---------------------------------------------------------

    async def take_slice(self) -> None:
        """Wait for the uid's slice (``UidOutput``) to have room for one more request.
        Used up, the connection that finds it so yields once while the uid's other
        connections wait, then starts the uid's next slice, and yields once more if
        any of them waited, so they run next to it; a uid idle for a slice's time
        starts a fresh one at once."""
        share = self._share
        while True:
            if share.resume is not None:
                await share.resume.wait()
                continue
            now = time.perf_counter()
            if now > share.slice_end + SLICE_S:
                share.slice_left = REQUESTS_PER_SLICE
                share.slice_end = now + SLICE_S
                return
            if share.slice_left > 0 and now <= share.slice_end:
                return
            resume = share.resume = trio.Event()
            waited = 0
            try:
                await trio.lowlevel.checkpoint()
            finally:
                share.resume = None
                share.slice_left = REQUESTS_PER_SLICE
                share.slice_end = time.perf_counter() + SLICE_S
                waited = resume.statistics().tasks_waiting
                resume.set()
            if waited:
                await trio.lowlevel.checkpoint()
            return

    async def pause(self) -> None:
        """Between two steps of a sliced request or teardown (each costs what a slice
        may): the uid's slice is used up, so everyone else runs first."""
        share = self._share
        share.slice_left = 0
        share.slice_end = time.perf_counter()  # used up now, not idle
        await self.take_slice()

    @property
    def holds_nothing(self) -> bool:
        """No object, subscription, fault fd or reply still due: nothing would be lost
        if the connection went (``idle_timeout_s``)."""
        ctx = self.ctx
        return (
            (ctx is None or not ctx.objects)
            and not self.topics
            and not self.fault_fds
            and not self.session.deferred
        )

    async def _finish_sliced(self, rid: int, sliced: Sliced) -> None:
        """The remaining steps of a sliced request, each after a checkpoint, with the
        hardware serviced and this connection's output sent between two. Left
        unfinished (the connection closes, the daemon stops), the steps are closed and
        the release finishes what they had to do."""
        host = self.host
        try:
            while True:
                host.after_call(now_ns())
                self._send_now()
                self._in_batch = True
                await self.pause()
                if self.closed or host.continue_request(self, rid, sliced):
                    return
        finally:
            sliced.steps.close()

    def _rejected(self, item: Rejected) -> None:
        """A request the session answered itself; EPROTO also closes the connection."""
        if item.close:
            self.host.counters["protocol_errors"] += 1
            log.warning("protocol violation", error=item.message)
            self.close_reason = "protocol_violation"
        self._enqueue(item.data)
