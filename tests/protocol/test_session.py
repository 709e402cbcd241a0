"""The session rules, in process: a ServerSession and a ClientSession talking bytes."""

from __future__ import annotations

import struct

import pytest

from iopfd.protocol.errors import RequestError
from iopfd.protocol.frames import DEFAULT_MAX_FRAME, ProtocolViolation, encode_frame
from iopfd.protocol.ops import OPS
from iopfd.protocol.session import (
    ClientSession,
    Event,
    Rejected,
    Reply,
    Request,
    ServerSession,
    parse_result,
)


def _pair(*, admin: bool = False, **kw: int) -> tuple[ServerSession, ClientSession]:
    return ServerSession(admin=admin, **kw), ClientSession()


def _hello(server: ServerSession, client: ClientSession) -> None:
    _rid, data = client.hello("t")
    (req,) = server.receive_data(data)
    assert isinstance(req, Request) and req.op == "hello"


def _one(server: ServerSession, frame: bytes) -> Request | Rejected:
    (item,) = server.receive_data(frame)
    return item


def test_the_first_request_must_be_hello_or_the_session_closes() -> None:
    server, client = _pair()
    _rid, data = client.request("devices", {})
    item = _one(server, data)
    assert isinstance(item, Rejected) and item.errno == "EPROTO" and item.close
    assert server.closed
    assert server.receive_data(client.hello("t")[1]) == []


def test_hello_version_must_be_2_and_the_session_stays_open() -> None:
    server, _client = _pair()
    item = _one(server, encode_frame({"op": "hello", "id": 1, "version": 1, "client": "x"}))
    assert isinstance(item, Rejected) and item.errno == "EPROTONOSUPPORT" and not item.close
    assert b"supported versions: [2]" in item.data
    item = _one(server, encode_frame({"op": "hello", "id": 2, "version": 2, "client": "x"}))
    assert isinstance(item, Request)
    again = _one(server, encode_frame({"op": "hello", "id": 3, "version": 2, "client": "x"}))
    assert isinstance(again, Rejected) and again.errno == "EINVAL"


def test_admin_ops_are_eperm_for_other_peers() -> None:
    for admin, expect in ((False, Rejected), (True, Request)):
        server, client = _pair(admin=admin)
        _hello(server, client)
        item = _one(server, client.request("status", {})[1])
        assert isinstance(item, expect)
        if isinstance(item, Rejected):
            assert item.errno == "EPERM" and not item.close


def test_unknown_ops_keys_and_types_are_einval_and_keep_the_session() -> None:
    server, client = _pair()
    _hello(server, client)
    for msg in (
        {"op": "nope", "id": 5},
        {"op": "bind", "id": 6, "rid": 3},
        {"op": "bind", "id": 7, "rid": "0000:3a:00.0", "typo": 1},
    ):
        item = _one(server, encode_frame(msg))
        assert isinstance(item, Rejected) and item.errno == "EINVAL" and not item.close
        assert item.id == msg["id"]
    assert not server.closed


def test_a_bad_id_or_op_is_eproto_with_a_null_id() -> None:
    server, _client = _pair()
    item = _one(server, encode_frame({"op": "hello", "id": -1}))
    assert isinstance(item, Rejected) and item.errno == "EPROTO" and item.id is None


def test_a_deferred_reply_id_in_flight_cannot_be_reused_and_is_bounded() -> None:
    server = ServerSession(admin=False, max_deferred=2)
    client = ClientSession()
    _hello(server, client)
    dma = {"op": "dma", "dev_id": 1, "iova": 0, "length": 4096, "perm": 1}
    assert isinstance(_one(server, encode_frame({**dma, "id": 10})), Request)
    again = _one(server, encode_frame({**dma, "id": 10}))
    assert isinstance(again, Rejected) and again.errno == "EINVAL"
    assert isinstance(_one(server, encode_frame({**dma, "id": 11})), Request)
    full = _one(server, encode_frame({**dma, "id": 12}))
    assert isinstance(full, Rejected) and full.errno == "ENOSPC"
    server.reply(10, {"status": "ok", "faults": 0, "bytes": 4096})
    assert isinstance(_one(server, encode_frame({**dma, "id": 10})), Request)


def test_frames_before_a_framing_violation_are_served_first() -> None:
    server, client = _pair()
    good = client.hello("t")[1]
    items = server.receive_data(good + struct.pack(">I", 0))
    assert isinstance(items[0], Request)
    assert isinstance(items[1], Rejected) and items[1].errno == "EPROTO" and items[1].close


def test_eof_inside_a_frame_is_a_violation() -> None:
    server, client = _pair()
    assert server.receive_data(client.hello("t")[1][:5]) == []
    eof = server.receive_eof()
    assert eof is not None and eof.errno == "EPROTO"


