"""The fault path's fast argument check accepts exactly what the pydantic model accepts,
with the same values; everything else goes to the model, so every rejection (errno and
message) is the model's."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from iopfd.protocol import models as m
from iopfd.protocol.errors import RequestError
from iopfd.protocol.fastargs import (
    DmaFast,
    FastArgs,
    IoasMapFast,
    PageResponseFast,
    fast_args,
)
from iopfd.protocol.frames import encode_frame
from iopfd.protocol.session import Rejected, Request, ServerSession

PAGE = m.PAGE_SIZE
FIELDS = {
    "dma": ("dev_id", "iova", "length", "perm", "pasid"),
    "ioas_map": ("ioas_id", "iova", "length", "perm"),
    "page_response": ("fault_id", "responses"),
}

#: The edges of every range the models check.
EDGES = [
    -1,
    0,
    1,
    2,
    3,
    4,
    15,
    16,
    PAGE - 1,
    PAGE,
    PAGE + 1,
    2 * PAGE,
    m.U32_MAX - PAGE + 1,
    m.U32_MAX,
    m.U32_MAX + 1,
    m.U64_MAX - PAGE + 1,
    m.U64_MAX - 2 * PAGE + 1,
    m.U64_MAX,
    m.U64_MAX + 1,
    1 << 70,
]

ints = st.one_of(
    st.sampled_from(EDGES),
    st.integers(min_value=0, max_value=64).map(lambda k: k * PAGE),
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
)
other = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
values = st.one_of(ints, ints, ints, other)


@st.composite
def responses(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 9)) == 0:
        return draw(other)
    items: list[object] = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.integers(0, 9)) == 0:
            items.append(draw(other))
            continue
        keys = draw(st.sets(st.sampled_from(["cookie", "code", "extra"])).filter(bool))
        if draw(st.integers(0, 3)):
            keys = {"cookie", "code"}
        items.append({k: draw(values) for k in sorted(keys)})
    return items


ids = st.one_of(st.sampled_from([0, 1, m.U32_MAX]), st.integers(0, m.U32_MAX))
iovas = st.one_of(
    st.integers(0, 64).map(lambda k: k * PAGE),
    st.integers(0, 64).map(lambda k: k * PAGE),
    st.integers(0, 64).map(lambda k: k * PAGE),
    st.sampled_from([m.U64_MAX - PAGE + 1, m.U64_MAX - 2 * PAGE + 1, 1 << 63]),
)
lengths = st.one_of(st.integers(1, 16).map(lambda k: k * PAGE), st.just(m.U32_MAX - PAGE + 1))
#: Well-formed arguments of each op, before a few of them are broken.
VALID: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "dma": {
        "dev_id": ids,
        "iova": iovas,
        "length": lengths,
        "perm": st.integers(1, m.PERM_ALL),
        "pasid": st.one_of(st.none(), st.integers(1, m.U32_MAX), st.sampled_from([1, m.U32_MAX])),
    },
    "ioas_map": {
        "ioas_id": ids,
        "iova": st.one_of(st.none(), iovas),
        "length": lengths,
        "perm": st.integers(1, 3),
    },
    "page_response": {
        "fault_id": ids,
        "responses": st.lists(
            st.fixed_dictionaries({"cookie": st.integers(), "code": st.integers()}), max_size=4
        ),
    },
}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A well-formed request of a hot op, then (mostly) a few of its keys broken:
    dropped, replaced by anything (edges of every range, other types), or an extra key."""
    op = draw(st.sampled_from(sorted(FIELDS)))
    msg: dict[str, Any] = {"op": op, "id": 7}
    for key in FIELDS[op]:
        optional = (op, key) in {("dma", "pasid"), ("ioas_map", "iova")}
        if optional and draw(st.integers(0, 3)) == 0:
            continue  # absent
        msg[key] = draw(VALID[op][key])
    fate = st.sampled_from(["keep"] * 2 * len(FIELDS[op]) + ["drop", "break", "break"])
    broken = st.one_of(st.sampled_from(EDGES), st.integers(-2, 20), values)
    for key in FIELDS[op]:
        what = draw(fate)
        if what == "drop":
            msg.pop(key, None)
        elif what == "break":
            msg[key] = draw(responses()) if key == "responses" else draw(broken)
    if draw(st.integers(0, 9)) == 0:
        msg[draw(st.sampled_from(["extra", "addr", "cookie"]))] = draw(values)
    return op, msg


def model(op: str, msg: dict[str, Any]) -> m.Args | RequestError:
    try:
        return m.validate_args(op, {k: v for k, v in msg.items() if k not in ("op", "id")}, 7)
    except RequestError as exc:
        return exc


def same_values(fast: FastArgs, valid: m.Args) -> None:
    for name in fast._fields:
        if name == "responses":
            assert isinstance(fast, PageResponseFast)
            assert isinstance(valid, m.PageResponseArgs)
            got, want = fast.pairs(), valid.pairs()
            assert got == want
            assert [tuple(map(type, p)) for p in got] == [tuple(map(type, p)) for p in want]
        else:
            a, b = getattr(fast, name), getattr(valid, name)
            assert a == b and type(a) is type(b), (name, a, b)


