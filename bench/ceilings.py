"""The physical limit of iopfd's transport on this machine, measured in the same run.

A raw echo server speaks the daemon's framing (docs/protocol.md: 4-byte big-endian
length, one msgpack map) with no daemon logic behind it: it splits frames, unpacks
each, and packs a small reply carrying the request's `id`. Server and client are
separate Python processes, as iopfd and a VMM are:

- one request in flight, trio server and trio client (the yardstick of the serial
  fault round trip, which needs two such round trips);
- one request in flight, blocking server and blocking client (what the machine gives
  without any event loop);
- 256 requests in flight, trio server writing all the replies of one read with one
  `send_all` (the yardstick of fault throughput).

Run as `python -m bench.ceilings serve {trio|blocking} PATH` it is the server.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import tempfile
import time
from typing import Any

import trio

from bench.common import (
    Entry,
    FrameReader,
    encode_frame,
    encode_frames,
    latency_summary_us,
    median,
    proc_cpu_s,
    python_cmd,
    running,
)

PIPELINE_WINDOW = 256
RECV_SIZE = 1 << 16


def request(i: int) -> dict[str, Any]:
    """A request shaped like the protocol's `dma`: the size of a real small request."""
    return {
        "op": "dma",
        "id": i,
        "dev_id": 1,
        "pasid": 1,
        "iova": 0x1000_0000 + ((i & 0xFFFF) << 12),
        "length": 4096,
        "perm": 2,
    }


def reply(msg: dict[str, Any]) -> dict[str, Any]:
    return {"id": msg["id"], "ok": True, "result": {"status": "ok", "faults": 1, "bytes": 4096}}


# --- servers (run in their own process) -------------------------------------------------


async def _trio_handler(stream: trio.SocketStream) -> None:
    reader = FrameReader()
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        async with stream:
            while True:
                data = await stream.receive_some(RECV_SIZE)
                if not data:
                    return
                msgs = reader.feed(data)
                if msgs:
                    # Coalesced: every reply of one read goes out in one send_all.
                    await stream.send_all(encode_frames([reply(m) for m in msgs]))


async def _trio_serve(path: str) -> None:
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(64)
    await trio.serve_listeners(_trio_handler, [trio.SocketListener(sock)])


