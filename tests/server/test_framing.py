"""Hostile bytes on the wire: each gets a clear error, the connection is closed only
where docs/protocol.md says, a neighbour connection never notices, the daemon lives."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from iopfd_harness import DaemonProc
from iopfd_rawclient import RawClient, frame


def body_frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def assert_neighbour_unaffected(neighbour: RawClient) -> None:
    result = neighbour.call("devices")
    assert result["devices"], "a neighbour connection must keep working"


# --- framing violations: EPROTO with id null, then the connection closes -------------

VIOLATIONS: dict[str, bytes] = {
    "zero-length": b"\0\0\0\0",
    "oversize-length": struct.pack(">I", (1 << 20) + 1),
    "huge-length": b"\xff\xff\xff\xff",
    "not-a-map-array": body_frame(msgpack.packb([1, 2, 3])),
    "not-a-map-int": body_frame(msgpack.packb(42)),
    "not-msgpack": body_frame(b"\xc1\xc1\xc1\xc1"),
    "non-string-keys": body_frame(msgpack.packb({1: "hello"})),
    "trailing-bytes": body_frame(msgpack.packb({"op": "devices", "id": 1}) + b"\x00"),
    "truncated-map": body_frame(msgpack.packb({"op": "devices", "id": 1})[:-3]),
    "deep-nesting": body_frame(b"\x82\xa2op\xa7devices\xa2id" + b"\x91" * 100_000 + b"\x01"),
}


@pytest.mark.parametrize("data", VIOLATIONS.values(), ids=VIOLATIONS.keys())
def test_framing_violation_is_eproto_with_null_id_then_close(
    iopfd: DaemonProc, data: bytes
) -> None:
    with iopfd.client(client="neighbour") as neighbour, iopfd.client() as c:
        c.send_raw(data)
        frames = c.expect_closed()
        assert frames == [
            {
                "id": None,
                "ok": False,
                "error": {"code": "EPROTO", "message": frames[0]["error"]["message"]},
            }
        ]
        assert frames[0]["error"]["message"]
        assert_neighbour_unaffected(neighbour)


def test_requests_before_a_bad_frame_in_the_same_write_are_answered(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        c.send_raw(frame({"op": "devices", "id": 5}) + b"\0\0\0\0")
        frames = c.expect_closed()
        assert [f["id"] for f in frames] == [5, None]
        assert frames[0]["ok"] and frames[1]["error"]["code"] == "EPROTO"


def test_half_frame_then_disconnect_leaves_the_daemon_serving(iopfd: DaemonProc) -> None:
    with iopfd.client(client="neighbour") as neighbour:
        for cut in (2, 4, 9):
            c = iopfd.client()
            c.send_raw(frame({"op": "devices", "id": 2, "pad": "x" * 20})[:cut])
            c.sock.shutdown(socket.SHUT_WR)
            frames = c.expect_closed()
            assert [f["error"]["code"] for f in frames] == ["EPROTO"]
            c.close()
        assert_neighbour_unaffected(neighbour)


def test_half_frame_then_hard_close_leaves_the_daemon_serving(iopfd: DaemonProc) -> None:
    with iopfd.client(client="neighbour") as neighbour:
        c = iopfd.client()
        c.send_raw(frame({"op": "devices", "id": 2})[:7])
        c.close()
        assert_neighbour_unaffected(neighbour)


def test_a_frame_split_across_many_writes_is_one_request(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        data = frame({"op": "devices", "id": 77})
        for i in range(len(data)):
            c.send_raw(data[i : i + 1])
        assert c.wait_reply(77)["ok"]


# --- request-level violations ------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id",
    [None, -1, 2**32, "7", 1.5, True, [1]],
    ids=["missing", "negative", "2^32", "string", "float", "bool", "list"],
)
def test_bad_request_id_is_eproto_with_null_id_then_close(iopfd: DaemonProc, bad_id: Any) -> None:
    with iopfd.client() as c:
        msg: dict[str, Any] = {"op": "devices"}
        if bad_id is not None:
            msg["id"] = bad_id
        c.send(msg)
        frames = c.expect_closed()
        assert len(frames) == 1
        assert frames[0]["id"] is None and frames[0]["error"]["code"] == "EPROTO"


@pytest.mark.parametrize("bad_op", [None, 5, ["devices"]], ids=["missing", "int", "list"])
def test_missing_or_non_string_op_is_eproto_then_close(iopfd: DaemonProc, bad_op: Any) -> None:
    with iopfd.client() as c:
        msg: dict[str, Any] = {"id": 3}
        if bad_op is not None:
            msg["op"] = bad_op
        c.send(msg)
        frames = c.expect_closed()
        assert [(f["id"], f["error"]["code"]) for f in frames] == [(3, "EPROTO")]


def test_unknown_op_is_einval_and_the_connection_stays_open(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        reply = c.request("frobnicate")
        assert reply["error"] == {"code": "EINVAL", "message": "unknown op"}
        assert c.call("devices")["devices"]


CASES: list[tuple[str, dict[str, Any]]] = [
    ("unknown-key", {"op": "devices", "colour": "blue"}),
    ("wrong-type-str", {"op": "bind", "rid": 3}),
    ("wrong-type-bool", {"op": "unbind", "dev_id": True}),
    ("wrong-type-float", {"op": "unbind", "dev_id": 1.0}),
    ("negative", {"op": "unbind", "dev_id": -1}),
    ("beyond-u32", {"op": "unbind", "dev_id": 2**32}),
    ("beyond-u64", {"op": "ioas_map", "ioas_id": 1, "iova": 2**64 - 1, "length": 4096, "perm": 1}),
    ("most-negative", {"op": "ioas_unmap", "ioas_id": 1, "iova": -(2**63), "length": 4096}),
    ("missing-key", {"op": "ioas_map", "ioas_id": 1, "iova": 0, "length": 4096}),
    ("unaligned", {"op": "ioas_map", "ioas_id": 1, "iova": 1, "length": 4096, "perm": 1}),
    ("zero-length", {"op": "dma", "dev_id": 1, "iova": 0, "length": 0, "perm": 1}),
    ("pasid-zero", {"op": "attach", "dev_id": 1, "pt_id": 2, "pasid": 0}),
    ("bad-perm", {"op": "dma", "dev_id": 1, "iova": 0, "length": 4096, "perm": 99}),
    (
        "nested-garbage",
        {"op": "page_response", "fault_id": 1, "responses": [{"cookie": {"a": [1]}, "code": 0}]},
    ),
    ("binary-string", {"op": "bind", "rid": b"0000:3a:00.0"}),
    ("thousands-of-keys", {"op": "devices", **{f"k{i}": i for i in range(20_000)}}),
    ("ext-type", {"op": "unbind", "dev_id": msgpack.ExtType(5, b"xx")}),
]


@pytest.mark.parametrize(("name", "msg"), CASES, ids=[c[0] for c in CASES])
def test_bad_arguments_are_einval_and_the_connection_stays_open(
    iopfd: DaemonProc, name: str, msg: dict[str, Any]
) -> None:
    with iopfd.client(client="neighbour") as neighbour, iopfd.client() as c:
        rid = c.new_id()
        c.send({**msg, "id": rid})
        reply = c.wait_reply(rid)
        assert reply["ok"] is False
        assert reply["error"]["code"] == "EINVAL", reply
        assert 0 < len(reply["error"]["message"]) <= 1100
        assert c.call("devices")["devices"]
        assert_neighbour_unaffected(neighbour)


def test_a_request_near_max_frame_is_served(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        pad = "x" * ((1 << 20) - 200)
        reply = c.request("bind", rid=pad)
        assert reply["error"]["code"] == "EINVAL"


def test_a_flood_of_bad_requests_never_kills_the_daemon(iopfd: DaemonProc) -> None:
    makers: list[Callable[[int], dict[str, Any]]] = [
        lambda i: {"op": "dma", "id": i, "dev_id": i, "iova": -i, "length": i, "perm": i},
        lambda i: {"op": "page_response", "id": i, "fault_id": i, "responses": [i]},
        lambda i: {"op": "hwpt_alloc", "id": i, "dev_id": i, "pt_id": i, "data": {"x": i}},
        lambda i: {"op": "subscribe", "id": i, "topics": ["nope"]},
    ]
    with iopfd.client() as c:
        c.send_raw(b"".join(frame(makers[i % len(makers)](i)) for i in range(1, 401)))
        replies = [c.wait_reply(i) for i in range(1, 401)]
        assert all(not r["ok"] for r in replies)
        assert {r["error"]["code"] for r in replies} <= {"EINVAL", "EPERM", "ENOENT"}
