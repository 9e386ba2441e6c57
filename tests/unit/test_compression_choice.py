"""When the data plane compresses, and when a dump streams its pages instead: the pure
rules, over tables of links and data."""

from __future__ import annotations

import pytest

from tasks.core.machine import Migration
from tasks.node.dataplane import link_bps
from workers.dataplane import transfer
from workers.dataplane.transfer import worth_compressing

MBIT = 1e6 / 8


@pytest.mark.parametrize(
    ("link_bps", "speed_bps", "ratio", "compress"),
    [
        (100 * MBIT, 800e6, 0.3, True),  # a Pi link, memory that shrinks
        (100 * MBIT, 800e6, 0.79, True),  # shrinks just enough
        (100 * MBIT, 800e6, 0.85, False),  # barely shrinks: not worth the CPU
        (100 * MBIT, 800e6, 1.0, False),  # random bytes
        (1000 * MBIT, 300e6, 0.3, True),  # a Pi 4 on gigabit: the CPU keeps up
        (1000 * MBIT, 150e6, 0.3, False),  # a slow CPU on gigabit: compressing is the bottleneck
        (10_000 * MBIT, 1.2e9, 0.1, False),  # 10 Gbit/s: the link outruns the compressor
        (100 * MBIT, 15.7e6, 0.1, True),  # the CPU only just keeps up (0.8 of the link)
        (100 * MBIT, 15.0e6, 0.1, False),  # ... and just does not
    ],
)
def test_compress_only_when_it_is_at_least_20_percent_faster(
    link_bps: float, speed_bps: float, ratio: float, compress: bool
) -> None:
    assert worth_compressing(link_bps, speed_bps, ratio) is compress


@pytest.mark.parametrize(
    ("mode", "compression", "host", "rate_bps", "streams"),
    [
        ("on", "auto", "10.0.0.2", 100 * MBIT, True),  # asked for
        ("off", "auto", "127.0.0.1", None, False),  # refused
        ("auto", "auto", "127.0.0.1", 100 * MBIT, True),  # loopback never compresses
        ("auto", "auto", "10.0.0.2", None, True),  # no rate known: files would not compress
        ("auto", "none", "10.0.0.2", 100 * MBIT, True),  # compression off: nothing to lose
        ("auto", "auto", "10.0.0.2", 100 * MBIT, False),  # a Pi link: files may halve the wire
        ("auto", "auto", "10.0.0.2", 1000 * MBIT, False),  # gigabit: the CPU still keeps up
        ("auto", "auto", "10.0.0.2", 10_000 * MBIT, True),  # 10 Gbit/s: it does not
    ],
)
def test_pages_stream_unless_compressed_files_could_be_faster(
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    compression: str,
    host: str,
    rate_bps: float | None,
    streams: bool,
) -> None:
    monkeypatch.setattr(transfer, "compressor_bps", lambda: 400e6)
    assert transfer.stream_pages(mode, compression, host, rate_bps) is streams


@pytest.mark.parametrize(
    ("passes", "limits", "expected"),
    [
        ((), {"link_bps": 12.5e6}, 12.5e6),  # cold: the configured link
        ((), {}, None),  # nothing known
        # a pass measured the link: that beats the configuration
        (
            (
                {
                    "iteration": 1,
                    "pages_total": 10,
                    "pages_written": 10,
                    "pages_unchanged": 0,
                    "bytes_sent": 50_000_000,
                    "seconds": 5.0,
                    "freeze_ms": 40.0,
                    "dirty_rate_bps": 0.0,
                },
            ),
            {"link_bps": 125e6},
            10e6,
        ),
    ],
)
def test_the_link_a_send_compresses_for(
    passes: tuple, limits: dict, expected: float | None
) -> None:
    m = Migration(
        id="m-0123456789ab", container="web", src="a", dst="b", passes=passes, limits=limits
    )
    assert link_bps(m) == expected
