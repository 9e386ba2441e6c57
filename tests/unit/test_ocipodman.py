"""What makes a Podman container unmovable, decided from ``podman container inspect`` alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from workers.errors import BadRequest
from workers.runtimes import ocipodman
from workers.runtimes.podmancli import Podman

IMAGE = "ab" * 32
OK: dict[str, Any] = {
    "State": {"Running": True, "Status": "running"},
    "Config": {"Tty": False},
    "Mounts": [{"Type": "volume", "Name": "data", "Destination": "/data"}],
    "HostConfig": {"Devices": []},
    "OCIRuntime": "runc",
    "Image": IMAGE,
    "ImageName": "localhost/web:1",
}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"State": {"Running": False, "Status": "exited"}}, "is not running (it is exited)"),
        ({"Config": {"Tty": True}}, "has a terminal"),
        (
            {"Mounts": [{"Type": "bind", "Source": "/srv/x", "Destination": "/x"}]},
            "bind-mounts host dir /srv/x on /x",
        ),
        ({"HostConfig": {"Devices": [{"PathOnHost": "/dev/fuse"}]}}, "host device /dev/fuse"),
    ],
)
def test_what_cannot_be_checkpointed_says_why(change: dict[str, Any], why: str) -> None:
    got = ocipodman.refusal("web", {**OK, **change})
    assert got is not None and why in got


def test_a_named_volume_moves_with_it() -> None:
    assert ocipodman.refusal("web", OK) is None


@dataclass(frozen=True)
class Store(Podman):
    """A Podman whose answers are given: the edge, not the decision."""

    images: tuple[str, ...] = ()

    def installed(self) -> bool:
        return True

    def inspect(self, name: str) -> dict[str, Any] | None:
        return OK if name == "web" else None

    def has_image(self, image_id: str) -> bool:
        return image_id in self.images


def test_an_image_gone_from_the_store_is_refused() -> None:
    with pytest.raises(BadRequest, match=r"image of podman container web \(localhost/web:1\)"):
        ocipodman.check_adoptable(Store(), "web")
    assert ocipodman.adopted(Store(images=(IMAGE,)), "web")["image"] == IMAGE


def test_an_unknown_container_is_refused() -> None:
    with pytest.raises(BadRequest, match="no container named 'db'"):
        ocipodman.check_adoptable(Store(images=(IMAGE,)), "db")


def test_the_image_is_carried_only_where_missing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert ocipodman.carry_image(Store(), IMAGE, tmp_path, [f"sha256:{IMAGE}"]) == 0
    assert not (tmp_path / ocipodman.IMAGE).exists()
