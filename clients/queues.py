"""Where pushed events wait for their reader: fault queues, device requests, the trace stream.

The client's reader task puts every event here without ever blocking, so a slow
consumer can delay its own events but never the replies to other calls.
"""

from __future__ import annotations

import math
from contextlib import suppress

import trio

from clients.records import DeviceRequest, FaultGroup, TraceRecord
from iopfd.protocol.session import Event


class FaultQueue:
    """The groups of one fault queue, in delivery order: an async iterator of FaultGroup.

    ``async for group in queue`` ends when the fault queue is destroyed, and
    raises :class:`ConnectionLost` if the connection goes away. Groups are
    buffered in the client as they arrive (the daemon bounds how many can be
    pending per queue), so a handler may take them one by one or in batches
    with :meth:`receive_batch`.
    """

    def __init__(self, fault_id: int) -> None:
        self.fault_id = fault_id
        self._send, self._recv = trio.open_memory_channel[FaultGroup | BaseException](math.inf)

    def __aiter__(self) -> FaultQueue:
        return self

    async def __anext__(self) -> FaultGroup:
        try:
            item = await self._recv.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, BaseException):
            raise item
        return item

    async def receive(self) -> FaultGroup:
        """The next group; raises EndOfChannel once the queue was destroyed."""
        item = await self._recv.receive()
        if isinstance(item, BaseException):
            raise item
        return item

    async def receive_batch(self, max_groups: int = 256) -> list[FaultGroup]:
        """Wait for at least one group, then take every group already buffered (up to max)."""
        batch = [await self.receive()]
        while len(batch) < max_groups:
            try:
                item = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            if isinstance(item, BaseException):
                raise item
            batch.append(item)
        return batch

    @property
    def buffered(self) -> int:
        """Groups received from the daemon that the handler has not taken yet."""
        return self._recv.statistics().current_buffer_used

    def _put(self, item: FaultGroup | BaseException) -> None:
        # a closed queue has no reader left: a late group is dropped
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._send.send_nowait(item)

    def _close(self) -> None:
        self._send.close()


class DeviceRequestStream:
    """``device_request`` events, in arrival order: an async iterator of DeviceRequest.

    The daemon sends one per bound device per ``unplug``, so the buffer stays small.
    It raises :class:`EventGap` once at a gap in the event sequence, and
    :class:`ConnectionLost` when the connection goes away; it ends when the client is
    closed.
    """

    def __init__(self) -> None:
        self._send, self._recv = trio.open_memory_channel[DeviceRequest | BaseException](math.inf)

    def __aiter__(self) -> DeviceRequestStream:
        return self

    async def __anext__(self) -> DeviceRequest:
        try:
            item = await self._recv.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, BaseException):
            raise item
        return item

    def receive_nowait(self) -> DeviceRequest | None:
        """A request already received, or None (never blocks)."""
        try:
            item = self._recv.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def _put(self, item: DeviceRequest | BaseException) -> None:
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._send.send_nowait(item)

    def _close(self) -> None:
        self._send.close()


class TraceStream:
    """The ``subscribe`` stream: an async iterator of TraceRecord.

    The client keeps at most ``buffer`` unread records; beyond that it drops
    records rather than stall the connection, and the next record's ``lost``
    counts them (together with the daemon's own drops).
    """

    def __init__(self, buffer: int) -> None:
        self._send, self._recv = trio.open_memory_channel[TraceRecord | BaseException](math.inf)
        self._limit = buffer
        self._lost = 0
        self.dropped = 0

    def __aiter__(self) -> TraceStream:
        return self

    async def __anext__(self) -> TraceRecord:
        try:
            item = await self._recv.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, BaseException):
            raise item
        return item

    def _put_event(self, ev: Event) -> None:
        if self._recv.statistics().current_buffer_used >= self._limit:
            self._lost += 1
            self.dropped += 1
            return
        rec = TraceRecord.from_event(ev, self._lost)
        self._lost = 0
        self._put(rec)

    def _put(self, item: TraceRecord | BaseException) -> None:
        with suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            self._send.send_nowait(item)

    def _close(self) -> None:
        self._send.close()
