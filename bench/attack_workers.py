"""The attackers and honest tenants of bench/attacks.py, each a process of its own uid.

    python -m bench.attack_workers ROLE UID JSON

A worker loads, drops to ``UID`` for good (``drop_to``: the interpreter may live where
other uids cannot reach it, so ``Popen(user=...)`` cannot start it), connects to the
daemon, and says on stdout, one JSON line each, what state it reached: ``armed`` once
set up, ``done`` with its figures, ``round`` (the memory attack, asking whether to add
more output), or ``error``. It takes ``go``, ``stop``, ``more`` and ``enough`` on stdin.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bench.common import HEADER, encode_frames
from bench.wire import PAGE, Wire, WireError

IOVA_BASE = 0x10_0000_0000
#: Empty ranges for attack (a): far above every mapping.
HOLE_BASE = 0x7000_0000_0000
#: One attacker write: the daemon's read size, every request in it runs in one read.
WRITE_BYTES = 256 * 1024
#: One write of each flooding connection of (d): a few hundred requests, so that
#: what dozens of connections queue stays within the attack's time.
FLOOD_WRITE_BYTES = 16 * 1024
#: ``max_map_length`` / 4 KiB: the most one ``ioas_map`` may cover.
MAP_CHUNK_PAGES = 16384
#: The memory attack adds this share of the uid's output budget per round.
OUTPUT_STEP = 0.03
GARBAGE_FRAME = b"\x00\x00\x00\x01\xc1"  # 0xc1: never valid msgpack
RW = 3


def describe(exc: BaseException) -> str:
    """An exception as one line, the leaves of an exception group spelled out."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def emit(**msg: Any) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


class Orders:
    """Words from the orchestrator on stdin: ``go``, ``stop``, and ``more``/``enough``
    (the memory attack's feedback), queued in ``words``."""

    def __init__(self) -> None:
        self.go = trio.Event()
        self.stop = trio.Event()
        self.words_in, self.words = trio.open_memory_channel[str](16)

    async def read(self) -> None:
        stream = trio.lowlevel.FdStream(os.dup(0))
        buf = b""
        async with stream:
            while data := await stream.receive_some(4096):
                buf += data
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    word = raw.strip().decode()
                    if word == "go":
                        self.go.set()
                    elif word == "stop":
                        self.stop.set()
                    else:
                        await self.words_in.send(word)
        self.go.set()
        self.stop.set()  # the orchestrator is gone
        await self.words_in.aclose()


