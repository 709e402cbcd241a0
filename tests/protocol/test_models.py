"""Argument validation of every op (docs/protocol.md, version 2, and iopfd's clarifications)."""

from __future__ import annotations

from typing import Any

import pytest

from iopfd.protocol.errors import RequestError
from iopfd.protocol.models import ADMIN_OPS, OP_MODELS, validate_request

#: A valid request of every op: the base the negative cases below mutate.
VALID: dict[str, dict[str, Any]] = {
    "hello": {"version": 2, "client": "t"},
    "devices": {},
    "bind": {"rid": "0000:3a:00.0"},
    "unbind": {"dev_id": 1},
    "ioas_alloc": {},
    "ioas_map": {"ioas_id": 1, "iova": 0x1000, "length": 0x2000, "perm": 3},
    "ioas_unmap": {"ioas_id": 1, "iova": 0x1000, "length": 0x1000},
    "fault_alloc": {},
    "hwpt_alloc": {"dev_id": 1, "pt_id": 2, "flags": ["nest_parent"]},
    "attach": {"dev_id": 1, "pt_id": 2, "pasid": 5},
    "replace": {"dev_id": 1, "pt_id": 2},
    "detach": {"dev_id": 1},
    "page_response": {"fault_id": 1, "responses": [{"cookie": 1, "code": 0}]},
    "fault_fd": {"fault_id": 1},
    "dma": {"dev_id": 1, "iova": 0, "length": 4096, "perm": 1},
    "destroy": {"obj_id": 3},
    "device_reset": {"dev_id": 1},
    "hw_info": {"dev_id": 1},
    "hwpt_s1_map": {"hwpt_id": 1, "iova": 0, "length": 4096, "gpa": 0x10000, "perm": 3},
    "hwpt_s1_unmap": {"hwpt_id": 1, "iova": 0, "length": 4096},
    "hwpt_invalidate": {"hwpt_id": 1},
    "ioas_iova_ranges": {"ioas_id": 1},
    "ioas_allow_iovas": {"ioas_id": 1, "ranges": [{"start": 0x1000, "last": 0x1FFF}]},
    "ioas_copy": {"src_ioas_id": 1, "src_iova": 0, "dst_ioas_id": 2, "length": 4096, "perm": 3},
    "ioas_map_file": {"ioas_id": 1, "iova": 0, "start": 0, "length": 4096, "perm": 1},
    "option": {"option": "huge_pages", "action": "set", "object_id": 1, "val64": 0},
    "status": {},
    "topology": {},
    "objects": {},
    "pending": {},
    "inject": {"rid": "0000:3a:00.0", "addr": 0x1000, "perm": 1, "grpid": 3, "last": True},
    "unplug": {"rid": "0000:3a:00.0", "force": True, "grace_s": 2.5},
    "plug": {"rid": "0000:3a:00.0"},
    "reset": {"rid": "0000:3a:00.0"},
    "subscribe": {"topics": []},
}


def req(op: str, **kw: Any) -> dict[str, Any]:
    return {"op": op, "id": 9, **kw}


def errno_of(msg: dict[str, Any]) -> str:
    with pytest.raises(RequestError) as info:
        validate_request(msg)
    return info.value.errno


def test_every_op_has_a_valid_example() -> None:
    assert VALID.keys() == OP_MODELS.keys()
    assert ADMIN_OPS.issubset(OP_MODELS)


@pytest.mark.parametrize("op", sorted(VALID))
def test_valid_arguments_are_accepted(op: str) -> None:
    got_op, rid, _ = validate_request(req(op, **VALID[op]))
    assert (got_op, rid) == (op, 9)


@pytest.mark.parametrize("op", sorted(VALID))
def test_an_unknown_key_is_einval_for_every_op(op: str) -> None:
    assert errno_of(req(op, **VALID[op], bogus=1)) == "EINVAL"


@pytest.mark.parametrize("rid", [None, -1, 2**32, "1", 1.0, True])
def test_id_missing_or_not_uint32_is_eproto_with_null_id(rid: object) -> None:
    msg: dict[str, Any] = {"op": "devices"}
    if rid is not None:
        msg["id"] = rid
    with pytest.raises(RequestError) as info:
        validate_request(msg)
    assert info.value.errno == "EPROTO"
    assert info.value.request_id is None


