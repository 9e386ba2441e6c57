"""The kernel probe: config parsing, cgroup and sock-diag decoding, the live checks
on this machine, and the probe's record as the core decodes it (old records too)."""

from __future__ import annotations

import doctest
import gzip
import struct
from pathlib import Path

import pytest

import workers.criu.kernel
from tests.unit.records import node_record
from workers.criu import kernel, sockdiag
from workers.records import Capabilities, Need

CONFIG = """\
CONFIG_CHECKPOINT_RESTORE=y
# CONFIG_USERFAULTFD is not set
CONFIG_UNIX_DIAG=m
CONFIG_SOMETHING_ELSE=y
"""


def test_doctests() -> None:
    assert doctest.testmod(workers.criu.kernel).failed == 0


def test_kernel_config_reads_gz_then_boot(tmp_path: Path) -> None:
    gz, boot = tmp_path / "config.gz", tmp_path / "config-6.6"
    gz.write_bytes(gzip.compress(CONFIG.encode()))
    boot.write_text("CONFIG_USERFAULTFD=y\n")
    got = kernel.kernel_config((gz, boot))
    assert got is not None
    assert (got["CHECKPOINT_RESTORE"], got["USERFAULTFD"], got["UNIX_DIAG"]) == ("y", "n", "m")
    assert "SOMETHING_ELSE" not in got
    assert kernel.kernel_config((tmp_path / "none", boot))["USERFAULTFD"] == "y"  # type: ignore[index]
    assert kernel.kernel_config((tmp_path / "none",)) is None


@pytest.mark.parametrize(
    ("mounts", "version"),
    [
        ("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0", "2"),
        (
            "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"
            "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0",
            "hybrid",
        ),
        ("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0", "1"),
        ("proc /proc proc rw 0 0", "?"),
    ],
)
def test_cgroup_version(mounts: str, version: str) -> None:
    assert kernel.cgroup_version(mounts) == version


@pytest.mark.parametrize(
    ("family", "size"), [("unix", 24), ("inet", 56), ("packet", 20), ("netlink", 20)]
)
def test_sock_diag_request_is_the_kernel_struct(family: str, size: int) -> None:
    req = sockdiag.request(family)
    length, kind, flags = struct.unpack_from("<IHH", req)
    assert (length, len(req), kind) == (16 + size, 16 + size, sockdiag.SOCK_DIAG_BY_FAMILY)
    assert flags == sockdiag.NLM_F_REQUEST | sockdiag.NLM_F_DUMP


def test_sock_diag_answers() -> None:
    done = struct.pack("<IHHII", 20, sockdiag.NLMSG_DONE, 0, 1, 0) + bytes(4)
    enoent = struct.pack("<IHHII", 36, sockdiag.NLMSG_ERROR, 0, 1, 0) + struct.pack("<i", -2)
    other = struct.pack("<IHHII", 40, 20, 0, 1, 0) + bytes(24)  # one socket's message
    assert sockdiag.answer(done) == 0
    assert sockdiag.answer(enoent + bytes(16)) == -2
    assert sockdiag.answer(other) is None
    assert sockdiag.answer(other + done) == 0


def test_live_checks_on_this_machine() -> None:
    """Every requirement is probed; the CI VM's kernel has CRIU's and the diag options."""
    found = kernel.checks(4 << 20)
    assert set(found) == set(Need)
    assert all(c.how for c in found.values())
    assert found[Need.CHECKPOINT_RESTORE].ok and found[Need.NAMESPACES].ok
    assert found[Need.UNIX_DIAG].ok, found[Need.UNIX_DIAG].how
    config = kernel.kernel_config()
    if config is not None:  # the live tries agree with the config where it says
        assert found[Need.USERFAULTFD].ok == (config["USERFAULTFD"] == "y")
        assert found[Need.SOFT_DIRTY].ok == (config["MEM_SOFT_DIRTY"] == "y")
    assert kernel.userland_bits() in (32, 64)


def test_record_round_trip_and_old_records() -> None:
    c = Capabilities(
        "aarch64",
        True,
        bits=64,
        page_size=16384,
        kernel="6.6.51+rpt-rpi-2712",
        lacks=(Need.USERFAULTFD, Need.UNIX_DIAG),
        facts={"cgroup": "2"},
    )
    rec = c.record()
    assert rec["lacks"] == ["userfaultfd", "unix_diag"] and rec["cgroup"] == "2"
    n = node_record({"name": "pi5", "probe": rec}).caps
    assert (n.bits, n.page_size, n.lacks) == (64, 16384, {Need.USERFAULTFD, Need.UNIX_DIAG})
    old = node_record({"name": "pi4", "probe": {"arch": "aarch64", "criu_ok": True}}).caps
    assert (old.bits, old.page_size, old.lacks) == (0, 0, frozenset())
    future = node_record(
        {"name": "pi4", "probe": {"arch": "aarch64", "lacks": ["warp_drive"]}}
    ).caps
    assert future.lacks == frozenset()  # a newer worker's piece this coordinator doesn't know