class FrameCounter:
    """Counts reply frames on a stream without decoding them (the attacker stays cheap)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.got = 0
        self._buf = b""
        self.changed = trio.Event()

    async def run(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await self.stream.receive_some(1 << 16):
                buf = self._buf + data
                pos, end = 0, len(buf)
                while end - pos >= 4:
                    (length,) = HEADER.unpack_from(buf, pos)
                    if pos + 4 + length > end:
                        break
                    pos += 4 + length
                    self.got += 1
                self._buf = buf[pos:]
                self.changed.set()
                self.changed = trio.Event()
        self.changed.set()

    async def wait_for(self, n: int) -> None:
        while self.got < n:
            await self.changed.wait()


async def flood_stream(stream: trio.SocketStream, buf: bytes, n: int, until: float) -> int:
    """Write ``buf`` (``n`` requests) again and again until ``until``, one write ahead of
    the replies; returns the requests answered."""
    counter = FrameCounter(stream)
    sent = 0
    async with trio.open_nursery() as nursery:
        nursery.start_soon(counter.run)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while time.monotonic() < until:
                await counter.wait_for(sent - n)
                await stream.send_all(buf)
                sent += n
            with trio.move_on_after(30):
                await counter.wait_for(sent)
        nursery.cancel_scope.cancel()
    return counter.got


def unmap_frames(ioas_id: int, nbytes: int) -> tuple[bytes, int]:
    """``ioas_unmap`` of one empty page each, ``nbytes`` of them."""
    one = len(
        encode_frames(
            [
                {
                    "op": "ioas_unmap",
                    "id": 1 << 30,
                    "ioas_id": ioas_id,
                    "iova": HOLE_BASE,
                    "length": PAGE,
                }
            ]
        )
    )
    n = nbytes // one
    msgs = [
        {
            "op": "ioas_unmap",
            "id": 1 + i,
            "ioas_id": ioas_id,
            "iova": HOLE_BASE + i * PAGE,
            "length": PAGE,
        }
        for i in range(n)
    ]
    return encode_frames(msgs), n


async def map_pages(wire: Wire, ioas_id: int, pages: int) -> tuple[int, list[float]]:
    """Map up to ``pages`` pages in ``max_map_length`` calls; stop at ENOSPC."""
    mapped, lat = 0, []
    while mapped < pages:
        n = min(MAP_CHUNK_PAGES, pages - mapped)
        t0 = time.perf_counter()
        try:
            await wire.call(
                "ioas_map",
                ioas_id=ioas_id,
                iova=IOVA_BASE + mapped * PAGE,
                length=n * PAGE,
                perm=RW,
            )
        except WireError as exc:
            if exc.code != "ENOSPC":
                raise
            break
        lat.append(round((time.perf_counter() - t0) * 1000, 1))
        mapped += n
    return mapped, lat


async def w_unmap_flood(args: dict[str, Any], orders: Orders) -> None:
    wire = await Wire.open(args["socket"], "attack-unmap")
    ioas = (await wire.call("ioas_alloc"))["ioas_id"]
    mapped, lat = await map_pages(wire, ioas, args["pages"])
    buf, n = unmap_frames(ioas, WRITE_BYTES)
    emit(state="armed", mapped=mapped, map_ms=lat)
    await orders.go.wait()
    t0 = time.monotonic()
    done = await flood_stream(wire.stream, buf, n, t0 + args["seconds"])
    emit(state="done", requests=done, elapsed=time.monotonic() - t0)
    await wire.aclose()


async def attach_pasids(wire: Wire, rid: str, pasids: int) -> tuple[int, int, float]:
    dev = (await wire.call("bind", rid=rid))["dev_id"]
    ioas = (await wire.call("ioas_alloc"))["ioas_id"]
    hwpt = (await wire.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=["pasid"]))["hwpt_id"]
    t0 = time.perf_counter()
    msgs = [wire.request("attach", dev_id=dev, pt_id=hwpt, pasid=p) for p in range(1, pasids + 1)]
    done = await wire.pipeline(msgs, window=1024)
    return dev, done, round(time.perf_counter() - t0, 2)


async def w_teardown(args: dict[str, Any], orders: Orders) -> None:
    wire = await Wire.open(args["socket"], "attack-teardown")
    _, n, dt = await attach_pasids(wire, args["rid"], args["pasids"])
    emit(state="armed", attached=n, attach_s=dt)
    await orders.go.wait()
    await wire.aclose()  # the daemon tears all of it down
    emit(state="done")


async def w_unbind(args: dict[str, Any], orders: Orders) -> None:
    wire = await Wire.open(args["socket"], "attack-unbind")
    dev, n, dt = await attach_pasids(wire, args["rid"], args["pasids"])
    emit(state="armed", attached=n, attach_s=dt)
    await orders.go.wait()
    t0 = time.perf_counter()
    await wire.call("unbind", dev_id=dev)
    emit(state="done", unbind_ms=round((time.perf_counter() - t0) * 1000, 1))
    await wire.aclose()


async def open_until_refused(path: str, name: str, most: int) -> tuple[list[Wire], int]:
    """Connections with ``hello`` done, until ``most`` or refused (ENOSPC, closed)."""
    wires: list[Wire] = []
    refused = 0
    for _ in range(most):
        try:
            wires.append(await Wire.open(path, name))
        except (EOFError, RuntimeError, WireError, OSError, trio.BrokenResourceError):
            refused += 1
            if refused >= 4:
                break
    return wires, refused


async def w_flood(args: dict[str, Any], orders: Orders) -> None:
    """Cheap requests over every connection but two; one binds and unbinds (two log
    lines a pair); one slot churns through protocol violations (three log lines)."""
    path = args["socket"]
    wires, _ = await open_until_refused(path, "attack-flood", 256)
    await wires.pop().aclose()  # the churn's slot
    binder = wires.pop()
    cheap = [
        {"op": "ioas_unmap", "id": 1 + i, "ioas_id": 0x7FFF_FFF0, "iova": 0, "length": PAGE}
        if i % 2
        else {"op": "destroy", "id": 1 + i, "obj_id": 0x7FFF_FFF0}
        for i in range(FLOOD_WRITE_BYTES // 40)
    ]
    buf = encode_frames(cheap)
    emit(state="armed", connections=len(wires) + 2)
    await orders.go.wait()
    t0 = time.monotonic()
    until = t0 + args["seconds"]
    counts = {"requests": 0, "churned": 0, "pairs": 0}

    async def flood(w: Wire) -> None:
        answered = await flood_stream(w.stream, buf, len(cheap), until)
        counts["requests"] += answered

    async def churn() -> None:
        while time.monotonic() < until:
            with contextlib.suppress(OSError, trio.BrokenResourceError):
                stream = await trio.open_unix_socket(path)
                async with stream:
                    await stream.send_all(GARBAGE_FRAME)
                    while await stream.receive_some(4096):
                        pass
                counts["churned"] += 1

    async def bind_unbind() -> None:
        while time.monotonic() < until:
            dev = (await binder.call("bind", rid=args["rid"]))["dev_id"]
            await binder.call("unbind", dev_id=dev)
            counts["pairs"] += 1

    async with trio.open_nursery() as nursery:
        for w in wires:
            nursery.start_soon(flood, w)
        nursery.start_soon(churn)
        nursery.start_soon(bind_unbind)
    emit(state="done", elapsed=time.monotonic() - t0, **counts)
    for w in [*wires, binder]:
        with contextlib.suppress(Exception):
            await w.aclose()


async def w_slots(args: dict[str, Any], orders: Orders) -> None:
    wires, refused = await open_until_refused(args["socket"], "attack-slots", 1100)
    emit(state="armed", held=len(wires), refused=refused)
    await orders.go.wait()
    for w in wires:
        await w.aclose()
    emit(state="done")


async def w_churn_pasids(args: dict[str, Any], orders: Orders) -> None:
    """Chaos: attach many PASIDs, then drop them by disconnect or by unbind, in turn."""
    emit(state="armed")
    await orders.go.wait()
    t0 = time.monotonic()
    rounds = 0
    busy = 0
    while time.monotonic() - t0 < args["seconds"]:
        wire = await Wire.open(args["socket"], "attack-churn")
        # A disconnect's teardown runs after the close, in slices: until it is done,
        # the device is still bound by the closed connection and bind is EBUSY.
        while True:
            try:
                dev, _, _ = await attach_pasids(wire, args["rid"], args["pasids"])
                break
            except WireError as exc:
                if exc.code != "EBUSY" or time.monotonic() - t0 > args["seconds"] + 30:
                    raise
                busy += 1
                await trio.sleep(0.01)
        if rounds % 2:
            await wire.call("unbind", dev_id=dev)
        await wire.aclose()
        rounds += 1
    emit(state="done", rounds=rounds, busy_binds=busy)


async def w_memory(args: dict[str, Any], orders: Orders) -> None:
    """Every budget of one uid: mapped pages, objects, connections, unread output."""
    path = args["socket"]
    wire = await Wire.open(path, "attack-memory")
    ioas = (await wire.call("ioas_alloc"))["ioas_id"]
    pages, _ = await map_pages(wire, ioas, args["pages"])
    dev = (await wire.call("bind", rid=args["rid"]))["dev_id"]
    objects = 2
    while objects < args["objects"]:
        n = min(512, args["objects"] - objects)
        msgs = [wire.request("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=[]) for _ in range(n)]
        await wire.send(msgs)
        got = ok = 0
        while got < n:
            for m in await wire.recv():
                if "event" not in m:
                    got += 1
                    ok += bool(m.get("ok"))
        objects += ok
        if ok < n:
            break
    reply = await wire.call("devices")
    reply_bytes = len(encode_frames([{"id": 1, "ok": True, "result": reply}]))
    others, _ = await open_until_refused(path, "attack-memory-out", args["connections"] - 1)
    # Every connection asks for a little more and never reads, round after round, until
    # the orchestrator (an admin, who sees budget_max_outbytes_uid) says enough: the
    # socket buffers take the first replies, the daemon keeps the rest.
    step = max(1, int(OUTPUT_STEP * args["outbuf_uid"]) // (max(1, len(others)) * reply_bytes))
    unread = 0
    while True:
        for w in others:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await w.send([w.request("devices") for _ in range(step)])
                unread += step
        emit(state="round", unread_requests=unread)
        if await orders.words.receive() != "more":
            break
    emit(
        state="armed",
        pages=pages,
        objects=objects,
        connections=len(others) + 1,
        unread_requests=unread,
    )
    await orders.go.wait()
    for w in [wire, *others]:
        with contextlib.suppress(Exception):
            await w.aclose()
    emit(state="done")


async def w_stuck(args: dict[str, Any], orders: Orders) -> None:
    """A tenant that takes its fault events and never answers them."""
    wire = await Wire.open(args["socket"], "stuck-tenant")
    ioas = (await wire.call("ioas_alloc"))["ioas_id"]
    fault = (await wire.call("fault_alloc"))["fault_id"]
    dev = (await wire.call("bind", rid=args["rid"]))["dev_id"]
    hwpt = await wire.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=[], fault_id=fault)
    await wire.call("attach", dev_id=dev, pt_id=hwpt["hwpt_id"])
    emit(state="armed")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wire.drain_forever)
        await orders.stop.wait()
        nursery.cancel_scope.cancel()
    emit(state="done")


async def w_honest(args: dict[str, Any], orders: Orders) -> None:
    """The honest tenant: map and unmap one page, each call timed, until ``stop``."""
    wire = await Wire.open(args["socket"], "honest-tenant")
    ioas = (await wire.call("ioas_alloc"))["ioas_id"]
    samples: list[tuple[float, float]] = []
    emit(state="armed")
    while not orders.stop.is_set():
        for op, kw in (("ioas_map", {"perm": RW}), ("ioas_unmap", {})):
            t0 = time.monotonic()
            await wire.call(op, ioas_id=ioas, iova=IOVA_BASE, length=PAGE, **kw)
            samples.append((round(t0, 6), round((time.monotonic() - t0) * 1e6, 1)))
            await trio.sleep(0.002)
    await wire.aclose()
    emit(state="done", samples=samples)


async def w_vmm(args: dict[str, Any], orders: Orders) -> None:
    """The honest VMM: a DMA to a mapped page, then a fault round trip (dma to an
    unmapped page, fault event, ioas_map + page_response, dma reply), in turn."""
    wire = await Wire.open(args["socket"], "honest-vmm")
    ioas = (await wire.call("ioas_alloc"))["ioas_id"]
    fault = (await wire.call("fault_alloc"))["fault_id"]
    dev = (await wire.call("bind", rid=args["rid"]))["dev_id"]
    hwpt = (await wire.call("hwpt_alloc", dev_id=dev, pt_id=ioas, flags=[], fault_id=fault))[
        "hwpt_id"
    ]
    await wire.call("attach", dev_id=dev, pt_id=hwpt)
    await wire.call("ioas_map", ioas_id=ioas, iova=IOVA_BASE, length=PAGE, perm=RW)
    samples: list[tuple[str, float, float]] = []
    next_iova = IOVA_BASE + PAGE
    emit(state="armed")
    while not orders.stop.is_set():
        t0 = time.monotonic()
        r = await wire.call("dma", dev_id=dev, iova=IOVA_BASE, length=PAGE, perm=2)
        if r["status"] != "ok":
            raise RuntimeError(f"dma to a mapped page: {r}")
        samples.append(("dma", round(t0, 6), round((time.monotonic() - t0) * 1e6, 1)))
        await trio.sleep(0.002)
        t0 = time.monotonic()
        await fault_round_trip(wire, ioas, fault, dev, next_iova)
        samples.append(("fault", round(t0, 6), round((time.monotonic() - t0) * 1e6, 1)))
        next_iova += PAGE
        await trio.sleep(0.002)
    await wire.aclose()
    emit(state="done", samples=samples)


async def fault_round_trip(wire: Wire, ioas: int, fault: int, dev: int, iova: int) -> None:
    dma = wire.request("dma", dev_id=dev, iova=iova, length=PAGE, perm=2)
    await wire.send([dma])
    event = None
    while event is None:
        for m in await wire.recv():
            if m.get("event") == "fault":
                event = m
            elif "event" not in m:
                raise RuntimeError(f"dma completed without a fault: {m}")
    mapping = wire.request("ioas_map", ioas_id=ioas, iova=iova, length=PAGE, perm=RW)
    answer = wire.request(
        "page_response", fault_id=fault, responses=[{"cookie": event["cookie"], "code": 0}]
    )
    await wire.send([mapping, answer])
    waiting = {mapping["id"], answer["id"], dma["id"]}
    while waiting:
        for m in await wire.recv():
            if "event" in m:
                continue
            if not m.get("ok") or (m["id"] == dma["id"] and m["result"]["status"] != "ok"):
                raise RuntimeError(f"fault round trip failed: {m}")
            waiting.discard(m["id"])


WORKERS: dict[str, Callable[[dict[str, Any], Orders], Awaitable[None]]] = {
    "unmap_flood": w_unmap_flood,
    "teardown": w_teardown,
    "unbind": w_unbind,
    "flood": w_flood,
    "slots": w_slots,
    "churn_pasids": w_churn_pasids,
    "memory": w_memory,
    "honest": w_honest,
    "stuck": w_stuck,
    "vmm": w_vmm,
}


async def _worker_main(role: str, args: dict[str, Any]) -> None:
    orders = Orders()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(orders.read)
        await WORKERS[role](args, orders)
        nursery.cancel_scope.cancel()


def drop_to(uid: int) -> None:
    """Become ``uid`` (and its gid, no supplementary groups) for good. Done by the
    worker itself once its modules are loaded, not by ``Popen(user=...)``: the
    interpreter may live where other uids cannot reach it (``/root/.pyenv``)."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def worker_main(role: str, uid: int, raw: str) -> int:
    try:
        drop_to(uid)
        trio.run(_worker_main, role, json.loads(raw))
    except BaseException as exc:  # reported to the orchestrator, which decides
        emit(error=describe(exc))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return worker_main(args[0], int(args[1]), args[2])


if __name__ == "__main__":
    sys.exit(main())
