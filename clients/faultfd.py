"""Reading and answering a kernel-format fault fd (``fault_fd``) from Python.

``client.fault_fd(fault_id)`` returns a ``SOCK_SEQPACKET`` socket on which the daemon
writes each group of the queue as one packet of 40-byte ``struct iommu_hwpt_pgfault``
records (:mod:`iopfd.protocol.uapi`). These helpers turn a packet into a
:class:`~clients.records.FaultGroup` (the same value ``fault_queue`` yields, so
``answer`` works on it too) and write answers back as the kernel fd's ``write()``
takes them::

    fd = await client.fault_fd(fault_id)
    while (group := await receive_group(fd, fault_id)) is not None:
        await client.ioas_map(ioas, group.addresses[0], PAGE_SIZE)
        write_responses(fd, [(group.cookie, ResponseCode.SUCCESS)])

``None`` means end of file: the daemon closed its end (the queue was destroyed, or
the connection closed). Answers written to the fd get no reply; a refused one is
counted by the daemon (``daemon_fault_fd_refused``). ``page_response`` on the control
connection answers the same cookies with a ``done`` count.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterable
from typing import Final

import trio

from clients.records import FaultGroup, FaultRecord, PageResponse
from iopfd.protocol.uapi import decode_records, encode_responses

#: A first peek at a packet; larger ones are peeked again with room for them.
_PEEK_SIZE: Final = 1 << 16


def group_from_packet(fault_id: int, data: bytes, received_ns: int = 0) -> FaultGroup:
    """One packet of the fault fd as a FaultGroup (``ValueError`` if it is not a
    whole, non-empty number of records)."""
    records = decode_records(data)
    if not records:
        raise ValueError("an empty packet is no group")
    return FaultGroup(
        fault_id=fault_id,
        cookie=records[0]["cookie"],
        records=tuple(FaultRecord.from_wire(r) for r in records),
        received_ns=received_ns,
    )


def _take_packet(sock: socket.socket) -> bytes | None:
    """The next packet without blocking (``BlockingIOError`` if none); None at EOF."""
    size = _PEEK_SIZE
    while True:
        data, _anc, flags, _addr = sock.recvmsg(size, 0, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        if not flags & socket.MSG_TRUNC:
            break
        size *= 4
    if not data:
        sock.recv(1, socket.MSG_DONTWAIT)  # EOF (the daemon never sends empty packets)
        return None
    sock.recv(len(data), socket.MSG_DONTWAIT)
    return data


def read_group(
    sock: socket.socket, fault_id: int, timeout: float | None = None
) -> FaultGroup | None:
    """Block until the next group (None at EOF); ``TimeoutError`` after ``timeout`` s."""
    deadline = None if timeout is None else time.monotonic() + timeout
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not poller.poll(None if left is None else left * 1000):
            raise TimeoutError("no group on the fault fd in time")
        try:
            data = _take_packet(sock)
        except BlockingIOError:
            continue  # another reader took it
        return None if data is None else group_from_packet(fault_id, data, time.monotonic_ns())


async def receive_group(sock: socket.socket, fault_id: int) -> FaultGroup | None:
    """The next group, waiting in trio (None at EOF)."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            data = _take_packet(sock)
        except BlockingIOError:
            continue
        return None if data is None else group_from_packet(fault_id, data, time.monotonic_ns())


def write_responses(
    sock: socket.socket, responses: Iterable[PageResponse | tuple[int, int]]
) -> None:
    """One packet of ``struct iommu_hwpt_page_response``: the kernel fd's ``write()``.
    Applied in order up to the first refused entry; nothing comes back."""
    pairs = [(r.cookie, int(r.code)) if isinstance(r, PageResponse) else r for r in responses]
    sock.send(encode_responses(pairs))


__all__ = ["group_from_packet", "read_group", "receive_group", "write_responses"]
