"""The daemon: owns the core, its connections, the hardware task and the listeners.

One trio process, one thread. Every core call runs inline in some task and is
followed, before the next ``await``, by ``core.service(now)`` and the dispatch of
``core.take_events()`` (see :meth:`Daemon.after_call`), so the synchronous core never
sees two callers at once and needs no lock.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Final, cast

import structlog
import trio

from iopfd import __version__
from iopfd.core.errors import CoreError
from iopfd.core.events import (
    CoreEvent,
    DeviceRequest,
    DmaDone,
    FaultDelivered,
    Trace,
    UnplugDone,
)
from iopfd.protocol.errors import EINVAL, ENOSPC
from iopfd.protocol.session import Request, error_frame
from iopfd.server.budgets import ConnectionBudgets
from iopfd.server.config import Config, Limits
from iopfd.server.connection import Connection, now_ns, stream_fd
from iopfd.server.faultfd import FaultFd
from iopfd.server.listener import BoundSocket, bind_unix_socket
from iopfd.server.logconfig import debug_enabled, log_dropped, printable
from iopfd.server.ops import HANDLERS, OBSERVING_OPS, Deferred, PassFd, Sliced
from iopfd.server.peer import PeerCred, is_admin, peer_credentials, resolve_group
from iopfd.server.systemd import Notifier, listen_fds, watchdog_interval_s

if TYPE_CHECKING:
    from collections.abc import Mapping

    from iopfd.core import Context, Core

log = structlog.get_logger("iopfd.daemon")

#: accept() errors that mean "out of resources for now": back off, keep serving.
_ACCEPT_RETRY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED}
)

#: Signals that stop the daemon cleanly (docs/operations.md, *Signals*); of the other
#: catchable ones, SIGUSR1 logs the counters and the rest are logged and ignored (SIGHUP
#: does not reload: the limits are read once, at start).
SHUTDOWN_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
OTHER_SIGNALS: Final = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM)

#: How long the refusal of a connection beyond ``max_connections`` may take to send.
REFUSE_TIMEOUT_S: Final = 1.0


class Daemon:
    def __init__(self, config: Config, core: Core) -> None:
        self.config = config
        self.limits: Limits = config.limits
        self.core = core
        self.server_name = f"iopfd/{__version__}"
        self.admin_gid = resolve_group(config.admin_group)
        # Every documented daemon_* counter is in status from the start, at 0.
        self.counters: Counter[str] = Counter(
            dict.fromkeys(
                (
                    "connections",
                    "connections_refused",
                    "protocol_errors",
                    "internal_errors",
                    "outbuf_overflows",
                    "trace_lost",
                    # fault fds (``fault_fd``): opened, groups sent, answer packets
                    # applied, and what went wrong (docs/protocol.md, *Fault fd*)
                    "fault_fds",
                    "fault_fd_packets",
                    "fault_fd_writes",
                    "fault_fd_malformed",
                    "fault_fd_refused",
                    "fault_fd_send_errors",
                    "fault_fd_overflows",
                ),
                0,
            )
        )
        self.connections: dict[int, Connection] = {}
        self.budgets = ConnectionBudgets(self.limits)
        self._by_ctx: dict[int, Connection] = {}
        self._subscribers: set[Connection] = set()
        self._next_conn_id = 1
        self.started = time.monotonic()
        self._hw_wake = trio.Event()
        self._hw_deadline: int | None = None
        self._hw_sleeping = False
        self.bound: BoundSocket | None = None
        self.notifier = Notifier()
        self._nursery: trio.Nursery | None = None

    @property
    def clients(self) -> int:
        return len(self.connections)

    # --- requests ----------------------------------------------------------------

    def run_request(self, conn: Connection, request: Request, now: int) -> Sliced | None:
        """Run one request the session admitted, inline, and queue its reply (unless the
        op defers it). The caller services the hardware after the read's last request.
        A sliced op whose first step did not finish it is returned: the caller runs the
        rest with ``continue_request``."""
        rid = request.id
        try:
            if request.op in OBSERVING_OPS:
                # It must see the effect of every request before it, serviced.
                self.after_call(now)
            result = HANDLERS[request.op](self, conn, rid, request.args, now)
            if type(result) is Sliced:
                if not result.step():
                    return result
                result = result.result
        except CoreError as exc:
            conn.reply_error(rid, exc.errno, exc.message)
        except Exception as exc:
            self._internal_error(conn, rid, exc, request.op)
        else:
            # Type identity, not isinstance: this runs for every request of the fault path.
            kind = type(result)
            if kind is PassFd:
                fd_result = cast(PassFd, result)
                conn.reply_ok_with_fd(rid, fd_result.result, fd_result.sock)
            elif kind is not Deferred and kind is not Sliced:
                conn.reply_ok(rid, cast("Mapping[str, object]", result))
        return None

    def continue_request(self, conn: Connection, rid: int, sliced: Sliced) -> bool:
        """The next step of a sliced request; True once it is answered."""
        try:
            if not sliced.step():
                return False
        except CoreError as exc:
            conn.reply_error(rid, exc.errno, exc.message)
        except Exception as exc:
            self._internal_error(conn, rid, exc, "sliced")
        else:
            conn.reply_ok(rid, sliced.result)
        return True

    def _internal_error(self, conn: Connection, rid: int, exc: Exception, op: str) -> None:
        # A bug of ours must cost this request only, never the daemon.
        self.counters["internal_errors"] += 1
        log.exception("request failed inside the daemon", op=op, request_id=rid)
        conn.reply_error(rid, EINVAL, f"internal error: {type(exc).__name__}")

    # --- the core, serviced ------------------------------------------------------

    def after_call(self, now: int) -> None:
        """Service the hardware and forward what came out; wake the hardware task
        when the core now wants to run earlier than it planned to."""
        core = self.core
        try:
            core.service(now)
            self.dispatch(core.take_events(), now)
        except Exception:
            # A fault in the core is a bug; log it and keep the other clients served.
            self.counters["internal_errors"] += 1
            log.exception("core service failed")
        if self._hw_sleeping:
            deadline = core.next_deadline()
            if deadline is not None and (self._hw_deadline is None or deadline < self._hw_deadline):
                self._hw_wake.set()

    def dispatch(self, events: list[CoreEvent], now: int) -> None:
        """Forward each event to its connection. One event that cannot be forwarded is
        logged and counted; the ones after it still go out."""
        for ev in events:
            try:
                self._dispatch_one(ev)
            except Exception:
                self.counters["internal_errors"] += 1
                log.exception("event dispatch failed", event_type=type(ev).__name__)

    def _dispatch_one(self, ev: CoreEvent) -> None:
        if type(ev) is FaultDelivered:
            conn = self._by_ctx.get(ev.ctx.id)
            if conn is None:
                return
            if conn.fault_fds:
                # A queue with an open fault fd: one packet there instead of an event.
                ffd = conn.fault_fds.get(ev.fault_id)
                if ffd is not None and ffd.deliver(ev):
                    return
            self.push_fault(conn, ev)
        elif type(ev) is DmaDone:
            conn = self._by_ctx.get(ev.ctx.id)
            if conn is None or not isinstance(ev.tag, int):
                return  # the connection is gone; its DMAs ended with it
            conn.reply_ok(ev.tag, {"status": ev.status, "faults": ev.faults, "bytes": ev.bytes})
        elif type(ev) is DeviceRequest:
            # vfio-pci's REQ interrupt: the owner should finish and unbind the device.
            conn = self._by_ctx.get(ev.ctx.id)
            if conn is None:
                return
            conn.push_event("device_request", {"dev_id": ev.dev_id, "rid": ev.rid})
            log.info("device request", conn=conn.id, dev_id=ev.dev_id, rid=ev.rid)
        elif type(ev) is UnplugDone:
            log.info("unplug", rid=ev.rid, forced=ev.forced)
            conn = self._by_ctx.get(ev.ctx.id) if ev.ctx is not None else None
            if conn is None or not isinstance(ev.tag, int):
                return  # the admin who asked is gone; the device went all the same
            conn.reply_ok(ev.tag, {"forced": ev.forced})
        elif type(ev) is Trace and self._subscribers:
            t = time.time()
            for sub in self._subscribers:
                if ev.topic in sub.topics:
                    sub.push_trace(ev.topic, t, ev.record)

    def push_fault(self, conn: Connection, ev: FaultDelivered) -> None:
        """A group as a ``fault`` event on its connection."""
        body: dict[str, object] = {
            "fault_id": ev.fault_id,
            "cookie": ev.cookie,
            "faults": ev.faults,
        }
        if ev.throttled:
            body["throttled"] = ev.throttled
        conn.push_event("fault", body)
        if debug_enabled():
            log.debug(
                "fault delivered",
                conn=conn.id,
                fault_id=ev.fault_id,
                cookie=ev.cookie,
                records=len(ev.faults),
            )

    def open_fault_fd(self, conn: Connection, fault_id: int) -> socket.socket:
        """``fault_fd``: the daemon keeps one end of a SOCK_SEQPACKET socketpair (its
        tasks run in the daemon's nursery) and returns the other, for the reply."""
        assert self._nursery is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ffd = FaultFd(self, conn, fault_id, self.limits.max_pending, ours)
        conn.fault_fds[fault_id] = ffd
        self.counters["fault_fds"] += 1
        self._nursery.start_soon(ffd.run)
        return theirs

    async def _hardware_task(self) -> None:
        """Runs the core at its deadlines (device retries with back-off); woken early
        when a request schedules work sooner. Page requests need no poll: every request
        is followed by a service call, the emulated interrupt."""
        while True:
            deadline = self.core.next_deadline()
            self._hw_deadline = deadline
            wake_at = math.inf if deadline is None else deadline / 1e9
            self._hw_sleeping = True
            with trio.move_on_at(wake_at):
                await self._hw_wake.wait()
            # Awake: our own service call must not wake us again; the loop recomputes.
            self._hw_sleeping = False
            self._hw_wake = trio.Event()
            self.after_call(now_ns())

    # --- connections -------------------------------------------------------------

    def open_context(self, conn: Connection, client: str) -> Context:
        client = printable(client)  # shown to admins: no terminal escapes
        conn.client = client
        conn.label = f"{client}#{conn.id}" if client else f"conn{conn.id}"
        ctx = self.core.open_context(conn.label, conn.cred.uid)
        conn.ctx = ctx
        self._by_ctx[ctx.id] = conn
        return ctx

    def subscribe(self, conn: Connection, topics: frozenset[str]) -> None:
        conn.topics = topics
        self._subscribers.add(conn)
        self._update_trace_enabled()

    def _update_trace_enabled(self) -> None:
        # The core builds trace records only while someone listens.
        self.core.trace_enabled = bool(self._subscribers)

    async def release_sliced(self, conn: Connection) -> None:
        """``release``, with the context torn down in bounded steps first
        (``Core.close_context_steps``) and a checkpoint between them, so a context with
        thousands of attachments or objects does not stall the other connections. A
        ``shutdown`` meanwhile finishes the teardown at once; this then stops."""
        ctx = conn.ctx
        if ctx is not None and not conn.released:
            steps = self.core.close_context_steps(ctx, now_ns())
            try:
                for _ in steps:
                    self.after_call(now_ns())
                    await conn.pause()  # a teardown's steps are the uid's work too
                    if ctx.closed or conn.released:
                        break
            except Exception:
                self.counters["internal_errors"] += 1
                log.exception("close_context failed", conn=conn.id)
            finally:
                steps.close()
        self.release(conn)  # the rest, and whatever a failed step left

    def release(self, conn: Connection) -> None:
        """Everything the connection owned goes, as if its client had disconnected:
        bound devices, objects, and its pending groups, answered INVALID."""
        if conn.released:
            return
        conn.released = True
        conn.closed = True
        for ffd in list(conn.fault_fds.values()):
            ffd.close("connection_closed")
        conn.drop_fd_frames()
        if self.connections.pop(conn.id, None) is not None:
            self.budgets.closed(conn.cred.uid)
        if conn in self._subscribers:
            self._subscribers.discard(conn)
            self._update_trace_enabled()
        ctx = conn.ctx
        if ctx is None:
            return
        now = now_ns()
        try:
            self.core.close_context(ctx, now)
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("close_context failed", conn=conn.id)
        self._by_ctx.pop(ctx.id, None)
        self.after_call(now)

    def status_counters(self) -> dict[str, int]:
        counters = {f"daemon_{k}": v for k, v in self.counters.items()}
        counters.update(self.core.status_counters())
        counters.update(self.budgets.counters())
        counters["daemon_log_dropped"] = log_dropped()
        return counters

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY_ERRNOS:
                    log.warning("accept failed, backing off", error=os.strerror(exc.errno))
                    await trio.sleep(0.1)
                    continue
                raise
            try:
                cred = peer_credentials(stream.socket)
            except OSError as exc:
                log.warning("peer credentials unavailable, refusing", error=str(exc))
                await stream.aclose()
                continue
            await self.connect(stream, cred)

    async def connect(self, stream: trio.abc.Stream, cred: PeerCred) -> Connection | None:
        """Serve a new connection from the peer ``cred`` (a listener's accepted socket,
        or a memory stream in the in-process tests); ``None`` if refused."""
        assert self._nursery is not None, "connect() needs a running daemon (run())"
        admin = is_admin(cred, self.admin_gid)
        refusal = self.budgets.refusal(cred.uid, admin, len(self.connections))
        if refusal is not None:
            # Bounded whatever clients do: say why, then close (no context made).
            self.counters["connections_refused"] += 1
            log.warning(
                "too many connections, refusing",
                peer_pid=cred.pid,
                peer_uid=cred.uid,
                limit=self.limits.max_connections,
                reason=refusal,
            )
            frame = error_frame(None, ENOSPC, refusal)
            fd = stream_fd(stream)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.write(fd, frame)  # a fresh socket takes a small frame at once
            else:
                with (
                    trio.move_on_after(REFUSE_TIMEOUT_S),
                    contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
                ):
                    await stream.send_all(frame)
            await stream.aclose()
            return None
        conn_id = self._next_conn_id
        self._next_conn_id += 1
        conn = Connection(self, stream, conn_id, cred, admin, self.budgets.opened(cred.uid))
        self.connections[conn_id] = conn
        self.counters["connections"] += 1
        self._nursery.start_soon(conn.run)
        return conn

    # --- lifecycle ---------------------------------------------------------------

    def _listeners(self) -> list[trio.SocketListener]:
        socks = listen_fds()
        if socks:
            log.info("socket activation", fds=[s.fileno() for s in socks])
        else:
            self.bound = bind_unix_socket(
                self.config.socket, self.config.socket_mode, self.admin_gid
            )
            socks = [self.bound.sock]
            log.info("listening", socket=str(self.bound.path), mode=oct(self.config.socket_mode))
        return [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in socks]

    def shutdown(self, reason: str) -> None:
        """Close every connection now, before the tasks are cancelled: every pending
        group is answered INVALID at once (``Core.shutdown``, which skips the
        per-attachment teardown a disconnect does), then each connection releases the
        rest (fault fds, budgets)."""
        for conn in self.connections.values():
            conn.abort(reason)
        try:
            self.core.shutdown(now_ns())
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("core shutdown failed")
        for conn in list(self.connections.values()):
            self.release(conn)

    async def _watchdog(self, interval: float) -> None:
        while True:
            # Sent from the event loop itself: a stalled loop stops the pings.
            self.notifier.notify("WATCHDOG=1", self._status_line())
            await trio.sleep(interval)

    def _status_line(self) -> str:
        return f"STATUS=serving {len(self.connections)} client(s)"

    async def run(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[trio.Nursery] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The hardware task and an accept loop per listener, until cancelled; started
        with the nursery that owns the connections (``connect`` adds to it)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._hardware_task)
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener)
            task_status.started(nursery)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGTERM or SIGINT, then shut down cleanly."""
        # Take the signals before the socket exists: a client (or a test) that sees the
        # socket may signal at once, and must find the clean path already in place.
        listeners: list[trio.SocketListener] = []
        try:
            with trio.open_signal_receiver(*SHUTDOWN_SIGNALS, *OTHER_SIGNALS) as signals:
                listeners = self._listeners()
                async with trio.open_nursery() as outer:
                    nursery: trio.Nursery = await outer.start(self.run, listeners)
                    self.notifier.notify("READY=1", self._status_line())
                    interval = watchdog_interval_s()
                    if interval is not None:
                        nursery.start_soon(self._watchdog, interval)
                    task_status.started()
                    log.info(
                        "ready",
                        server=self.server_name,
                        pid=os.getpid(),
                        kernel=self.core.profile.name,
                    )
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if signum in SHUTDOWN_SIGNALS:
                            log.info("shutting down", signal=name)
                            break
                        if signum == signal.SIGUSR1:  # a snapshot in the log
                            log.info("status", signal=name, counters=self.status_counters())
                        else:
                            log.info("signal ignored", signal=name)
                    self.notifier.notify("STOPPING=1", "STATUS=stopping")
                    self.shutdown("shutdown")
                    outer.cancel_scope.cancel()
        finally:
            for listener in listeners:
                listener.socket.close()
            if self.bound is not None:
                self.bound.remove()
            self.notifier.close()
        log.info("stopped", counters=self.status_counters())
