"""A raw-frame client for the integration tests: blocking socket, no cleverness.

It speaks the wire protocol byte for byte (4-byte big-endian length, msgpack map) so
that the tests pin the daemon's behaviour on the wire, not a client library's.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import msgpack

TIMEOUT_S = 10.0
PROTOCOL_VERSION = 2


class RemoteError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Closed(Exception):
    """The daemon closed the connection."""


def frame(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


class RawClient:
    def __init__(self, path: str, *, hello: bool = True, client: str = "test") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._open(path, hello=hello, client=client)
        except BaseException:
            self.sock.close()  # a refused or failed connection leaks no socket
            raise

    def _open(self, path: str, *, hello: bool, client: str) -> None:
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(path)
        self._buf = bytearray()
        self._next_id = 1
        #: Events received while waiting for replies, in order.
        self.events: list[dict[str, Any]] = []
        #: Replies received while waiting for another id.
        self.replies: dict[int | None, dict[str, Any]] = {}
        self.hello_result: dict[str, Any] | None = None
        if hello:
            self.hello_result = self.call("hello", version=PROTOCOL_VERSION, client=client)

    # --- bytes -------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, msg: dict[str, Any]) -> None:
        self.send_raw(frame(msg))

    def recv_frame(self, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            if len(self._buf) >= 4:
                (n,) = struct.unpack(">I", self._buf[:4])
                if len(self._buf) >= 4 + n:
                    body = bytes(self._buf[4 : 4 + n])
                    del self._buf[: 4 + n]
                    msg: dict[str, Any] = msgpack.unpackb(body, raw=False)
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the daemon")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise Closed("connection closed by the daemon")
            self._buf += chunk

    def expect_closed(self, timeout: float = TIMEOUT_S) -> list[dict[str, Any]]:
        """Read until EOF; return the frames that came before it."""
        frames = []
        while True:
            try:
                frames.append(self.recv_frame(timeout))
            except Closed:
                return frames

    # --- requests ----------------------------------------------------------------

    def new_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def start(self, op: str, **args: Any) -> int:
        rid = args.pop("id", None)
        if rid is None:
            rid = self.new_id()
        self.send({"op": op, "id": rid, **args})
        return int(rid)

    def wait_reply(self, rid: int | None, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        if rid in self.replies:
            return self.replies.pop(rid)
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if "event" in msg:
                self.events.append(msg)
            elif msg.get("id") == rid:
                return msg
            else:
                self.replies[msg.get("id")] = msg

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        return self.wait_reply(self.start(op, **args))

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        reply = self.request(op, **args)
        if not reply["ok"]:
            raise RemoteError(reply["error"]["code"], reply["error"]["message"])
        result: dict[str, Any] = reply["result"]
        return result

    def error(self, op: str, **args: Any) -> str:
        """The error code of a request that must fail."""
        reply = self.request(op, **args)
        assert not reply["ok"], f"{op} unexpectedly succeeded: {reply}"
        assert set(reply["error"]) == {"code", "message"}
        return str(reply["error"]["code"])

    def wait_event(self, kind: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        for i, ev in enumerate(self.events):
            if ev["event"] == kind:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv_frame(max(0.0, deadline - time.monotonic()))
            if msg.get("event") == kind:
                return msg
            if "event" in msg:
                self.events.append(msg)
            else:
                self.replies[msg.get("id")] = msg

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
