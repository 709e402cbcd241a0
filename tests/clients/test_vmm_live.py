"""iopf-vmm against the real daemon: runs to completion, every group answered, pages mapped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from clients.sync import SyncClient
from clients.vmm import main as vmm_main
from iopfd.cli.iopfctl import main as iopfctl_main
from tests.clients.conftest import LiveDaemon

pytestmark = pytest.mark.integration


def _vmm(
    live: LiveDaemon, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any]]:
    rc = vmm_main(["--socket", live.path, "--json", *args])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def _assert_quiet_daemon(live: LiveDaemon, capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing pending (as iopfctl pending --json says) and the exactly-once identity."""
    assert iopfctl_main(["--socket", live.path, "pending", "--json"]) == 0
    pending = json.loads(capsys.readouterr().out)["pending"]
    assert pending == []
    assert iopfctl_main(["--socket", live.path, "status", "--json"]) == 0
    k = json.loads(capsys.readouterr().out)["counters"]
    assert k["groups"] == k["responses"] + k["auto_responses"] + k["throttled"] + len(pending)


def test_vmm_answers_every_group_and_every_touched_page_ends_mapped(
    live: LiveDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, s = _vmm(live, capsys, "--pages", "32", "--bad-fraction", "0.1", "--seed", "5")
    assert rc == 0, s["violations"]
    assert s["ok"] and s["violations"] == [] and s["epochs"] == 1
    assert s["groups"] > 0 and s["groups"] == s["answers"]["SUCCESS"] + s["answers"]["INVALID"]
    assert s["answers"]["INVALID"] == s["dma"].get("invalid", 0) > 0
    assert s["dma"]["ok"] + s["dma"]["invalid"] == s["dma_total"]
    # one pass, sequential: every page not replaced by a bad DMA is touched, mapped, verified
    assert s["verified_pages"] == s["touched_pages"] == s["pages_mapped"] > 0
    assert s["fault_service_latency"]["count"] == s["groups"]
    _assert_quiet_daemon(live, capsys)


def test_vmm_nested_random_epochs_map_both_stages_and_stay_consistent(
    live: LiveDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, s = _vmm(
        live,
        capsys,
        "--nested",
        "--pattern",
        "random",
        "--pages",
        "32",
        "--duration",
        "0.6",
        "--concurrency",
        "16",
    )
    assert rc == 0, s["violations"]
    assert s["mode"] == "nested" and s["epochs"] >= 2
    assert s["s1_pages_mapped"] > 0 and s["pages_mapped"] >= s["s1_pages_mapped"]
    assert s["verified_pages"] == s["touched_pages"]
    _assert_quiet_daemon(live, capsys)


def test_vmm_binds_only_the_devices_it_is_told_with_their_pasids(
    live: LiveDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, s = _vmm(
        live,
        capsys,
        "--device",
        "0000:5b:00.0",
        "--device",
        "0000:3a:00.0",
        "--pasids",
        "3",
        "--pattern",
        "strided",
        "--pages",
        "16",
        "--bad-fraction",
        "0",
    )
    assert rc == 0, s["violations"]
    assert s["devices"] == ["0000:5b:00.0", "0000:3a:00.0"]
    assert s["targets"] == 1 + 4  # 5b has no PASID: RID only; 3a: RID + 3 PASIDs
    assert s["answers"]["INVALID"] == 0 and s["dma"] == {"ok": s["dma_total"]}


def test_vmm_refuses_a_device_that_is_not_there_with_exit_2(
    live: LiveDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = vmm_main(["--socket", live.path, "--device", "0000:ff:1f.7"])
    assert rc == 2
    assert "ENOENT" in capsys.readouterr().err


def _vmm_proc(live: LiveDaemon, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "iopf-vmm"), "--socket", live.path, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _wait_until_faulting(admin: SyncClient, rid: str) -> None:
    deadline = time.monotonic() + 10
    while (
        admin.status().counters.get("groups", 0) == 0
        or {d.rid: d.state for d in admin.devices()}[rid] != "bound"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.2)


def test_vmm_exits_1_when_a_device_is_removed_by_force_mid_run(live: LiveDaemon) -> None:
    rid = "0000:5a:00.0"
    proc = _vmm_proc(live, "--device", rid, "--duration", "3", "--json", "--pages", "64")
    try:
        with SyncClient(live.path, client_name="it-unplugger") as admin:
            _wait_until_faulting(admin, rid)
            assert admin.unplug(rid, force=True) is True  # not asked: pulled from under it
            out, err = proc.communicate(timeout=30)
            admin.plug(rid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    summary = json.loads(out)
    assert (
        not summary["ok"] and summary["dma"].get("removed", 0) + summary["dma"].get("ENODEV", 0) > 0
    )


def test_vmm_releases_a_device_on_device_request_answers_everything_and_exits_4(
    live: LiveDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    rid = "0000:5a:00.0"
    proc = _vmm_proc(
        live, "--device", rid, "--duration", "10", "--json", "--pages", "64", "--bad-fraction", "0"
    )
    try:
        with SyncClient(live.path, client_name="it-unplugger") as admin:
            _wait_until_faulting(admin, rid)
            forced_before = admin.status().counters["forced_unplugs"]
            forced = admin.unplug(rid, grace_s=60)  # returns once the VMM let go
            out, err = proc.communicate(timeout=30)
            states = {d.rid: d.state for d in admin.devices()}
            k = admin.status().counters
            admin.plug(rid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert forced is False and states[rid] == "removed"
    assert proc.returncode == 4, err
    assert b"Traceback" not in err
    assert (
        err.decode()
        .rstrip()
        .splitlines()[-1]
        .startswith(f"iopf-vmm: released {rid} on the daemon's device_request")
    )
    summary = json.loads(out)
    # It stopped early with every check holding: each DMA ended ok, every group
    # answered by the VMM itself, none left for the daemon.
    assert summary["ok"] and summary["violations"] == [] and summary["released"] == [rid]
    assert summary["dma"] == {"ok": summary["dma_total"]} and summary["dma_total"] > 0
    assert summary["groups"] == summary["answers"]["SUCCESS"] > 0
    assert k["forced_unplugs"] == forced_before
    _assert_quiet_daemon(live, capsys)


def test_vmm_surfaces_throttling_by_a_full_fault_queue(tmp_path: Path) -> None:
    daemon = LiveDaemon(str(tmp_path), config="[limits]\nmax_pending = 2\n")
    try:
        proc = subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "iopf-vmm"),
                "--socket",
                daemon.path,
                "--concurrency",
                "32",
                "--pages",
                "32",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        summary = json.loads(proc.stdout)
        with SyncClient(daemon.path) as admin:
            k = admin.status().counters
            pending = admin.pending()
    finally:
        assert daemon.stop() == 0
    # the daemon answered SUCCESS for the VMM while its queue was full, and said so
    # in the next fault event: the VMM counted what it was told
    assert 0 < summary["throttled"] <= k["throttled"]
    assert k["groups"] == k["responses"] + k["auto_responses"] + k["throttled"] + len(pending)
    # devices that kept meeting a full queue ran out of retries: the VMM says so, exit 1
    if summary["dma"].get("retry_limit"):
        assert proc.returncode == 1 and not summary["ok"]
    else:
        assert proc.returncode == 0


def test_interrupted_vmm_exits_130_and_the_daemon_releases_everything(
    live: LiveDaemon,
) -> None:
    proc = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "iopf-vmm"),
            "--socket",
            live.path,
            "--duration",
            "10",
            "--name",
            "it-interrupted",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with SyncClient(live.path, client_name="it-watcher") as admin:
            before = admin.status().counters["groups"]
            deadline = time.monotonic() + 10
            while admin.status().counters["groups"] < before + 50:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
            deadline = time.monotonic() + 5
            while any(d.state == "bound" for d in admin.devices()):
                assert time.monotonic() < deadline, "devices still bound after the VMM left"
                time.sleep(0.02)
            k = admin.status().counters
            pending = admin.pending()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "interrupted" in err
    assert pending == []
    assert k["groups"] == k["responses"] + k["auto_responses"] + k["throttled"]


def test_vmm_on_kernel_6_12_pages_through_an_identity_stage1_on_rids_only(tmp_path: Path) -> None:
    """6.12 has no fault-capable paging HWPT and no PASID attach: the VMM says so, uses a
    nested HWPT whose stage-1 maps guest RAM one to one, attaches RIDs only, and every
    check still holds."""
    daemon = LiveDaemon(str(tmp_path), config='kernel = "6.12"\n')
    try:
        runs = {}
        for mode_args in ((), ("--nested",)):
            proc = subprocess.run(
                [
                    os.path.join(os.path.dirname(sys.executable), "iopf-vmm"),
                    "--socket",
                    daemon.path,
                    "--pages",
                    "16",
                    "--pasids",
                    "2",
                    "--json",
                    *mode_args,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert proc.returncode == 0, proc.stderr
            runs[mode_args] = (json.loads(proc.stdout), proc.stderr)
        with SyncClient(daemon.path) as admin:
            k = admin.status().counters
            pending = admin.pending()
    finally:
        assert daemon.stop() == 0
    paging, paging_err = runs[()]
    nested, _ = runs[("--nested",)]
    assert paging["kernel"] == "6.12" and paging["mode"] == "identity-s1"
    assert "no fault-capable paging HWPT" in paging_err and "no PASID attach" in paging_err
    assert paging["targets"] == len(paging["devices"])  # RIDs only
    assert paging["ok"] and paging["verified_pages"] == paging["touched_pages"] > 0
    assert paging["s1_pages_mapped"] == 0 and paging["pages_mapped"] > 0
    assert nested["mode"] == "nested" and nested["ok"] and nested["s1_pages_mapped"] > 0
    assert pending == []
    assert k["groups"] == k["responses"] + k["auto_responses"] + k["throttled"]


def test_vmm_spawn_daemon_runs_against_a_private_daemon_and_stops_it(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--spawn-daemon: a daemon of the VMM's own (here on a given socket, playing 6.12),
    ready before the VMM connects, stopped cleanly (exit 0, socket removed) at the end."""
    sock = str(tmp_path / "private.sock")
    rc = vmm_main(
        ["--spawn-daemon", "--daemon-kernel", "6.12", "--socket", sock, "--pages", "8", "--json"]
    )
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0 and summary["ok"] and summary["kernel"] == "6.12"
    assert not os.path.exists(sock), "the spawned iopfd left its socket behind"


def test_vmm_daemon_kernel_without_spawn_daemon_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert vmm_main(["--daemon-kernel", "6.12"]) == 2
    assert "--daemon-kernel needs --spawn-daemon" in capsys.readouterr().err


def test_vmm_setup_of_many_pasids_is_pipelined_and_shows_progress(
    live: LiveDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    # A large --pasids used to sit silent in set-up, one round trip per PASID.
    rc = vmm_main(
        [
            "--socket",
            live.path,
            "--json",
            "--progress",
            "--device",
            "0000:3a:00.0",
            "--pasids",
            "600",
            "--pages",
            "1",
            "--duration",
            "0.2",
            "--bad-fraction",
            "0",
        ]
    )
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert rc == 0, summary["violations"]
    assert summary["targets"] == 601
    setup_lines = [ln for ln in captured.err.splitlines() if ln.startswith("[setup]")]
    assert setup_lines[-1].endswith("PASIDs attached 600/600")
    assert len(setup_lines) == 3  # batches of 256: 256, 512, 600
