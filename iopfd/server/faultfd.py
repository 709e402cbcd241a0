"""The kernel-format fault fd of the ``fault_fd`` op (docs/protocol.md, *Fault fd*).

``fault_fd`` hands the client one end of a ``SOCK_SEQPACKET`` socketpair (SCM_RIGHTS,
with the reply frame); the daemon keeps the other end, non-blocking, in a
:class:`FaultFd`. From then on each group of that fault queue goes out on it as one
packet of 40-byte ``struct iommu_hwpt_pgfault`` records instead of a ``fault`` event,
and packets of 8-byte ``struct iommu_hwpt_page_response`` coming back are applied as
``page_response`` is (the kernel fault fd's ``write()``), with no reply.

A packet the peer has no room for waits in a backlog (never more than the queue's
``max_pending`` groups, which is all the core can hold pending) and a small task sends
it when the socket is writable, so the event loop never blocks on a slow reader. When
the peer closes its end the queue goes back to ``fault`` events: groups written to the
fd stay pending, groups still in the backlog go out as events. Destroying the fault
queue or closing the connection closes the daemon's end.
"""

from __future__ import annotations

import errno
import select
import socket
from collections import Counter, deque
from typing import TYPE_CHECKING, Final, Protocol

import structlog
import trio

from iopfd.core.errors import CoreError
from iopfd.protocol.uapi import PAGE_RESPONSE, decode_responses, encode_group
from iopfd.server.connection import now_ns

if TYPE_CHECKING:
    from iopfd.core.events import FaultDelivered
    from iopfd.server.connection import Connection

log = structlog.get_logger("iopfd.faultfd")

#: Largest response packet read at once (a SEQPACKET packet is bounded by the
#: sender's socket buffer, 208 KiB by default); a longer one is cut and counted.
RECEIVE_SIZE: Final = 256 * 1024

#: send() errors that mean "no room now": backlog the packet and wait for writability.
_FULL_ERRNOS: Final = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})


class FaultFdHost(Protocol):
    """What a fault fd needs of the daemon (``Daemon`` is one)."""

    @property
    def counters(self) -> Counter[str]: ...

    def after_call(self, now: int) -> None: ...

    def push_fault(self, conn: Connection, ev: FaultDelivered) -> None:
        """Deliver a group as a ``fault`` event on the control connection."""


