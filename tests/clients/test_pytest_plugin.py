"""The ``iopfd`` pytest plugin, as a user meets it: a test file of their own, in a
scratch directory outside the repository, using only the plugin's fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clients.pytest_plugin import to_toml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

USER_TESTS = """
import pytest
import trio

from clients import Perm, ResponseCode

SMALL = {
    "iommu": [{"name": "dmar0", "segment": 0}],
    "function": [{"rid": "0000:10:00.0", "iommu": "dmar0", "ats": True, "pri": True,
                  "pri_capacity": 64, "pasid_bits": 8}],
}


def test_sync_client_sees_the_default_topology(iopfd_sync_client):
    assert "0000:3a:00.0" in {d.rid for d in iopfd_sync_client.devices()}


@pytest.mark.iopfd_options(topology=SMALL, kernel="6.12")
def test_marker_sets_topology_and_kernel(iopfd_sync_client):
    assert [d.rid for d in iopfd_sync_client.devices()] == ["0000:10:00.0"]
    assert iopfd_sync_client.hello_info.kernel == "6.12"


@pytest.mark.trio
async def test_trio_client_serves_a_fault(iopfd_client):
    c = iopfd_client
    dev = await c.bind("3a:00.0")
    ioas, fault_id = await c.ioas_alloc(), await c.fault_alloc()
    await c.attach(dev, await c.hwpt_alloc(dev, ioas, fault_id=fault_id))

    async def serve():
        async for group in c.fault_queue(fault_id):
            for addr in group.addresses:
                await c.ioas_map(ioas, addr, 4096, Perm.READ | Perm.WRITE)
            await c.answer(group, ResponseCode.SUCCESS)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        res = await c.dma(dev, 0x10_0000, 0x2000, Perm.WRITE)
        nursery.cancel_scope.cancel()
    assert res.status == "ok" and res.faults == 2


def test_factory_with_a_config_dict_and_a_topology_file(iopfd_factory, tmp_path):
    topo = tmp_path / "topo.toml"
    topo.write_text(TOPO_TOML)
    daemon = iopfd_factory(topology=topo, config={"limits": {"max_pending": 2}})
    with daemon.sync_client() as c:
        assert [d.rid for d in c.devices()] == ["0000:10:00.0"]
    daemon.check_exactly_once()


def test_a_failure_shows_the_daemon_log(iopfd_daemon):
    assert False, "deliberate"
"""


def test_a_users_test_file_passes_with_only_the_plugins_fixtures(tmp_path: Path) -> None:
    small = {
        "iommu": [{"name": "dmar0", "segment": 0}],
        "function": [
            {"rid": "0000:10:00.0", "iommu": "dmar0", "ats": True, "pri": True, "pri_capacity": 8}
        ],
    }
    (tmp_path / "test_my_vmm.py").write_text(USER_TESTS + f"\nTOPO_TOML = {to_toml(small)!r}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "IOPFD"))}
    proc = subprocess.run(
        # no conftest, no ini file, no -p: the plugin comes from its pytest11 entry point
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", "test_my_vmm.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout
    assert not tmp_path.is_relative_to(REPO)
    assert "4 passed" in out and "1 failed" in out, out + proc.stderr
    # the failing test's report carries the daemon's log
    failure = out[out.index("test_a_failure_shows_the_daemon_log") :]
    assert "iopfd log" in failure and '"event": "listening"' in failure or "hello" in failure, out


def test_to_toml_round_trips_a_topology() -> None:
    import tomllib

    data = {
        "kernel": "6.12",
        "limits": {"max_pending": 2},
        "topology": {
            "iommu": [{"name": "dmar0", "segment": 0, "nest": True}],
            "function": [{"rid": "0000:10:00.0", "iommu": "dmar0", "pasid_bits": 8}],
        },
    }
    assert tomllib.loads(to_toml(data)) == data
