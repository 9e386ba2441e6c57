"""ferry resolve's decision: which copy lives, which are killed, and when it refuses."""

from __future__ import annotations

import pytest

from tasks.core.migration import Migration, State
from tasks.core.resolve import decide, keep_node
from workers.errors import BadRequest, NodeUnavailable

UP = {"a": True, "b": True}


@pytest.mark.parametrize(
    "keep,copies,alive,force,kill,note",
    [
        (
            "b",
            {"a": "frozen", "b": "running"},
            UP,
            False,
            ("a",),
            "kept the copy on b, killed the one on a",
        ),
        (
            "a",
            {"a": "frozen", "b": "running"},
            UP,
            False,
            ("b",),
            "kept the copy on a, killed the one on b",
        ),
        ("a", {"a": "frozen", "b": None}, UP, False, (), "kept the copy on a; b held none"),
        (
            "a",
            {"a": "frozen", "b": "running"},
            {"a": True},
            True,
            (),
            "kept the copy on a; b did not answer (--force",
        ),
        (
            "a",
            {"a": "running", "b": "frozen", "c": "running", "d": None},
            {**UP, "c": True, "d": True},
            False,
            ("b", "c"),
            "kept the copy on a, killed the one on b, c",
        ),
    ],
)
def test_what_is_kept_and_killed(keep, copies, alive, force, kill, note) -> None:  # type: ignore[no-untyped-def]
    s = decide("web", keep, copies, alive, force)
    assert (s.keep, s.kill) == (keep, kill)
    assert s.note.startswith(f"resolved by hand: {note}")


@pytest.mark.parametrize(
    "keep,copies,alive,error,words",
    [
        ("b", {"a": "frozen", "b": None}, UP, BadRequest, "b holds no live copy of web"),
        ("b", {"a": "frozen", "b": "exited"}, UP, BadRequest, r"\(exited\)"),
        ("a", {"a": "frozen", "b": "running"}, {"b": True}, NodeUnavailable, "a does not answer"),
        ("a", {"a": "frozen", "b": "running"}, {"a": True}, NodeUnavailable, "add --force"),
        ("a", {"a": "frozen", "b": None}, {"a": True}, NodeUnavailable, "b does not answer"),
    ],
)
def test_unsafe_requests_are_refused(keep, copies, alive, error, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=words):
        decide("web", keep, copies, alive)


@pytest.mark.parametrize(
    "state,keep,want",
    [
        (State.FAILED, "source", "a"),
        (State.FAILED, "destination", "b"),
        (State.FAILED, "both", "bad --keep 'both'"),
        (State.RUNNING, "source", "ferry cancel"),
        (State.DONE, "source", "is done"),
    ],
)
def test_a_migration_is_resolved_only_once_failed(state, keep, want) -> None:  # type: ignore[no-untyped-def]
    m = Migration("m-0123456789ab", "web", "a", "b", state=state)
    if state is State.FAILED and keep != "both":
        assert keep_node(m, keep) == want
    else:
        with pytest.raises(BadRequest, match=want):
            keep_node(m, keep)
