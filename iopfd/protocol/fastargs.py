"""Fast acceptance of the fault path's requests: ``dma``, ``ioas_map``, ``page_response``.

Every request of the fault path goes through one of these three ops, so their argument
check runs a few thousand times per second under load. The pydantic models of
:mod:`iopfd.protocol.models` stay the contract and the validator at the boundary:
:func:`fast_args` only *accepts*. It answers for a request whose arguments are the
plain, well-formed shape a client sends (exact ``int`` values in range, known keys,
the range checks of the model's validators) and returns ``None`` for anything else,
which then goes to the model as before: every rejection, its errno and its message
are the model's. Accepting is sound only if the model accepts the same input with the
same values; ``tests/protocol/test_fastargs.py`` checks that with hypothesis over
malformed and well-formed requests alike.

The results are named tuples with the fields of the model, read by the handlers as the
model would be.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final, NamedTuple

from iopfd.protocol.models import (
    PAGE_SIZE,
    PERM_ALL,
    PERM_READ,
    PERM_WRITE,
    U32_MAX,
    U64_MAX,
)

_MAP_PERM_MAX: Final = PERM_READ | PERM_WRITE
_PAGE_MASK: Final = PAGE_SIZE - 1


class DmaFast(NamedTuple):
    """``DmaArgs``, accepted by :func:`fast_args`."""

    iova: int
    length: int
    dev_id: int
    pasid: int | None
    perm: int


class IoasMapFast(NamedTuple):
    """``IoasMapArgs``, accepted by :func:`fast_args`."""

    ioas_id: int
    iova: int | None
    length: int
    perm: int


class PageResponseFast(NamedTuple):
    """``PageResponseArgs``, accepted by :func:`fast_args`; ``responses`` as
    ``(cookie, code)`` pairs, which is what the core takes."""

    fault_id: int
    responses: list[tuple[int, int]]

    def pairs(self) -> list[tuple[int, int]]:
        return self.responses


FastArgs = DmaFast | IoasMapFast | PageResponseFast

#: The keys each op may carry besides ``op`` and ``id`` (the models forbid others).
_DMA_KEYS: Final = frozenset({"op", "id", "dev_id", "iova", "length", "perm", "pasid"})
_MAP_KEYS: Final = frozenset({"op", "id", "ioas_id", "iova", "length", "perm"})
_RESPONSE_KEYS: Final = frozenset({"op", "id", "fault_id", "responses"})
_ITEM_KEYS: Final = frozenset({"cookie", "code"})


def _range_ok(start: int, length: int) -> bool:
    """``models._check_range`` (aligned), as a predicate."""
    return (
        length != 0
        and not (start & _PAGE_MASK or length & _PAGE_MASK)
        and start + length - 1 <= U64_MAX
    )


def _dma(msg: Mapping[str, object]) -> DmaFast | None:
    if not msg.keys() <= _DMA_KEYS:
        return None
    dev_id = msg.get("dev_id")
    iova = msg.get("iova")
    length = msg.get("length")
    perm = msg.get("perm")
    pasid = msg.get("pasid")
    if (
        type(dev_id) is int
        and 0 <= dev_id <= U32_MAX
        and type(iova) is int
        and 0 <= iova <= U64_MAX
        and type(length) is int
        and 0 <= length <= U32_MAX
        and type(perm) is int
        and 1 <= perm <= PERM_ALL
        and (pasid is None or (type(pasid) is int and 1 <= pasid <= U32_MAX))
        and _range_ok(iova, length)
    ):
        return DmaFast(iova, length, dev_id, pasid, perm)
    return None


def _ioas_map(msg: Mapping[str, object]) -> IoasMapFast | None:
    if not msg.keys() <= _MAP_KEYS:
        return None
    ioas_id = msg.get("ioas_id")
    iova = msg.get("iova")
    length = msg.get("length")
    perm = msg.get("perm")
    if (
        type(ioas_id) is int
        and 0 <= ioas_id <= U32_MAX
        and (iova is None or (type(iova) is int and 0 <= iova <= U64_MAX))
        and type(length) is int
        and 0 <= length <= U32_MAX
        and type(perm) is int
        and 1 <= perm <= _MAP_PERM_MAX
        and _range_ok(iova if iova is not None else 0, length)
    ):
        return IoasMapFast(ioas_id, iova, length, perm)
    return None


def _page_response(msg: Mapping[str, object]) -> PageResponseFast | None:
    if not msg.keys() <= _RESPONSE_KEYS:
        return None
    fault_id = msg.get("fault_id")
    responses = msg.get("responses")
    if type(fault_id) is not int or not 0 <= fault_id <= U32_MAX or type(responses) is not list:
        return None
    pairs = []
    for item in responses:
        if type(item) is not dict or item.keys() != _ITEM_KEYS:
            return None
        cookie = item["cookie"]
        code = item["code"]
        if type(cookie) is not int or type(code) is not int:
            return None
        pairs.append((cookie, code))
    return PageResponseFast(fault_id, pairs)


_FAST: Final[Mapping[str, Callable[[Mapping[str, object]], FastArgs | None]]] = {
    "dma": _dma,
    "ioas_map": _ioas_map,
    "page_response": _page_response,
}


def fast_args(op: str, msg: Mapping[str, object]) -> FastArgs | None:
    """The arguments of request ``msg`` (with its ``op`` and ``id``) when ``op`` is one of
    the fault path's and they are plainly well-formed; ``None``: ask the model."""
    check = _FAST.get(op)
    return None if check is None else check(msg)
