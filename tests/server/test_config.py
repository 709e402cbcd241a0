"""The TOML configuration: defaults, every key, and loud failures on mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from iopfd.server.config import DEFAULT_SOCKET, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "iopfd.toml"
    p.write_text(text)
    return p


def test_no_file_gives_the_documented_defaults() -> None:
    c = load_config(None)
    assert c.socket == DEFAULT_SOCKET == "/run/iopfd/iopfd.sock"
    assert c.socket_mode == 0o660
    assert c.admin_group is None
    assert c.log_format is None
    assert c.kernel == "6.18"
    lim = c.limits
    assert (
        lim.max_pending,
        lim.max_frame,
        lim.max_outbuf,
        lim.max_retries,
        lim.max_dma_inflight,
        lim.trace_buffer,
    ) == (4096, 1 << 20, 8 << 20, 8, 256, 1024)


def test_every_key_is_read(tmp_path: Path) -> None:
    c = load_config(
        write(
            tmp_path,
            """
socket = "/tmp/x.sock"
socket_mode = "0666"
admin_group = "wheel"
log_format = "json"
log_level = "debug"
kernel = "6.12"
topology_file = "topo.toml"
[limits]
max_pending = 3
max_frame = 65536
max_outbuf = 131072
max_retries = 2
max_dma_inflight = 4
max_objects = 10
trace_buffer = 5
""",
        )
    )
    assert c.socket == "/tmp/x.sock"
    assert c.socket_mode == 0o666
    assert (c.admin_group, c.log_format, c.log_level) == ("wheel", "json", "debug")
    assert c.kernel == "6.12"
    assert c.topology_file == tmp_path / "topo.toml"
    assert c.limits.max_pending == 3
    assert c.limits.trace_buffer == 5


def test_socket_mode_accepts_a_toml_octal_integer(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "socket_mode = 0o600\n")).socket_mode == 0o600


@pytest.mark.parametrize(
    "text",
    [
        "sokcet = '/x'\n",
        "[limits]\nmax_pendign = 3\n",
        "[limits]\nmax_pending = -1\n",
        "[limits]\nmax_pending = '3'\n",
        "socket_mode = '999'\n",
        "log_format = 'xml'\n",
        "topology_file = 'a.toml'\n[topology]\niommu = []\n",
        "this is not toml",
        "[limits]\nmax_frame = 4096\n",
        "[limits]\nmax_frame = 1048576\nmax_outbuf = 1048576\n",
        "kernel = '5.4'\n",
        "kernel = 6.1\n",
        "kernel = 612\n",
    ],
    ids=[
        "typo",
        "limit-typo",
        "negative",
        "string-int",
        "bad-mode",
        "bad-format",
        "two-topologies",
        "not-toml",
        "frame-below-64k",
        "outbuf-below-two-frames",
        "unknown-kernel",
        "unknown-kernel-number",
        "kernel-int",
    ],
)
def test_a_bad_config_is_a_clear_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"iopfd\.toml"):
        load_config(write(tmp_path, text))


def test_kernel_is_a_known_profile_quoted_or_as_a_toml_number(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "kernel = 6.12\n")).kernel == "6.12"
    assert load_config(write(tmp_path, "kernel = 6.18\n")).kernel == "6.18"
    with pytest.raises(ConfigError, match=r"kernel.*6\.12, 6\.18"):
        load_config(write(tmp_path, "kernel = '7.0'\n"))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "absent.toml")


def test_the_shipped_example_config_loads() -> None:
    c = load_config(REPO / "systemd" / "iopfd.toml")
    assert c.admin_group == "iopfd-admin"
    assert c.kernel == "6.18"


def test_the_largest_group_always_fits_one_fault_event() -> None:
    """Partial requests kept per device follow max_frame, so no fault event can ever
    exceed the frame size hello announced."""
    import msgpack

    from iopfd.server.main import partials_fitting

    rec = {
        "flags": 3,
        "dev_id": 0xFFFF_FFFF,
        "pasid": 0xF_FFFF,
        "grpid": 511,
        "perm": 15,
        "addr": 0xFFFF_FFFF_FFFF_F000,
        "length": 0,
    }
    for max_frame in (64 << 10, 100_000, 1 << 20, 64 << 20):
        records = partials_fitting(max_frame) + 1
        event = {
            "event": "fault",
            "seq": 0xFFFF_FFFF,
            "fault_id": 0xFFFF_FFFF,
            "cookie": 0xFFFF_FFFF,
            "faults": [rec] * records,
            "throttled": 0xFFFF_FFFF,
        }
        assert len(msgpack.packb(event)) <= max_frame
