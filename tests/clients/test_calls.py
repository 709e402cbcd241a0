"""Each op's client method is declared once (clients.calls) and both clients expose it."""

from __future__ import annotations

import inspect
import socket
from typing import Any

import pytest

from clients import IopfClient, ProtocolViolation
from clients.calls import CALLS, PROCEDURES, Call, Calls, op_names
from clients.errors import IopfError, NoSuchObject
from clients.records import FaultGroup, FaultRecord, Perm
from clients.sync import SyncClient
from iopfd.protocol.models import validate_args
from iopfd.protocol.ops import OPS

#: The op methods a client writes out itself, and why: the trio subscribe returns the
#: client's TraceStream, the blocking dma takes ``on_fault``. Both still build their
#: request with the Calls method.
SPELLED_OUT = {(IopfClient, "subscribe"), (SyncClient, "dma")}

#: One sample call per op, and a result that fits the op's result model.
SAMPLES: dict[str, tuple[Call[Any], dict[str, Any]]] = {
    "hello": (
        CALLS.hello("t"),
        {"version": 2, "server": "s", "max_frame": 1 << 20, "admin": False, "kernel": "6.18"},
    ),
    "devices": (
        CALLS.devices(),
        {
            "devices": [
                {
                    "rid": "0000:3a:00.0",
                    "iommu": "dmar0",
                    "pri": True,
                    "ats": True,
                    "pasid_bits": 20,
                    "pf": None,
                    "state": "free",
                }
            ]
        },
    ),
    "bind": (CALLS.bind("0000:3a:00.0"), {"dev_id": 1}),
    "unbind": (CALLS.unbind(1), {}),
    "ioas_alloc": (CALLS.ioas_alloc(), {"ioas_id": 2}),
    "ioas_map": (CALLS.ioas_map(2, 0x1000, 0x1000), {"iova": 0x1000}),
    "hw_info": (
        CALLS.hw_info(1),
        {"type": "intel_vtd", "flags": 0, "cap_reg": 6, "ecap_reg": 1 << 29},
    ),
    "ioas_unmap": (CALLS.ioas_unmap(2, 0x1000, 0x1000), {"unmapped": 4096}),
    "fault_alloc": (CALLS.fault_alloc(), {"fault_id": 3}),
    "hwpt_alloc": (CALLS.hwpt_alloc(1, 2, flags=["pasid"], fault_id=3), {"hwpt_id": 4}),
    "attach": (CALLS.attach(1, 4, pasid=1), {"hwpt_id": 4}),
    "replace": (CALLS.replace(1, 4), {"hwpt_id": 4}),
    "detach": (CALLS.detach(1, 1), {}),
    "page_response": (CALLS.page_response(3, [(1, 0)]), {"done": 1}),
    "fault_fd": (CALLS.fault_fd(3), {}),
    "dma": (
        CALLS.dma(1, 0x1000, 0x1000, Perm.READ, pasid=1),
        {"status": "ok", "faults": 0, "bytes": 4096},
    ),
    "destroy": (CALLS.destroy(4), {}),
    "device_reset": (CALLS.device_reset(1), {}),
    "hwpt_s1_map": (CALLS.hwpt_s1_map(5, 0x1000, 0x1000, 0x2000, Perm.READ), {}),
    "hwpt_s1_unmap": (CALLS.hwpt_s1_unmap(5, 0x1000, 0x1000), {"unmapped": 4096}),
    "hwpt_invalidate": (CALLS.hwpt_invalidate(5), {}),
    "ioas_iova_ranges": (
        CALLS.ioas_iova_ranges(2),
        {"ranges": [{"start": 0, "last": 0xFEDF_FFFF}], "iova_alignment": 4096},
    ),
    "ioas_allow_iovas": (CALLS.ioas_allow_iovas(2, [(0x10_0000, 0x1FF_FFFF)]), {}),
    "ioas_copy": (CALLS.ioas_copy(2, 0x1000, 6, None, 0x1000), {"iova": 0x10_0000}),
    "ioas_map_file": (CALLS.ioas_map_file(2, 0x2000, 0, 0x1000), {"iova": 0x2000}),
    "option": (CALLS.option("huge_pages", 2), {"val64": 1}),
    "status": (
        CALLS.status(),
        {"version": 2, "uptime_s": 1.0, "clients": 1, "counters": {"groups": 0}, "kernel": "6.18"},
    ),
    "topology": (CALLS.topology(), {"iommus": [], "devices": []}),
    "objects": (CALLS.objects(), {"objects": []}),
    "pending": (CALLS.pending(), {"pending": []}),
    "inject": (CALLS.inject("0000:3a:00.0", 0x1000, 1, 4), {}),
    "unplug": (CALLS.unplug("0000:3a:00.0", grace_s=2), {"forced": False}),
    "plug": (CALLS.plug("0000:3a:00.0"), {}),
    "reset": (CALLS.reset("0000:3a:00.0"), {}),
    "subscribe": (CALLS.subscribe(["fault"]), {"topics": ["fault"]}),
}


