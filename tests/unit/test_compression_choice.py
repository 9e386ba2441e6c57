"""When the data plane compresses: the pure rule, over a table of links and data."""

from __future__ import annotations

import pytest

from workers.transfer import worth_compressing

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
