"""``fault_fd`` over the wire, against a daemon process, with both client libraries:
the fd arrives with the reply (SCM_RIGHTS on the control socket), groups arrive on it
as kernel records, answers written to it apply, and closing it returns the queue to
``fault`` events. The ``iopfd`` fixture checks the exactly-once identity afterwards.
"""

from __future__ import annotations

import socket

import pytest
import trio
from iopfd_flows import ACCEL0, IOVA, LAST_PAGE, READ
from iopfd_harness import DaemonProc

from clients import Busy, IopfClient, NoSuchObject, PendingGroup, ResponseCode
from clients.faultfd import read_group, receive_group, write_responses
from clients.sync import SyncClient

TIMEOUT_S = 30.0


def _pending(groups: list[PendingGroup], fault_id: int) -> set[int]:
    return {g.cookie for g in groups if g.fault_id == fault_id}  # IDs are daemon-wide


def test_the_blocking_client_reads_and_answers_groups_on_the_fault_fd(iopfd: DaemonProc) -> None:
    with SyncClient(iopfd.socket, client_name="ffd-sync", timeout=TIMEOUT_S) as c:
        dev = c.bind(ACCEL0)
        ioas = c.ioas_alloc()
        fault = c.fault_alloc()
        hwpt = c.hwpt_alloc(dev, ioas, fault_id=fault)
        c.attach(dev, hwpt)
        with c.fault_fd(fault) as fd:
            assert (fd.family, fd.type) == (socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with pytest.raises(Busy):
                c.fault_fd(fault)
            with pytest.raises(NoSuchObject):
                c.fault_fd(ioas)
            # a DMA miss: the group comes on the fd, the answer goes back through it
            dma = c.send("dma", dev_id=dev, iova=IOVA, length=4096, perm=READ)
            group = read_group(fd, fault, timeout=TIMEOUT_S)
            assert group is not None and group.addresses == [IOVA] and group.dev_id == dev
            assert group.records[-1].flags == LAST_PAGE
            c.ioas_map(ioas, IOVA, 4096, READ)
            write_responses(fd, [(group.cookie, ResponseCode.SUCCESS)])
            assert c.wait(dma, "dma")["status"] == "ok"
            # groups in order; a refused entry leaves the rest pending
            for grpid in (1, 2, 3):
                c.inject(ACCEL0, IOVA + grpid * 4096, READ, grpid)
            groups = [read_group(fd, fault, timeout=TIMEOUT_S) for _ in range(3)]
            assert [g.grpid for g in groups if g is not None] == [1, 2, 3]
            cookies = [g.cookie for g in groups if g is not None]
            write_responses(fd, [(cookies[0], 0), (10**6, 0), (cookies[1], 0)])
            assert c.page_response(fault, [(cookies[2], 0), (cookies[1], 1)]) == 2
        assert c.next_fault(timeout=0.0) is None
        # the fd is closed: the queue is back to events
        c.inject(ACCEL0, IOVA + 9 * 4096, READ, 9)
        back = c.next_fault(timeout=TIMEOUT_S)
        assert back is not None and back.fault_id == fault and back.grpid == 9
        c.answer(back)
        # a second fault fd after the first was closed works
        with c.fault_fd(fault) as fd2:
            c.inject(ACCEL0, IOVA, READ, 10)
            again = read_group(fd2, fault, timeout=TIMEOUT_S)
            assert again is not None and again.grpid == 10
            write_responses(fd2, [(again.cookie, ResponseCode.INVALID)])
            # fd answers get no reply: wait until the daemon applied it
            while _pending(c.pending(), fault):
                pass
        c.detach(dev)
        c.destroy(hwpt)
        with c.fault_fd(fault) as fd3:
            c.destroy(fault)
            assert read_group(fd3, fault, timeout=TIMEOUT_S) is None, "EOF after destroy"


async def test_the_trio_client_reads_and_answers_groups_on_the_fault_fd(
    iopfd: DaemonProc,
) -> None:
    async with IopfClient.open(iopfd.socket, client_name="ffd-trio") as c:
        dev = await c.bind(ACCEL0)
        ioas = await c.ioas_alloc()
        fault = await c.fault_alloc()
        await c.attach(dev, await c.hwpt_alloc(dev, ioas, fault_id=fault))
        fd = await c.fault_fd(fault)
        with fd:
            with pytest.raises(Busy):
                await c.fault_fd(fault)
            with trio.fail_after(TIMEOUT_S):
                async with trio.open_nursery() as nursery:

                    async def serve() -> None:
                        group = await receive_group(fd, fault)
                        assert group is not None and group.addresses == [IOVA]
                        await c.ioas_map(ioas, IOVA, 4096, READ)
                        write_responses(fd, [(group.cookie, ResponseCode.SUCCESS)])

                    nursery.start_soon(serve)
                    assert (await c.dma(dev, IOVA, 4096, READ)).status == "ok"
            for grpid in (4, 5):
                await c.inject(ACCEL0, IOVA + grpid * 4096, READ, grpid)
            with trio.fail_after(TIMEOUT_S):
                groups = [await receive_group(fd, fault) for _ in range(2)]
            assert [g.grpid for g in groups if g is not None] == [4, 5]
        # closed with unanswered groups: they stay pending, answerable by cookie
        assert _pending(await c.pending(), fault) == {g.cookie for g in groups if g is not None}
        await c.inject(ACCEL0, IOVA + 6 * 4096, READ, 6)
        with trio.fail_after(TIMEOUT_S):
            back = await c.fault_queue(fault).__anext__()
        assert back.grpid == 6
        assert await c.answer_all([(g, ResponseCode.SUCCESS) for g in groups if g]) == [None] * 2
        await c.answer(back)