def test_calls_has_exactly_one_method_per_op_of_the_op_table() -> None:
    assert op_names() == set(OPS)
    assert set(SAMPLES) == set(OPS)


@pytest.mark.parametrize("client", [IopfClient, SyncClient])
def test_both_clients_expose_every_op_built_from_its_calls_method(client: type) -> None:
    for op in set(OPS) - {"hello"}:  # hello is sent by open/connect and SyncClient()
        method = getattr(client, op)
        if (client, op) in SPELLED_OUT:
            assert f"CALLS.{op}(" in inspect.getsource(method), (client.__name__, op)
            continue
        assert method.__wrapped__ is getattr(Calls, op), (client.__name__, op)
        assert method.__doc__ == getattr(Calls, op).__doc__
    assert not hasattr(client, "hello")


def test_both_clients_take_the_same_arguments_for_every_op() -> None:
    for op in set(OPS) - {"hello"}:
        a = inspect.signature(getattr(IopfClient, op)).parameters
        s = dict(inspect.signature(getattr(SyncClient, op)).parameters)
        if op == "dma":
            assert s.pop("on_fault").kind is inspect.Parameter.KEYWORD_ONLY
        assert list(a)[1:] == list(s)[1:], op
        assert [p.default for p in a.values()][1:] == [p.default for p in s.values()][1:]


@pytest.mark.parametrize("op", sorted(OPS))
def test_each_call_fits_the_op_tables_argument_and_result_models(op: str) -> None:
    call, result = SAMPLES[op]
    assert call.op == op
    validate_args(op, call.args, 1)
    if not OPS[op].fds:
        call.parse(result)  # the parser's model is the table's (TypeError otherwise)
        return
    a, b = socket.socketpair()
    with a, b, call.value(result, (b.detach(),)) as passed:  # the fd becomes the value
        assert isinstance(passed, socket.socket)


def test_fault_fd_takes_the_one_fd_its_reply_passed_and_closes_any_other() -> None:
    with pytest.raises(ProtocolViolation):
        CALLS.fault_fd(3).parse({})  # no fd: the daemon broke the contract
    a, b = socket.socketpair()
    fds = (a.detach(), b.detach())
    with pytest.raises(ProtocolViolation):
        CALLS.fault_fd(3).value({}, fds)
    for fd in fds:  # closed, not leaked
        with pytest.raises(OSError):
            socket.socket(fileno=fd)


def test_a_result_that_does_not_fit_the_model_is_a_protocol_violation() -> None:
    with pytest.raises(ProtocolViolation) as ei:
        CALLS.bind("0000:3a:00.0").parse({"dev_id": "seven"})
    assert ei.value.errno == "EPROTO" and ei.value.op == "bind"
    assert "dev_id" in ei.value.message


def test_unplug_says_how_long_the_daemon_may_hold_its_reply() -> None:
    assert CALLS.unplug("0000:3a:00.0", grace_s=3).held_s == 3.0
    assert CALLS.bind("0000:3a:00.0").held_s == 0.0


def test_page_response_each_is_driven_without_io_and_resends_after_a_refusal() -> None:
    """The procedure alone: yield a Call, receive its value or error, settle every entry."""
    proc = PROCEDURES.page_response_each(9, [(1, 0), (2, 0), (3, 0), (4, 0)])
    sent = [[r["cookie"] for r in next(proc).args["responses"]]]
    sent.append([r["cookie"] for r in proc.send(1).args["responses"]])  # cookie 2 refused
    with pytest.raises(StopIteration) as stop:
        sent.append(
            [
                r["cookie"]
                for r in proc.throw(IopfError("EINVAL", "first refused")).args["responses"]
            ]
        )  # cookie 3 refused
        proc.send(1)
    assert sent == [[1, 2, 3, 4], [3, 4], [4]]
    assert stop.value.value == [None, "EINVAL", "EINVAL", None]


def test_answer_names_the_cookie_of_a_refused_group() -> None:
    group = FaultGroup(5, 17, (FaultRecord(2, 1, 0, 0, Perm.READ, 0x1000, 0),))
    proc = PROCEDURES.answer(group)
    assert next(proc).args == {"fault_id": 5, "responses": [{"cookie": 17, "code": 0}]}
    with pytest.raises(NoSuchObject, match="cookie 17"):
        proc.throw(NoSuchObject("ENOENT", "no such queue", "page_response"))
