"""When the data plane compresses, and when a dump streams its pages instead: the pure
rules, over tables of links and data."""

from __future__ import annotations

import pytest

from tasks.core.migration import Migration
from tasks.core.options import Options
from tasks.core.transport import Route, stream_pages, tail_pages, worth_compressing
from tasks.node.dataplane import link_bps

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
    ("mode", "compression", "loopback", "rate_bps", "streams"),
    [
        ("on", "auto", False, 100 * MBIT, True),  # asked for
        ("off", "auto", True, None, False),  # refused
        ("auto", "auto", True, 100 * MBIT, True),  # loopback never compresses
        ("auto", "auto", False, None, True),  # no rate known: files would not compress
        ("auto", "none", False, 100 * MBIT, True),  # compression off: nothing to lose
        ("auto", "auto", False, 100 * MBIT, False),  # a Pi link: files may halve the wire
        ("auto", "auto", False, 1000 * MBIT, False),  # gigabit: the CPU still keeps up
        ("auto", "auto", False, 10_000 * MBIT, True),  # 10 Gbit/s: it does not
    ],
)
def test_pages_stream_unless_compressed_files_could_be_faster(
    mode: str, compression: str, loopback: bool, rate_bps: float | None, streams: bool
) -> None:
    way = Route(loopback, rate_bps, compress_bps=400e6)
    assert stream_pages(mode, compression, way) is streams


@pytest.mark.parametrize(
    ("compression", "loopback", "rate_bps", "zstd", "tails"),
    [
        ("auto", True, None, True, True),  # loopback: files travel plain anyway
        ("auto", False, None, True, True),  # no rate known: plain too
        ("none", False, 100 * MBIT, True, True),  # compression off
        ("auto", False, 100 * MBIT, False, True),  # no zstd here: plain
        ("auto", False, 100 * MBIT, True, False),  # a Pi link: auto may compress the files
        ("zstd", True, None, True, False),  # zstd asked for: never the plain tail
    ],
)
def test_the_pages_image_goes_out_as_written_only_where_files_travel_plain(
    compression: str, loopback: bool, rate_bps: float | None, zstd: bool, tails: bool
) -> None:
    assert tail_pages(compression, Route(loopback, rate_bps, 400e6, zstd)) is tails


def test_without_zstd_or_a_measured_speed_nothing_compresses() -> None:
    pi_link = Route(False, 100 * MBIT, compress_bps=400e6)
    assert not stream_pages("auto", "auto", pi_link)
    assert stream_pages("auto", "auto", Route(False, 100 * MBIT, compress_bps=400e6, zstd=False))
    assert stream_pages("auto", "auto", Route(False, 100 * MBIT, compress_bps=None))


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
        id="m-0123456789ab",
        container="web",
        src="a",
        dst="b",
        passes=passes,
        options=Options(**limits),
    )
    assert link_bps(m) == expected
