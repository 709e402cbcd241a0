"""Raw protocol plumbing for the daemon benches: a daemon launcher and a frame-level client.

The benches talk to iopfd with raw frames rather than through `clients/`, so that the
client side costs what the ceiling's client costs (encode_frames, one receive_some,
FrameReader) and every microsecond left over is the daemon's.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bench.common import REPO, FrameReader, encode_frames, proc_rss_kib
from clients.launch import launch

RECV_SIZE = 1 << 16
PAGE = 4096
PROTOCOL_VERSION = 2
READ, WRITE = 1, 2


class WireError(Exception):
    def __init__(self, op: str, error: Mapping[str, Any]) -> None:
        super().__init__(f"{op}: {error.get('code')}: {error.get('message')}")
        self.code = error.get("code")


class Wire:
    """One protocol connection at the frame level: requests out, replies and events in."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = FrameReader()
        self.next_id = 1
        self.events: list[dict[str, Any]] = []  # events read while waiting for a reply

    @classmethod
    async def open(cls, path: str, name: str) -> Wire:
        wire = cls(await trio.open_unix_socket(path))
        await wire.call("hello", version=PROTOCOL_VERSION, client=name)
        return wire

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        msg = {"op": op, "id": self.next_id, **args}
        self.next_id = (self.next_id + 1) & 0xFFFF_FFFF or 1
        return msg

    async def send(self, msgs: Sequence[Mapping[str, Any]]) -> None:
        await self.stream.send_all(encode_frames(msgs))

    async def recv(self) -> list[dict[str, Any]]:
        data = await self.stream.receive_some(RECV_SIZE)
        if not data:
            raise EOFError("iopfd closed the connection")
        return self.reader.feed(data)

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        msg = self.request(op, **args)
        await self.send([msg])
        while True:
            for m in await self.recv():
                if m.get("id") == msg["id"]:
                    if not m.get("ok"):
                        raise WireError(op, m.get("error") or {})
                    return m.get("result") or {}
                if "event" in m:
                    self.events.append(m)
                else:
                    raise RuntimeError(f"unexpected frame while waiting for {op}: {m}")

    async def pipeline(self, msgs: Sequence[dict[str, Any]], window: int = 512) -> int:
        """Send `msgs` with at most `window` unanswered; every reply must be ok."""
        it = iter(msgs)
        outstanding = 0
        done = 0
        batch = [m for _, m in zip(range(window), it, strict=False)]
        await self.send(batch)
        outstanding = len(batch)
        while outstanding:
            got = 0
            for m in await self.recv():
                if "event" in m:
                    continue
                if not m.get("ok"):
                    raise WireError("pipelined request", m.get("error") or {})
                got += 1
            outstanding -= got
            done += got
            more = [m for _, m in zip(range(got), it, strict=False)]
            if more:
                await self.send(more)
                outstanding += len(more)
        return done

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def drain_forever(self) -> None:
        """Read and drop everything: a client that takes its events but never answers."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await self.stream.receive_some(RECV_SIZE):
                pass


# --- topologies and configs ---------------------------------------------------------------


@dataclass(frozen=True)
class Fn:
    rid: str
    iommu: str
    ats: bool = True
    pri: bool = True
    pasid_bits: int = 20
    pri_capacity: int = 64


def generated_functions(n: int, n_iommus: int = 2) -> list[Fn]:
    """The functions of `hwmodel.generated_topology(n, n_iommus)`, as TOML rows."""
    return [
        Fn(f"0000:{i >> 8:02x}:{(i >> 3) & 0x1F:02x}.{i & 7:x}", f"dmar{(i >> 8) % n_iommus}")
        for i in range(n)
    ]


def topology_toml(functions: Sequence[Fn], iommus: Sequence[str] | None = None) -> str:
    """The topology file (docs/hwmodel.md format); the root array must precede the tables."""
    names = iommus or sorted({f.iommu for f in functions})
    rows = [
        f'  {{rid = "{f.rid}", iommu = "{f.iommu}", ats = {str(f.ats).lower()}, '
        f"pri = {str(f.pri).lower()}, pri_capacity = {f.pri_capacity if f.pri else 0}, "
        f"pasid_bits = {f.pasid_bits}}},"
        for f in functions
    ]
    return "\n".join(["function = [", *rows, "]", *(f'[[iommu]]\nname = "{u}"' for u in names)])


@dataclass
class Daemon:
    proc: Any
    socket: str
    dir: Path
    log: Path
    started_ns: int
    ready_ns: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def rss_kib(self) -> dict[str, int]:
        return proc_rss_kib(self.pid)

    def cpu_ns(self) -> int:
        """CPU time of every thread of the daemon, from schedstat (ns resolution)."""
        total = 0
        for task in os.listdir(f"/proc/{self.pid}/task"):
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{self.pid}/task/{task}/schedstat").read_text().split()[0])
        return total


def _config_text(limits: Mapping[str, int], log_level: str) -> str:
    lines = [f'log_level = "{log_level}"', 'topology_file = "topology.toml"', "", "[limits]"]
    lines += [f"{k} = {v}" for k, v in limits.items()]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def daemon(
    functions: Sequence[Fn],
    *,
    limits: Mapping[str, int] | None = None,
    iommus: Sequence[str] | None = None,
    log_level: str = "info",
    ready_timeout: float = 120.0,
) -> Iterator[Daemon]:
    """Start `iopfd` on a generated topology with `clients.launch` (ready on READY=1)."""
    with tempfile.TemporaryDirectory(prefix="iopfd-bench-") as tmp:
        d = Path(tmp)
        (d / "topology.toml").write_text(topology_toml(functions, iommus))
        (d / "iopfd.toml").write_text(_config_text(limits or {}, log_level))
        log_path = d / "iopfd.log"
        t0 = time.perf_counter_ns()
        launched = launch(
            socket=d / "iopfd.sock",
            config=d / "iopfd.toml",
            args=("--log-format", "json"),
            env={"PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))},
            log=log_path,
            ready_timeout=ready_timeout,
        )
        handle = Daemon(launched.process, launched.socket, d, log_path, t0, time.perf_counter_ns())
        try:
            yield handle
        finally:
            launched.stop(10.0)
