"""The frames of a tail session (workers.dataplane.wire): what the receiver accepts."""

from __future__ import annotations

from typing import Any

import pytest

from workers.dataplane import wire
from workers.errors import BadRequest


@pytest.mark.parametrize(
    ("frame", "more"),
    [
        ({"type": "more", "size": 8 << 20}, 8 << 20),
        ({"type": "written"}, -1),  # the writer is done
        ({"type": "end", "blake3": "0" * 64}, None),
    ],
)
def test_a_tail_is_more_runs_a_written_and_an_end(frame: dict[str, Any], more: int | None) -> None:
    assert wire.parse_more(frame) == more


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "more", "size": 0},
        {"type": "more", "size": -5},
        {"type": "more", "size": True},
        {"type": "more", "size": "12"},
        {"type": "more", "size": wire.MAX_MORE + 1},
        {"type": "put"},
    ],
)
def test_a_bad_run_is_refused(frame: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        wire.parse_more(frame)


def test_the_end_names_the_digest_size_and_version() -> None:
    end = {"type": "end", "blake3": "ab" * 32, "size": 4096, "version": "803-2a-17"}
    assert wire.parse_tail_end(end) == ("ab" * 32, 4096, "803-2a-17")
    for bad in ({"size": -1}, {"size": 1.5}, {"version": 7}, {"blake3": "zz"}):
        with pytest.raises(BadRequest):
            wire.parse_tail_end({**end, **bad})


def test_a_tail_request_round_trips_and_needs_a_name() -> None:
    request = wire.TailRequest("tok", "m-0123456789ab", "final", "pages-1.img")
    assert wire.parse_tail(request.message()) == request
    with pytest.raises(BadRequest):
        wire.parse_tail({**request.message(), "name": None})