@pytest.mark.parametrize("op", [None, 3, b"hello"])
def test_op_missing_or_not_a_string_is_eproto_with_the_id(op: object) -> None:
    msg: dict[str, Any] = {"id": 4}
    if op is not None:
        msg["op"] = op
    with pytest.raises(RequestError) as info:
        validate_request(msg)
    assert (info.value.errno, info.value.request_id) == ("EPROTO", 4)


def test_unknown_op_is_einval_with_message_unknown_op() -> None:
    with pytest.raises(RequestError) as info:
        validate_request(req("frobnicate"))
    assert (info.value.errno, info.value.message) == ("EINVAL", "unknown op")


@pytest.mark.parametrize(
    ("op", "key", "value"),
    [
        ("unbind", "dev_id", -1),
        ("unbind", "dev_id", 2**32),
        ("unbind", "dev_id", True),
        ("unbind", "dev_id", 1.0),
        ("unbind", "dev_id", "1"),
        ("ioas_map", "iova", 2**64),
        ("ioas_map", "iova", -4096),
        ("ioas_map", "length", 2**32),
        ("ioas_map", "length", 0),
        ("ioas_map", "iova", 0x1001),
        ("ioas_map", "length", 0x1800),
        ("ioas_map", "perm", 0),
        ("ioas_map", "perm", 4),
        ("ioas_unmap", "length", 0),
        ("dma", "perm", 16),
        ("dma", "perm", 0),
        ("dma", "iova", 2**64 - 4096 * 0 - 4096 + 4096),
        ("dma", "pasid", 0),
        ("attach", "pasid", 0),
        ("attach", "pasid", -1),
        ("detach", "pasid", 2**32),
        ("hwpt_alloc", "flags", "nest_parent"),
        ("hwpt_alloc", "flags", [1]),
        ("hwpt_alloc", "data", [1]),
        ("page_response", "responses", [{"cookie": 1}]),
        ("page_response", "responses", [{"cookie": 1, "code": "0"}]),
        ("page_response", "responses", {"cookie": 1, "code": 0}),
        ("hwpt_s1_map", "gpa", 0x10),
        ("inject", "grpid", 512),
        ("inject", "addr", 0x10),
        ("inject", "last", 1),
        ("subscribe", "topics", ["faults"]),
        ("hello", "version", "1"),
        ("device_reset", "dev_id", -1),
        ("destroy", "obj_id", None),
        ("destroy", "obj_id", 2**32),
        ("unplug", "force", 1),
        ("unplug", "grace_s", -0.5),
        ("unplug", "grace_s", 3600.5),
        ("unplug", "grace_s", float("nan")),
        ("unplug", "grace_s", float("inf")),
        ("unplug", "grace_s", True),
        ("unplug", "grace_s", "10"),
        ("hello", "client", 1),
    ],
)
def test_wrong_type_or_out_of_range_argument_is_einval(op: str, key: str, value: object) -> None:
    assert errno_of(req(op, **{**VALID[op], key: value})) == "EINVAL"


def _required(op: str) -> list[str]:
    return [k for k, f in OP_MODELS[op].model_fields.items() if f.is_required()]


@pytest.mark.parametrize("op", [op for op in sorted(VALID) if _required(op)])
def test_missing_required_argument_is_einval(op: str) -> None:
    required = _required(op)
    args = dict(VALID[op])
    del args[required[0]]
    assert errno_of(req(op, **args)) == "EINVAL"


def test_range_that_wraps_past_64_bits_is_einval() -> None:
    assert errno_of(req("dma", dev_id=1, iova=2**64 - 4096, length=8192, perm=1)) == "EINVAL"


def test_range_ending_exactly_at_the_top_of_the_address_space_is_accepted() -> None:
    validate_request(req("dma", dev_id=1, iova=2**64 - 4096, length=4096, perm=1))


