"""The session rule: hello first, one version (2), one hello."""

from __future__ import annotations

from iopfd_harness import DaemonProc


def test_hello_reports_version_server_max_frame_admin_and_kernel(iopfd: DaemonProc) -> None:
    with iopfd.client(hello=False) as c:
        result = c.call("hello", version=2, client="t")
        assert result["version"] == 2
        assert result["server"].startswith("iopfd/")
        assert result["max_frame"] == 1 << 20
        assert result["admin"] is True  # the tests run as root
        assert result["kernel"] == "6.18"  # the default profile


def test_any_request_before_hello_is_eproto_and_closes(iopfd: DaemonProc) -> None:
    with iopfd.client(hello=False) as c:
        c.send({"op": "devices", "id": 11})
        frames = c.expect_closed()
        assert [(f["id"], f["error"]["code"]) for f in frames] == [(11, "EPROTO")]


def test_an_unknown_op_before_hello_is_eproto(iopfd: DaemonProc) -> None:
    with iopfd.client(hello=False) as c:
        c.send({"op": "frobnicate", "id": 1})
        assert [f["error"]["code"] for f in c.expect_closed()] == ["EPROTO"]


def test_other_version_is_eprotonosupport_and_a_good_hello_may_follow(iopfd: DaemonProc) -> None:
    """PROTOCOL.md v2: version 2 only; version 1 is refused like any other."""
    with iopfd.client(hello=False) as c:
        for version in (1, 3):
            reply = c.request("hello", version=version, client="t")
            assert reply["error"] == {"code": "EPROTONOSUPPORT",
                                      "message": "supported versions: [2]"}
        c.send({"op": "devices", "id": 99})
        assert c.wait_reply(99)["error"]["code"] == "EPROTO"
    with iopfd.client(hello=False) as c:
        assert c.error("hello", version=0, client="t") == "EPROTONOSUPPORT"
        assert c.error("hello", version=1, client="t") == "EPROTONOSUPPORT"
        assert c.call("hello", version=2, client="t")["version"] == 2
        assert c.call("devices")["devices"]


def test_a_second_hello_is_einval_and_keeps_the_session(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        assert c.error("hello", version=2, client="again") == "EINVAL"
        assert c.call("devices")["devices"]


def test_hello_with_bad_arguments_is_einval_and_not_a_session(iopfd: DaemonProc) -> None:
    with iopfd.client(hello=False) as c:
        assert c.error("hello", version=2) == "EINVAL"
        assert c.error("hello", version=2, client="t", extra=1) == "EINVAL"
        assert c.call("hello", version=2, client="t")["admin"] is True


def test_replies_match_request_ids_chosen_by_the_client(iopfd: DaemonProc) -> None:
    with iopfd.client() as c:
        for rid in (0, 2**32 - 1, 12345):
            c.send({"op": "devices", "id": rid})
            assert c.wait_reply(rid)["ok"]
