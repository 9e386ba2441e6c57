"""The downtime split: its parts add up to the whole, each in its own column."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tasks.core.migration import Migration
from tasks.core.pauses import Pause, stalled
from tasks.core.summary import downtime, final_pause, sent

M = Migration(id="m-0123456789ab", container="web", src="a", dst="b")


def test_nothing_until_the_container_was_restored() -> None:
    assert downtime(M) is None


@pytest.mark.parametrize(
    "results,parts",
    [
        # cold: CRIU's freeze, the wire, the restore, and what is left
        (
            {
                "dump": {"freeze_start": 100.0, "frozen_ms": 40.0, "freezing_ms": 2.0},
                "transfer": {"wall_ms": 100.0},
                "restore": {"end": 100.2, "wall_ms": 50.0},
            },
            {
                "criu_freeze_ms": 42.0,
                "delta_ms": 0.0,
                "wire_ms": 100.0,
                "fsync_ms": 0.0,
                "rebuild_ms": 0.0,
                "restore_ms": 50.0,
                "overhead_ms": 8.0,
            },
        ),
        # delta: finding the blocks and rebuilding them are parts of their own
        (
            {
                "dump": {"freeze_start": 100.0, "frozen_ms": 40.0, "freezing_ms": 0.0},
                "transfer": {"wall_ms": 20.0, "delta_ms": 60.0},
                "restore": {"end": 100.3, "wall_ms": 170.0, "rebuild_ms": 120.0},
            },
            {
                "criu_freeze_ms": 40.0,
                "delta_ms": 60.0,
                "wire_ms": 20.0,
                "fsync_ms": 0.0,
                "rebuild_ms": 120.0,
                "restore_ms": 50.0,
                "overhead_ms": 10.0,
            },
        ),
        # sync dirs: the final rsync pass and stopping the daemons are one part
        (
            {
                "dump": {"freeze_start": 100.0, "frozen_ms": 40.0, "freezing_ms": 0.0},
                "transfer": {"wall_ms": 20.0},
                "final_sync": {"wall_ms": 70.0},
                "restore": {"end": 100.2, "wall_ms": 65.0, "sync_stop_ms": 15.0},
            },
            {
                "criu_freeze_ms": 40.0,
                "delta_ms": 0.0,
                "wire_ms": 20.0,
                "fsync_ms": 85.0,
                "rebuild_ms": 0.0,
                "restore_ms": 50.0,
                "overhead_ms": 5.0,
            },
        ),
        # pages streamed to the destination's page server: CRIU's page writing is wire time
        (
            {
                "dump": {
                    "freeze_start": 100.0,
                    "frozen_ms": 90.0,
                    "freezing_ms": 2.0,
                    "memwrite_ms": 60.0,
                    "pages": {"bytes": 1 << 26, "blake3": "0" * 64, "wall_ms": 58.0},
                },
                "transfer": {"wall_ms": 10.0},
                "restore": {"end": 100.2, "wall_ms": 50.0},
            },
            {
                "criu_freeze_ms": 32.0,
                "delta_ms": 0.0,
                "wire_ms": 70.0,
                "fsync_ms": 0.0,
                "rebuild_ms": 0.0,
                "restore_ms": 50.0,
                "overhead_ms": 48.0,
            },
        ),
        # the pages image sent as CRIU wrote it: its rest after the dump is the transfer's
        (
            {
                "dump": {"freeze_start": 100.0, "frozen_ms": 90.0, "freezing_ms": 2.0},
                "transfer": {"wall_ms": 40.0, "tail": {"bytes": 1 << 26, "finish_ms": 30.0}},
                "restore": {"end": 100.2, "wall_ms": 50.0},
            },
            {
                "criu_freeze_ms": 92.0,
                "delta_ms": 0.0,
                "wire_ms": 40.0,
                "fsync_ms": 0.0,
                "rebuild_ms": 0.0,
                "restore_ms": 50.0,
                "overhead_ms": 18.0,
            },
        ),
    ],
)
def test_the_parts_add_up(results: dict, parts: dict) -> None:
    d = final_pause(Migration(**{**M.__dict__, "results": results}))
    assert d is not None
    assert {k: v for k, v in d.items() if k != "final_pause_ms"} == pytest.approx(
        {**parts, "first_faults_ms": 0.0}
    )
    assert sum(parts.values()) == pytest.approx(d["final_pause_ms"])


def test_a_postcopy_trees_first_waits_for_pages_are_part_of_the_final_pause() -> None:
    results = {
        "dump": {"freeze_start": 100.0, "frozen_ms": 90.0, "freezing_ms": 2.0},
        "restore": {"end": 100.2, "wall_ms": 50.0},
    }
    m = Migration(**{**M.__dict__, "results": results})
    m = replace(m, pauses=stalled((Pause("dump", 100.0, 200.0),), [(100.201, 80.0)]))
    d = final_pause(m)
    assert d is not None
    assert d["final_pause_ms"] == pytest.approx(281.0)
    assert d["first_faults_ms"] == pytest.approx(81.0)


def test_a_pages_image_sent_as_it_was_written_counts_in_the_final_bytes() -> None:
    results = {"transfer": {"bytes": 12_000, "tail": {"bytes": 1 << 26}}}
    assert sent(Migration(**{**M.__dict__, "results": results}))["bytes_final"] == 12_000 + (
        1 << 26
    )