def test_hwpt_invalidate_needs_iova_and_length_together() -> None:
    assert errno_of(req("hwpt_invalidate", hwpt_id=1, iova=0)) == "EINVAL"
    validate_request(req("hwpt_invalidate", hwpt_id=1, iova=0, length=4096))


def test_page_response_code_or_cookie_of_any_integer_is_not_a_schema_error() -> None:
    # PROTOCOL.md v2 item 1: a code other than 0/1 or an unknown cookie stops processing
    # at that entry (the core's job); it is not a malformed request.
    _, _, args = validate_request(
        req(
            "page_response",
            fault_id=1,
            responses=[{"cookie": 1, "code": 7}, {"cookie": -1, "code": -1}],
        )
    )
    assert args.responses[0].code == 7  # type: ignore[attr-defined]
    assert (args.responses[1].cookie, args.responses[1].code) == (-1, -1)  # type: ignore[attr-defined]


def test_error_message_names_the_field() -> None:
    with pytest.raises(RequestError) as info:
        validate_request(req("ioas_map", **{**VALID["ioas_map"], "iova": -1, "typo": 1}))
    assert "iova" in info.value.message
    assert "typo: unknown key" in info.value.message


def test_destroy_without_obj_id_is_einval_the_request_id_names_no_object() -> None:
    """PROTOCOL.md v2 item 12: ``id`` is the request's own; v1's ``{"op": "destroy",
    "id": N}`` form is a missing argument now."""
    with pytest.raises(RequestError) as info:
        validate_request({"op": "destroy", "id": 12})
    assert info.value.errno == "EINVAL" and "obj_id" in info.value.message


def test_destroy_obj_id_names_the_object_and_leaves_the_request_id_free() -> None:
    _, rid, args = validate_request({"op": "destroy", "id": 1, "obj_id": 12})
    assert (rid, args.obj_id) == (1, 12)  # type: ignore[attr-defined]


def test_unplug_defaults_to_no_force_and_ten_seconds_of_grace() -> None:
    _, _, args = validate_request(req("unplug", rid="0000:3a:00.0"))
    assert (args.force, args.grace_s) == (False, 10.0)  # type: ignore[attr-defined]
    _, _, args = validate_request(req("unplug", rid="0000:3a:00.0", grace_s=0))
    assert args.grace_s == 0.0  # type: ignore[attr-defined]  # an int is a number of seconds


def test_device_reset_is_an_owner_op_and_unplug_an_admin_op() -> None:
    assert "device_reset" not in ADMIN_OPS
    assert {"unplug", "reset", "plug"} <= ADMIN_OPS


def test_thousands_of_unknown_keys_get_a_short_message() -> None:
    with pytest.raises(RequestError) as info:
        validate_request({"op": "devices", "id": 1, **{f"k{i}": i for i in range(5000)}})
    assert info.value.errno == "EINVAL"
    assert len(info.value.message) < 1000 and "more" in info.value.message


def test_the_issue_15_ops_take_the_wire_shapes_the_preload_sends() -> None:
    # docs/uapi.md, "Daemon ops the preload uses": each shape of clients/c/lib/ioas_ext.c
    validate_request(req("ioas_allow_iovas", ioas_id=1, ranges=[]))
    validate_request(req("option", option="rlimit_mode", action="get"))
    validate_request(
        req(
            "ioas_copy",
            src_ioas_id=1,
            src_iova=0,
            dst_ioas_id=1,
            dst_iova=0x2000,
            length=0x1000,
            perm=1,
        )
    )
    assert errno_of(req("option", option="huge_pages", action="set", object_id=1)) == "EINVAL"
    assert (
        errno_of(
            req("ioas_copy", src_ioas_id=1, src_iova=0x800, dst_ioas_id=1, length=0x1000, perm=1)
        )
        == "EINVAL"
    )
    assert errno_of(req("ioas_map_file", ioas_id=1, start=0x800, length=0x1000, perm=1)) == "EINVAL"
    assert (
        errno_of(req("ioas_copy", src_ioas_id=1, src_iova=0, dst_ioas_id=1, length=0x1000, perm=4))
        == "EINVAL"
    )
    assert errno_of(req("ioas_allow_iovas", ioas_id=1, ranges=[{"start": 1}])) == "EINVAL"