def _blocking_serve(path: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as lsock:
        lsock.bind(path)
        lsock.listen(64)
        while True:
            conn, _ = lsock.accept()
            with conn:
                reader = FrameReader()
                while True:
                    try:
                        data = conn.recv(RECV_SIZE)
                    except ConnectionError:
                        break
                    if not data:
                        break
                    msgs = reader.feed(data)
                    if msgs:
                        conn.sendall(encode_frames([reply(m) for m in msgs]))


def serve(kind: str, path: str) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        if kind == "trio":
            trio.run(_trio_serve, path)
        elif kind == "blocking":
            _blocking_serve(path)
        else:
            raise SystemExit(f"unknown server kind {kind!r}")


# --- clients (run in the bench process) ---------------------------------------------------


async def trio_serial(path: str, seconds: float, warmup: int) -> tuple[int, float, list[int]]:
    stream = await trio.open_unix_socket(path)
    reader = FrameReader()
    perf = time.perf_counter_ns
    samples: list[int] = []
    async with stream:
        i = 0
        deadline = None
        start = 0
        while True:
            if i == warmup:
                start = perf()
                deadline = start + int(seconds * 1e9)
            t0 = perf()
            await stream.send_all(encode_frame(request(i)))
            msgs: list[Any] = []
            while not msgs:
                msgs = reader.feed(await stream.receive_some(RECV_SIZE))
            t1 = perf()
            if msgs[0]["id"] != i:
                raise RuntimeError("ceiling server answered out of order")
            i += 1
            if deadline is not None:
                samples.append(t1 - t0)
                if t1 >= deadline:
                    return len(samples), (t1 - start) / 1e9, samples


def _blocking_serial(path: str, seconds: float, warmup: int) -> tuple[int, float, list[int]]:
    perf = time.perf_counter_ns
    samples: list[int] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        reader = FrameReader()
        i = 0
        deadline = None
        start = 0
        while True:
            if i == warmup:
                start = perf()
                deadline = start + int(seconds * 1e9)
            t0 = perf()
            s.sendall(encode_frame(request(i)))
            msgs: list[Any] = []
            while not msgs:
                msgs = reader.feed(s.recv(RECV_SIZE))
            t1 = perf()
            i += 1
            if deadline is not None:
                samples.append(t1 - t0)
                if t1 >= deadline:
                    return len(samples), (t1 - start) / 1e9, samples


async def trio_pipelined(path: str, seconds: float, window: int) -> tuple[int, float, list[int]]:
    """Sliding window: every reply read is replaced by a new request in one coalesced write.

    Latency is sampled on one request in 64, enough for percentiles at negligible cost.
    """
    stream = await trio.open_unix_socket(path)
    reader = FrameReader()
    perf = time.perf_counter_ns
    sent_at: dict[int, int] = {}
    samples: list[int] = []
    async with stream:
        next_id = 0

        def batch(k: int) -> bytes:
            nonlocal next_id
            reqs = []
            for _ in range(k):
                if next_id & 63 == 0:
                    sent_at[next_id] = perf()
                reqs.append(request(next_id))
                next_id += 1
            return encode_frames(reqs)

        await stream.send_all(batch(window))
        done = 0
        # Warm-up: one full window turned over before the clock starts.
        while done < 4 * window:
            msgs = reader.feed(await stream.receive_some(RECV_SIZE))
            done += len(msgs)
            await stream.send_all(batch(len(msgs)))
        sent_at.clear()
        start = perf()
        deadline = start + int(seconds * 1e9)
        done = 0
        while True:
            msgs = reader.feed(await stream.receive_some(RECV_SIZE))
            now = perf()
            for m in msgs:
                t = sent_at.pop(m["id"], None)
                if t is not None:
                    samples.append(now - t)
            done += len(msgs)
            if now >= deadline:
                elapsed = (now - start) / 1e9
                break
            await stream.send_all(batch(len(msgs)))
    return done, elapsed, samples


# --- the bench -------------------------------------------------------------------------------


def _measure(
    kind: str, client: str, path: str, seconds: float, reps: int, warmup: int
) -> dict[str, Any]:
    rates = []
    samples_all: list[int] = []
    cpu_per_msg = []
    with running(python_cmd("-m", "bench.ceilings", "serve", kind, path), path) as proc:
        for _ in range(reps):
            cpu0 = proc_cpu_s(proc.pid)
            if client == "trio":
                n, elapsed, samples = trio.run(trio_serial, path, seconds, warmup)
            elif client == "blocking":
                n, elapsed, samples = _blocking_serial(path, seconds, warmup)
            else:
                n, elapsed, samples = trio.run(trio_pipelined, path, seconds, PIPELINE_WINDOW)
            cpu1 = proc_cpu_s(proc.pid)
            rates.append(n / elapsed)
            samples_all += samples
            cpu_per_msg.append((cpu1 - cpu0) / n * 1e6)
    return {
        "rate": median(rates),
        "rates": [round(r) for r in rates],
        "server_cpu_us_per_msg": round(median(cpu_per_msg), 2),
        **latency_summary_us(samples_all),
    }


def measure(quick: bool) -> tuple[list[Entry], dict[str, float]]:
    """Run the three ceilings; returns the entries and {name: rate} for the ratios."""
    seconds = 0.4 if quick else 1.5
    reps = 1 if quick else 3
    warmup = 200
    with tempfile.TemporaryDirectory(prefix="iopfd-bench-") as tmp:
        trio_rt = _measure("trio", "trio", os.path.join(tmp, "t.sock"), seconds, reps, warmup)
        blk_rt = _measure(
            "blocking", "blocking", os.path.join(tmp, "b.sock"), seconds, reps, warmup
        )
        pipe = _measure("trio", "pipelined", os.path.join(tmp, "p.sock"), seconds, reps, warmup)

    def entry(name: str, unit: str, m: dict[str, Any], note: str) -> Entry:
        detail = {k: v for k, v in m.items() if k != "rate"}
        detail["note"] = note
        return Entry(name=name, figure=round(m["rate"]), unit=unit, detail=detail)

    entries = [
        entry(
            "ceiling.trio_round_trip",
            "round trips/s",
            trio_rt,
            "trio server, trio client, one in flight",
        ),
        entry(
            "ceiling.blocking_round_trip",
            "round trips/s",
            blk_rt,
            "blocking server, blocking client, one in flight",
        ),
        entry(
            "ceiling.trio_pipelined",
            "messages/s",
            pipe,
            f"trio server (coalesced writes), trio client, {PIPELINE_WINDOW} in flight",
        ),
    ]
    rates = {
        "trio_round_trip": trio_rt["rate"],
        "blocking_round_trip": blk_rt["rate"],
        "trio_pipelined": pipe["rate"],
    }
    return entries, rates


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "serve":
        serve(args[1], args[2])
        return
    quick = "--quick" in args
    entries, _ = measure(quick)
    for e in entries:
        print(e.as_dict())


if __name__ == "__main__":
    main()
