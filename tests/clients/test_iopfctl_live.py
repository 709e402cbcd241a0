"""iopfctl against a live daemon: every command in both output forms, errors, and trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from clients.sync import SyncClient
from iopfd.cli.iopfctl import main
from tests.clients.conftest import LiveDaemon

pytestmark = pytest.mark.integration

IOPFCTL = os.path.join(os.path.dirname(sys.executable), "iopfctl")
FREE = "0000:5c:00.0"  # no PRI, no ATS: nobody binds it in these tests


@pytest.mark.parametrize(
    ("command", "human_marker", "json_key"),
    [
        ("status", "exactly-once", "counters"),
        ("devices", "PASID_BITS", "devices"),
        ("topology", "PRQ_ENTRIES", "iommus"),
        ("objects", "", "objects"),
        ("pending", "", "pending"),
    ],
)
def test_read_commands_print_a_table_or_the_daemons_json(
    live: LiveDaemon,
    capsys: pytest.CaptureFixture[str],
    command: str,
    human_marker: str,
    json_key: str,
) -> None:
    with SyncClient(live.path) as other:  # something for objects to show
        other.ioas_alloc()
        assert main(["--socket", live.path, command]) == 0
        human = capsys.readouterr().out
        assert main([command, "--json", "--socket", live.path]) == 0
        data = json.loads(capsys.readouterr().out)
    assert human_marker in human and not human.lstrip().startswith("{")
    assert json_key in data
    if command == "objects":
        assert any(o["type"] == "ioas" for o in data["objects"]) and "ioas" in human


@pytest.mark.parametrize("as_json", [False, True])
def test_unplug_plug_reset_and_inject_succeed_in_both_forms(
    live: LiveDaemon, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    flag = ["--json"] if as_json else []
    for argv in (
        ["unplug", FREE],
        ["plug", FREE],
        ["reset", FREE],
        ["inject", FREE, "--addr", "0x5000", "--perm", "rw", "--grpid", "3"],
    ):
        assert main(["--socket", live.path, *argv, *flag]) == 0, argv
        out = capsys.readouterr().out.strip()
        if as_json:
            # unplug says whether the removal was forced (nobody held FREE: it was not)
            assert json.loads(out) == ({"forced": False} if argv[0] == "unplug" else {})
        else:
            assert out in ("unplugged", "plugged", "reset", "injected")
    with SyncClient(live.path) as c:
        assert {d.rid: d.state for d in c.devices()}[FREE] == "free"


def test_status_shows_the_kernel_profile(
    live: LiveDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--socket", live.path, "status"]) == 0
    assert any(line.split() == ["kernel", "6.18"] for line in capsys.readouterr().out.splitlines())
    assert main(["--socket", live.path, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kernel"] == "6.18"


def _unplug_proc(live: LiveDaemon, rid: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [IOPFCTL, "--socket", live.path, "unplug", rid, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_unplug_waits_for_the_owner_to_release_the_device_or_forces_it_after_grace(
    live: LiveDaemon,
) -> None:
    rid = "0000:5b:00.0"
    with SyncClient(live.path, client_name="it-owner") as owner:
        dev = owner.bind(rid)
        proc = _unplug_proc(live, rid, "--grace", "60")
        try:
            req = owner.next_device_request(timeout=10)
            assert req is not None and (req.dev_id, req.rid) == (dev, rid)
            assert {d.rid: d.removing for d in owner.devices()}[rid]
            owner.unbind(dev)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert (proc.returncode, out.strip()) == (0, "unplugged"), err
        owner.plug(rid)
        dev = owner.bind(rid)
        proc = _unplug_proc(live, rid, "--grace", "0")  # nobody will let go
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, out.strip()) == (
            0,
            "unplugged (forced: its owner had not released it)",
        ), err
        assert owner.next_device_request(timeout=10) is not None
        owner.unbind(dev)
        owner.plug(rid)
        with pytest.raises(SystemExit) as exit_info:  # a usage error, from argparse
            main(["--socket", live.path, "unplug", rid, "--grace", "-1"])
        assert exit_info.value.code == 2


def test_error_replies_exit_1_with_the_errno_name_on_stderr(
    live: LiveDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--socket", live.path, "plug", FREE]) == 1  # present already
    err = capsys.readouterr().err
    assert err.startswith("iopfctl: EINVAL: ")
    assert main(["--socket", live.path, "unplug", "0000:77:00.0"]) == 1
    assert capsys.readouterr().err.startswith("iopfctl: ENOENT: ")


def test_socket_comes_from_iopfd_socket_and_a_dead_socket_exits_3(
    live: LiveDaemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IOPFD_SOCKET", live.path)
    assert main(["status", "--json"]) == 0
    assert "counters" in json.loads(capsys.readouterr().out)
    assert main(["--socket", live.path + ".nope", "status"]) == 3
    assert "cannot connect" in capsys.readouterr().err


def _trace_proc(live: LiveDaemon, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            IOPFCTL,
            "--socket",
            live.path,
            "trace",
            "--topic",
            "fault",
            "--topic",
            "response",
            "--topic",
            "auto_response",
            "--count",
            "4",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _fault_response_auto_response(live: LiveDaemon, subscribers: int) -> None:
    """A delivered fault, its answer, then a group the daemon answers on detach."""
    with SyncClient(live.path, client_name="it-trace-vmm") as c:
        deadline = time.monotonic() + 10
        while c.status().clients < subscribers + 1:
            assert time.monotonic() < deadline, "iopfctl trace never connected"
            time.sleep(0.02)
        time.sleep(0.2)  # the subscribe follows the hello
        dev = c.bind("0000:3a:00.0")
        ioas = c.ioas_alloc()
        fid = c.fault_alloc()
        hwpt = c.hwpt_alloc(dev, ioas, fault_id=fid)
        c.attach(dev, hwpt)
        c.inject("0000:3a:00.0", 0x7000, 1, 1)
        g = c.next_fault(timeout=5)
        assert g is not None
        c.answer(g)
        c.inject("0000:3a:00.0", 0x8000, 1, 2)
        assert c.next_fault(timeout=5) is not None
        c.detach(dev)  # the daemon answers the pending group INVALID


@pytest.mark.parametrize("as_json", [False, True])
def test_trace_shows_a_fault_its_response_and_an_auto_response(
    live: LiveDaemon, as_json: bool
) -> None:
    proc = _trace_proc(live, *(["--json"] if as_json else []))
    try:
        _fault_response_auto_response(live, subscribers=1)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    if as_json:
        recs = [json.loads(line) for line in lines]
        assert [r["topic"] for r in recs] == ["fault", "response", "fault", "auto_response"]
        assert recs[0]["cookie"] == recs[1]["cookie"] and recs[1]["code"] == 0
        assert recs[3]["cookie"] == recs[2]["cookie"] == recs[0]["cookie"] + 1
    else:
        topics = [line.split()[1] for line in lines]
        assert topics == ["fault", "response", "fault", "auto_response"]
        assert "rid=0000:3a:00.0" in lines[0]


def test_objects_lists_every_row_page_by_page(
    live: LiveDaemon, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import iopfd.cli.iopfctl as iopfctl

    monkeypatch.setattr(iopfctl, "PAGE_ROWS", 2)  # many pages from a few objects
    with SyncClient(live.path) as other:
        ids = [other.ioas_alloc() for _ in range(5)]
        assert main(["--socket", live.path, "objects", "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
    listed = [o["id"] for o in data["objects"] if o["type"] == "ioas"]
    assert set(ids) <= set(listed) and len(listed) == len(set(listed))
    assert data["total"] == len(data["objects"])