class FaultFd:
    """The daemon's end of one fault queue's fault fd."""

    def __init__(
        self,
        host: FaultFdHost,
        conn: Connection,
        fault_id: int,
        max_backlog: int,
        ours: socket.socket,
    ) -> None:
        ours.setblocking(False)
        self.host = host
        self.conn = conn
        self.fault_id = fault_id
        self.max_backlog = max_backlog
        self.sock = ours
        self._tsock = trio.socket.from_stdlib_socket(ours)
        #: Groups the socket had no room for yet, oldest first.
        self.backlog: deque[FaultDelivered] = deque()
        self._wake = trio.Event()
        self._scope = trio.CancelScope()
        self.closed = False
        self.sent = 0

    # --- groups out ----------------------------------------------------------------

    def deliver(self, ev: FaultDelivered) -> bool:
        """Send ``ev``'s group as one packet (or backlog it); False when it must go out
        as a ``fault`` event instead (the fd is closed, or cannot take it)."""
        if self.closed:
            return False
        if self.backlog:
            if len(self.backlog) >= self.max_backlog:
                self._count("fault_fd_overflows", "fault fd backlog full, sent as an event")
                return False
            self.backlog.append(ev)
            return True
        try:
            if self._send(ev):
                return True
        except OSError as exc:
            self._send_failed(exc)
            return False
        self.backlog.append(ev)
        self._wake.set()
        return True

    def _send(self, ev: FaultDelivered) -> bool:
        """One packet, without blocking: True if sent, False if the peer has no room."""
        try:
            self.sock.send(encode_group(ev.faults, ev.cookie))
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                return False
            raise
        self.sent += 1
        self.host.counters["fault_fd_packets"] += 1
        return True

    def _send_failed(self, exc: OSError) -> None:
        """A packet that cannot go out on the fd goes out as an event (never dropped):
        too large for the socket (that group only), or the peer is gone (the queue goes
        back to events, the backlog first). The caller pushes the packet's event."""
        if exc.errno == errno.EMSGSIZE:
            self._count(
                "fault_fd_send_errors", "group too large for the fault fd, sent as an event"
            )
        else:
            self._count("fault_fd_send_errors", "fault fd send failed", error=str(exc))
            self.close("peer_gone", redeliver=True)

    async def _flusher(self) -> None:
        """Sends the backlog, oldest first, whenever the socket is writable."""
        while True:
            while not self.backlog:
                await self._wake.wait()
                self._wake = trio.Event()
            if self.closed:
                return
            try:
                await trio.lowlevel.wait_writable(self.sock)
            except (OSError, trio.ClosedResourceError):
                return  # closed meanwhile
            while self.backlog and not self.closed:
                ev = self.backlog.popleft()
                try:
                    if self._send(ev):
                        continue
                except OSError as exc:
                    if exc.errno == errno.EMSGSIZE:
                        self._send_failed(exc)
                        self.host.push_fault(self.conn, ev)
                    else:
                        self.backlog.appendleft(ev)  # redelivered first, with the rest
                        self._send_failed(exc)
                    continue
                self.backlog.appendleft(ev)  # no room yet: wait again
                break

    # --- answers in ----------------------------------------------------------------

    async def _reader(self) -> None:
        while True:
            try:
                data, _anc, flags, _addr = await self._tsock.recvmsg(RECEIVE_SIZE)
            except (OSError, trio.ClosedResourceError):
                self.close("peer_gone", redeliver=True)  # nothing if closed already
                return
            if self.closed:
                return  # closed while the read completed
            if not data:
                if self._peer_closed():
                    self.close("peer_closed", redeliver=True)
                    return
                continue  # a zero-length packet: write() of nothing
            if flags & socket.MSG_TRUNC:
                self._count("fault_fd_malformed", "response packet too long, ignored")
                continue
            self.apply(data)

    def _peer_closed(self) -> bool:
        """A zero-length read is EOF only once the peer is gone (POLLHUP); a zero-length
        packet reads the same."""
        p = select.poll()
        p.register(self.sock, select.POLLIN)
        return any(ev & (select.POLLHUP | select.POLLERR) for _fd, ev in p.poll(0))

    def apply(self, data: bytes) -> None:
        """A packet of ``struct iommu_hwpt_page_response``: applied as ``page_response``
        (the kernel's ``write()``); nothing is sent back. A malformed packet or a refused
        first entry is counted and logged; the fd stays open."""
        ctx = self.conn.ctx
        if ctx is None or self.closed:
            return
        if len(data) % PAGE_RESPONSE.size:
            self._count("fault_fd_malformed", "response packet not a multiple of 8 bytes")
            return
        self.host.counters["fault_fd_writes"] += 1
        now = now_ns()
        try:
            ctx.page_response(self.fault_id, decode_responses(data), now)
        except CoreError as exc:
            self._count("fault_fd_refused", "response packet refused", error=exc.message)
        finally:
            self.host.after_call(now)

    # --- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        """The reader and the backlog's sender, until :meth:`close`."""
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader)
                    nursery.start_soon(self._flusher)
        except Exception:
            # A bug here costs this fd (back to events), never the daemon.
            self.host.counters["internal_errors"] += 1
            log.exception("fault fd task failed", conn=self.conn.id, fault_id=self.fault_id)
            self.close("internal_error", redeliver=True)

    def close(self, reason: str, *, redeliver: bool = False) -> None:
        """Close the daemon's end. ``redeliver``: the queue goes back to events and the
        backlog (groups never written to the fd) goes out as ``fault`` events; without
        it (the queue or the connection is gone) the backlog is dropped, its groups
        having been answered by the core."""
        if self.closed:
            return
        self.closed = True
        if self.conn.fault_fds.get(self.fault_id) is self:
            del self.conn.fault_fds[self.fault_id]
        self._scope.cancel()
        self._tsock.close()
        backlog, self.backlog = self.backlog, deque()
        log.info(
            "fault fd closed",
            conn=self.conn.id,
            fault_id=self.fault_id,
            reason=reason,
            packets=self.sent,
            backlog=len(backlog),
        )
        if redeliver:
            for ev in backlog:
                self.host.push_fault(self.conn, ev)

    def _count(self, counter: str, message: str, **fields: object) -> None:
        self.host.counters[counter] += 1
        log.warning(message, conn=self.conn.id, fault_id=self.fault_id, **fields)


__all__ = ["FaultFd", "FaultFdHost"]