@settings(max_examples=1500, deadline=None)
@given(requests())
def test_the_fast_path_accepts_exactly_what_the_model_accepts_with_the_same_values(
    request: tuple[str, dict[str, Any]],
) -> None:
    op, msg = request
    fast = fast_args(op, msg)
    valid = model(op, msg)
    if isinstance(valid, RequestError):
        assert fast is None, (msg, valid.message)
    else:
        # Only exact ints and None reach here: the strict models take nothing else.
        assert fast is not None, msg
        same_values(fast, valid)


BASES: dict[str, list[dict[str, Any]]] = {
    "dma": [
        {"dev_id": 1, "iova": PAGE, "length": PAGE, "perm": 2},
        {"dev_id": 1, "iova": 0, "length": 2 * PAGE, "perm": 1, "pasid": 3},
    ],
    "ioas_map": [
        {"ioas_id": 1, "iova": PAGE, "length": PAGE, "perm": 3},
        {"ioas_id": 1, "length": PAGE, "perm": 1},
    ],
    "page_response": [{"fault_id": 1, "responses": [{"cookie": 1, "code": 0}]}],
}
ODD: list[object] = [None, True, False, 1.0, "1", b"1", [1], {"a": 1}, [], {}]


def test_every_edge_of_every_field_alike() -> None:
    # Deterministic, next to the random search: each field of a well-formed request
    # set to each range edge and each other type, absent, and each extra key.
    cases = 0
    for op, bases in BASES.items():
        for base in bases:
            variants: list[dict[str, Any]] = [dict(base)]
            for key in FIELDS[op]:
                variants.append({k: v for k, v in base.items() if k != key})
                for value in [*EDGES, *range(-2, 21), *ODD]:
                    variants.append({**base, key: value})
            for extra in ("extra", "addr", "op2"):
                variants.append({**base, extra: 1})
            for item in [*EDGES, *ODD, {"cookie": 1}, {"cookie": 1, "code": 0, "x": 1}]:
                if op == "page_response":
                    variants.append({**base, "responses": [item]})
                    variants.append({**base, "responses": [{"cookie": item, "code": 0}]})
                    variants.append({**base, "responses": [{"cookie": 0, "code": item}]})
            for args in variants:
                msg = {"op": op, "id": 7, **args}
                fast = fast_args(op, msg)
                valid = model(op, msg)
                if isinstance(valid, RequestError):
                    assert fast is None, msg
                else:
                    assert fast is not None, msg
                    same_values(fast, valid)
                cases += 1
    assert cases > 500


@settings(max_examples=600, deadline=None)
@given(requests())
def test_the_session_answers_the_hot_ops_as_the_model_would(
    request: tuple[str, dict[str, Any]],
) -> None:
    op, msg = request
    session = ServerSession(admin=False)
    list(session.iter_requests(encode_frame({"op": "hello", "id": 1, "version": 2, "client": ""})))
    try:
        frame = encode_frame(msg)
    except (TypeError, ValueError, OverflowError):
        return  # not encodable in msgpack: never on the wire
    (item,) = session.iter_requests(frame)
    # What went over the wire, decoded (msgpack turns bytes keys and such into themselves).
    (decoded,) = ServerSession(admin=True).decoder.feed(frame)
    valid = model(op, decoded)
    if isinstance(valid, RequestError):
        assert type(item) is Rejected
        assert (item.errno, item.message, item.id) == (valid.errno, valid.message, 7)
        assert not item.close
    else:
        assert type(item) is Request
        args = item.args
        if isinstance(args, m.Args):
            assert args == valid
        else:
            same_values(args, valid)


def test_the_requests_a_vmm_sends_take_the_fast_path() -> None:
    session = ServerSession(admin=False)
    list(session.iter_requests(encode_frame({"op": "hello", "id": 1, "version": 2, "client": ""})))
    frames = [
        {"op": "dma", "id": 2, "dev_id": 1, "iova": 1 << 36, "length": PAGE, "perm": 2},
        {"op": "dma", "id": 3, "dev_id": 1, "pasid": 5, "iova": 0, "length": PAGE, "perm": 1},
        {"op": "ioas_map", "id": 4, "ioas_id": 1, "iova": 1 << 36, "length": PAGE, "perm": 3},
        {"op": "ioas_map", "id": 5, "ioas_id": 1, "length": 2 * PAGE, "perm": 1},
        {"op": "page_response", "id": 6, "fault_id": 3, "responses": [{"cookie": 9, "code": 0}]},
    ]
    got = [r for f in frames for r in session.iter_requests(encode_frame(f))]
    assert [type(r.args) for r in got if isinstance(r, Request)] == [
        DmaFast,
        DmaFast,
        IoasMapFast,
        IoasMapFast,
        PageResponseFast,
    ]
    assert got[3].args == IoasMapFast(ioas_id=1, iova=None, length=2 * PAGE, perm=1)  # type: ignore[union-attr]


def test_a_deferred_id_still_in_flight_is_refused_on_the_fast_path_too() -> None:
    session = ServerSession(admin=False, max_deferred=1)
    list(session.iter_requests(encode_frame({"op": "hello", "id": 1, "version": 2, "client": ""})))
    dma = {"op": "dma", "id": 2, "dev_id": 1, "iova": 0, "length": PAGE, "perm": 2}
    (first,) = session.iter_requests(encode_frame(dma))
    assert type(first) is Request
    (again,) = session.iter_requests(encode_frame(dma))
    assert type(again) is Rejected and again.errno == "EINVAL"
    (full,) = session.iter_requests(encode_frame({**dma, "id": 3}))
    assert type(full) is Rejected and full.errno == "ENOSPC"
