"""One requester-ID grammar: the protocol's parser (clients, iopfctl, iopf-vmm, the
daemon's argument models) and the hardware model's ``Rid.parse`` agree on every form."""

from __future__ import annotations

import pytest

from hwmodel.rid import Rid
from iopfd.protocol.models import validate_args
from iopfd.protocol.rid import canonical_rid, parse_rid

GOOD = {
    "0000:3a:00.0": "0000:3a:00.0",
    "3a:00.0": "0000:3a:00.0",
    "3A:1f.7": "0000:3a:1f.7",
    "0001:5C:00.1": "0001:5c:00.1",
}
BAD = [
    "",
    "3a:0.0",
    ":3a:00.0",
    "0000:3a:00.8",
    "0000:3a:20.0",
    "3a:20.0",
    "0000:3a:00",
    "00000:3a:00.0",
    "0000:3g:00.0",
    " 3a:00.0",
    "3a:00.0 ",
]


@pytest.mark.parametrize(("text", "canonical"), GOOD.items())
def test_short_and_full_forms_name_the_same_function_in_protocol_and_hwmodel(
    text: str, canonical: str
) -> None:
    assert canonical_rid(text) == canonical == str(Rid.parse(text))
    assert parse_rid(text) == tuple(
        getattr(Rid.parse(text), f) for f in ("segment", "bus", "dev", "fn")
    )


@pytest.mark.parametrize("text", BAD)
def test_malformed_rids_get_the_same_message_from_protocol_and_hwmodel(text: str) -> None:
    with pytest.raises(ValueError) as proto:
        parse_rid(text)
    with pytest.raises(ValueError) as hw:
        Rid.parse(text)
    assert str(proto.value) == str(hw.value)


def test_the_argument_models_take_the_short_form_and_canonicalise_it() -> None:
    assert validate_args("bind", {"rid": "3a:00.0"}, 1).rid == "0000:3a:00.0"  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="malformed requester ID '3a:0.0'"):
        validate_args("plug", {"rid": "3a:0.0"}, 1)