def test_a_reply_larger_than_max_frame_becomes_enospc() -> None:
    server = ServerSession(admin=True, max_frame=64 << 10)
    frame = server.reply(3, {"pending": ["x" * 100] * 1000})
    reply = ClientSession().receive_data(frame)[0]
    assert isinstance(reply, Reply) and not reply.ok and reply.code == "ENOSPC"


def test_events_are_numbered_and_the_client_sees_a_gap() -> None:
    server, client = _pair()
    frames = [server.event("fault", {"cookie": i, "seq": 99}) for i in range(3)]
    got = client.receive_data(frames[0] + frames[2])
    assert [(e.seq, e.gap) for e in got if isinstance(e, Event)] == [(1, 0), (3, 1)]
    assert got[0].body == {"cookie": 0}  # type: ignore[union-attr]


def test_the_client_refuses_bad_arguments_before_sending() -> None:
    client = ClientSession()
    with pytest.raises(RequestError) as ei:
        client.request("ioas_map", {"ioas_id": 1, "iova": 1, "length": 4096, "perm": 3})
    assert ei.value.errno == "EINVAL"
    with pytest.raises(RequestError):
        client.request("no_such_op", {})


def test_replies_round_trip_and_results_fit_their_models() -> None:
    server, client = _pair()
    rid, data = client.request("hello", {"version": 2, "client": "t"})
    (req,) = server.receive_data(data)
    assert isinstance(req, Request)
    frame = server.reply(
        rid,
        {
            "version": 2,
            "server": "iopfd/x",
            "max_frame": 1 << 20,
            "admin": False,
            "kernel": "6.18",
            "future_key": 1,
        },
    )
    (reply,) = client.receive_data(frame)
    assert isinstance(reply, Reply) and reply.ok and reply.id == rid
    result = parse_result("hello", reply.result)
    assert result.kernel == "6.18"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="hello"):
        parse_result("hello", {"version": 2})


def test_every_op_has_an_args_and_a_result_model_and_admin_ops_may_be_eperm() -> None:
    for name, spec in OPS.items():
        assert spec.name == name
        assert "EINVAL" in spec.errnos
        # option: setting rlimit_mode needs CAP_SYS_RESOURCE, i.e. an admin peer.
        assert ("EPERM" in spec.errnos) is (spec.admin or name == "option")
    assert {n for n, s in OPS.items() if s.deferred} == {"dma", "unplug"}


def _reply_frame(rid: int, result: dict[str, object] | None = None) -> bytes:
    return encode_frame({"id": rid, "ok": True, "result": result or {}})


def test_client_ids_wrap_and_skip_ids_still_in_flight_or_abandoned() -> None:
    client = ClientSession()
    client.next_id = 0xFFFF_FFFE
    first, _ = client.request("ioas_alloc", {})
    second, _ = client.request("ioas_alloc", {})
    client.abandon(second)
    assert (first, second) == (0xFFFF_FFFE, 0xFFFF_FFFF)
    client.next_id = first
    third, _ = client.request("ioas_alloc", {})
    assert third == 1  # both earlier ids are still owed a reply
    client.receive_data(_reply_frame(first) + _reply_frame(second))
    client.next_id = first
    assert client.request("ioas_alloc", {})[0] == first


def test_an_abandoned_requests_reply_is_dropped_and_counted_late() -> None:
    client = ClientSession()
    rid, _ = client.request("ioas_alloc", {})
    other, _ = client.request("ioas_alloc", {})
    client.abandon(rid)
    assert client.in_flight == 1
    got = client.receive_data(
        _reply_frame(rid, {"ioas_id": 1}) + _reply_frame(other, {"ioas_id": 2}) + _reply_frame(999)
    )
    assert [r.id for r in got if isinstance(r, Reply)] == [other, 999]
    assert (client.replies, client.late_replies, client.in_flight) == (3, 2, 0)
    assert client.requests == 2


def test_the_hello_reply_sets_the_frame_limit_of_requests_and_replies() -> None:
    client = ClientSession()
    rid, _ = client.hello("t")
    client.receive_data(
        _reply_frame(
            rid, {"version": 2, "server": "s", "admin": False, "kernel": "6.18", "max_frame": 100}
        )
    )
    assert client.max_frame == 100
    assert client.decoder.max_frame == DEFAULT_MAX_FRAME  # replies: never below the default
    with pytest.raises(RequestError, match="exceeds max_frame"):
        client.request("hwpt_alloc", {"dev_id": 1, "pt_id": 2, "data": {"pad": "x" * 100}})
    client.request("hwpt_alloc", {"dev_id": 1, "pt_id": 2})


def test_an_event_whose_seq_is_not_the_one_due_names_the_one_that_was() -> None:
    server, client = _pair()
    frames = [server.event("trace", {}) for _ in range(4)]
    got = client.receive_data(frames[0] + frames[3] + frames[1])
    assert [(e.seq, e.expected, e.gap) for e in got if isinstance(e, Event)] == [
        (1, 0, 0),
        (4, 2, 2),
        (2, 5, 0),
    ]  # a seq that went back is reported too
    assert (client.events, client.seq_gaps, client.missed_events) == (3, 2, 2)


def test_frames_before_a_bad_frame_reach_the_client_and_check_raises_after() -> None:
    client = ClientSession()
    rid, _ = client.request("ioas_alloc", {})
    got = client.receive_data(_reply_frame(rid, {"ioas_id": 3}) + struct.pack(">I", 0))
    assert [r.id for r in got if isinstance(r, Reply)] == [rid]
    with pytest.raises(ProtocolViolation):
        client.check()


def test_requests_of_one_read_are_judged_one_at_a_time_after_the_one_before_ran() -> None:
    """``iter_requests``: a deferred request the daemon refused (its ``error``) frees its
    id before the next frame of the same read is judged."""
    server, client = _pair()
    _hello(server, client)
    dma = {"op": "dma", "dev_id": 1, "iova": 0, "length": 4096, "perm": 1, "id": 5}
    items = server.iter_requests(encode_frame(dma) + encode_frame(dma))
    first = next(items)
    assert isinstance(first, Request) and server.deferred == {5: "dma"}
    server.error(5, "ENOENT", "no such device")
    second = next(items)
    assert isinstance(second, Request) and second.id == 5
    assert list(items) == []
    # Judged eagerly, the same read refuses the second: its id is still in flight.
    server, client = _pair()
    _hello(server, client)
    first, again = server.receive_data(encode_frame(dma) + encode_frame(dma))
    assert isinstance(again, Rejected) and again.errno == "EINVAL"


def test_only_ops_that_may_answer_enospc_are_bounded_by_max_deferred() -> None:
    """``dma`` may answer ENOSPC (max_dma_inflight); ``unplug`` may not (its errnos), so
    a waiting unplug neither counts against the bound nor is refused by it."""
    assert "ENOSPC" in OPS["dma"].errnos and "ENOSPC" not in OPS["unplug"].errnos
    server, client = _pair(admin=True, max_deferred=1)
    _hello(server, client)
    dma = {"op": "dma", "dev_id": 1, "iova": 0, "length": 4096, "perm": 1}
    assert isinstance(_one(server, encode_frame({**dma, "id": 1})), Request)
    for rid in (2, 3):
        unplug = _one(server, encode_frame({"op": "unplug", "id": rid, "rid": "0000:3a:00.0"}))
        assert isinstance(unplug, Request)
    again = _one(server, encode_frame({"op": "unplug", "id": 2, "rid": "0000:3a:00.0"}))
    assert isinstance(again, Rejected) and again.errno == "EINVAL"  # its id still waits
    full = _one(server, encode_frame({**dma, "id": 4}))
    assert isinstance(full, Rejected) and full.errno == "ENOSPC"
    server.reply(2, {"forced": False})
    server.error(1, "ENODEV", "removed")
    assert isinstance(_one(server, encode_frame({**dma, "id": 4})), Request)
    assert server.deferred == {3: "unplug", 4: "dma"}


def test_fds_go_to_the_ok_replies_of_fd_ops_in_arrival_order() -> None:
    """The daemon passes an fd with the first byte of a ``fault_fd`` reply frame: the
    session queues what reads bring and each ok reply of an op with ``OpSpec.fds`` takes
    its own; an error reply or another op takes none; an abandoned reply's fd is stray."""
    assert {n: s.fds for n, s in OPS.items() if s.fds} == {"fault_fd": 1}
    client = ClientSession()
    first, _ = client.request("fault_fd", {"fault_id": 1})
    refused, _ = client.request("fault_fd", {"fault_id": 1})
    other, _ = client.request("devices", {})
    second, _ = client.request("fault_fd", {"fault_id": 2})
    abandoned, _ = client.request("fault_fd", {"fault_id": 3})
    client.abandon(abandoned)
    error = encode_frame({"id": refused, "ok": False, "error": {"code": "EBUSY", "message": ""}})
    replies = client.receive_data(_reply_frame(first), [10])
    replies += client.receive_data(error + _reply_frame(other, {"devices": []}))
    replies += client.receive_data(_reply_frame(second) + _reply_frame(abandoned)[:3], [11])
    replies += client.receive_data(_reply_frame(abandoned)[3:], [12])
    assert [(r.id, r.fds) for r in replies if isinstance(r, Reply)] == [
        (first, (10,)),
        (refused, ()),
        (other, ()),
        (second, (11,)),
    ]
    assert client.take_stray_fds() == [12]
    assert client.take_stray_fds() == []
    client.receive_data(b"", [13])
    assert client.release_fds() == [13]
