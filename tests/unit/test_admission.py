"""Admission, the pure half of submitting a migration: a table of requests and verdicts."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tasks.core.admission import Defaults, MigrationRequest, admit
from tasks.core.nodes import NodeRecord
from tests.unit.records import node_record
from workers.errors import BadRequest, CapabilityError, UnknownContainer

MiB = 1 << 20


def node(name: str, **probe: Any) -> NodeRecord:
    return node_record(
        {
            "name": name,
            "runtime": "criu",
            "probe": {"arch": "aarch64", "criu_ok": True, "page_server": True, **probe},
            "containers": [{"name": "web", "memory_bytes": 64 * MiB, "sync": ["/srv/web"]}],
        }
    )


SRC, DST = node("pi1"), node("pi2", lazy_pages=True)


@pytest.mark.parametrize(
    ("request_", "src", "dst", "error"),
    [
        (MigrationRequest("web", "pi1"), SRC, SRC, BadRequest),  # already there
        (MigrationRequest("db", "pi2"), SRC, DST, UnknownContainer),  # not on the source
        (MigrationRequest("web", "pi2"), node("pi1", criu_ok=False), DST, CapabilityError),
        (MigrationRequest("web", "pi2", bandwidth_bps=math.nan), SRC, DST, BadRequest),
        (MigrationRequest("web", "pi2", bandwidth_bps=0), SRC, DST, BadRequest),
        (MigrationRequest("web", "pi2", compression="lz4"), SRC, DST, BadRequest),
        (MigrationRequest("web", "pi2", strategy="warm"), SRC, DST, BadRequest),
        (MigrationRequest("web", "pi2", strategy="postcopy"), SRC, DST, CapabilityError),
        (MigrationRequest("web", "pi2", max_iterations=0), SRC, DST, BadRequest),
        (MigrationRequest("web", "pi2", page_server="on", strategy="delta"), SRC, DST,
         CapabilityError),
    ],
)  # fmt: skip
def test_a_request_that_cannot_run_is_refused(
    request_: MigrationRequest, src: dict[str, Any], dst: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        admit(request_, src, dst, Defaults())


def test_what_an_admitted_migration_starts_with() -> None:
    a = admit(MigrationRequest("web", "pi2"), SRC, DST, Defaults(link_bps=10e9))
    assert a.strategy == "cold" and "auto:" in a.reason  # 64 MiB at 10 Gbit/s fits 300 ms
    assert a.sync == ("/srv/web",) and a.options.memory_bytes == 64 * MiB
    assert a.options.bandwidth_bps is None and a.options.link_bps == 10e9
    assert a.options.compression == "auto" and a.options.page_server == "auto"
    assert not a.options.lazy_ok  # the source has no lazy pages
    assert a.limits.max_iterations == 10 and a.limits.goal_unchanged == 0.70


def test_a_cap_below_the_link_is_the_rate_the_chooser_plans_with() -> None:
    fast = admit(MigrationRequest("web", "pi2"), SRC, DST, Defaults(link_bps=10e9))
    capped = admit(MigrationRequest("web", "pi2", bandwidth_bps=1e6), SRC, DST,
                   Defaults(link_bps=10e9))  # fmt: skip
    assert fast.strategy == "cold"  # 64 MiB at 10 Gbit/s fits 300 ms
    assert capped.strategy == "delta"  # at 1 MB/s it does not


def net_node(
    name: str, bridge: str = "br0", addresses: tuple[str, ...] = ("10.77.0.11/24",), **probe: Any
) -> NodeRecord:
    """A node whose ``web`` has its own address 10.77.0.50/24; its bridge on 10.77.0.0/24."""
    return node_record(
        {
            "name": name,
            "runtime": "criu",
            "probe": {"arch": "aarch64", "criu_ok": True, "page_server": True, **probe},
            "containers": [{"name": "web", "memory_bytes": 64 * MiB, "net": "10.77.0.50/24"}],
            "bridge": bridge,
            "bridge_addresses": list(addresses if bridge else ()),
        }
    )


@pytest.mark.parametrize(
    ("dst", "strategy", "why"),
    [
        (net_node("pi2", bridge=""), "cold", "pi2 has no bridge"),
        (
            net_node("pi2", addresses=("192.168.1.2/24",)),
            "cold",
            "not 10.77.0.0/24",
        ),
    ],
)
def test_a_container_with_its_own_address_goes_only_where_it_can_keep_it(
    dst: dict[str, Any], strategy: str, why: str
) -> None:
    src = net_node("pi1", lazy_pages=True, soft_dirty=True)
    with pytest.raises(CapabilityError, match=why):
        admit(MigrationRequest("web", "pi2", strategy=strategy), src, dst, Defaults())


def test_its_pages_stay_on_the_source_for_a_rollback_and_auto_may_pick_postcopy() -> None:
    src, dst = net_node("pi1", lazy_pages=True), net_node("pi2", lazy_pages=True)
    a = admit(MigrationRequest("web", "pi2"), src, dst, Defaults(link_bps=1e6))  # slow: not cold
    assert a.strategy.value == "postcopy" and a.options.lazy_ok, a.reason
    lazy = admit(MigrationRequest("web", "pi2", strategy="postcopy"), src, dst, Defaults())
    assert lazy.options.page_server == "off"  # a lazy dump's own page server serves its pages
    cold = admit(MigrationRequest("web", "pi2", strategy="cold"), src, dst, Defaults())
    assert cold.options.page_server == "off" and "own address" in cold.options.page_server_why
    with pytest.raises(CapabilityError, match="page_server=on"):
        admit(
            MigrationRequest("web", "pi2", strategy="cold", page_server="on"), src, dst, Defaults()
        )


def oci_node(name: str, engine: str, page_server: bool = False) -> NodeRecord:
    """An oci node (post-copy probed) holding ``web`` run by ``engine``."""
    labels = {"oci.rootfs": "/srv/rootfs"} if engine == "runc" else {"oci.engine": "podman"}
    return node_record(
        {
            "name": name,
            "runtime": "oci",
            "probe": {
                "arch": "x86_64",
                "criu_ok": True,
                "lazy_pages": True,
                "page_server": page_server,
            },
            "containers": [{"name": "web", "memory_bytes": 64 * MiB, "labels": labels}],
        }
    )


def test_a_runc_container_may_go_post_copy_and_a_podman_one_says_why_not() -> None:
    runc = admit(
        MigrationRequest("web", "o2", strategy="postcopy"),
        oci_node("o1", "runc"),
        oci_node("o2", "runc"),
        Defaults(),
    )
    assert runc.strategy.value == "postcopy" and runc.options.lazy_ok
    src, dst = oci_node("o1", "podman"), oci_node("o2", "podman")
    with pytest.raises(CapabilityError, match="Podman 4.3's checkpoint has no lazy pages"):
        admit(MigrationRequest("web", "o2", strategy="postcopy"), src, dst, Defaults())
    slow = admit(MigrationRequest("web", "o2"), src, dst, Defaults(link_bps=1e6))
    assert slow.strategy.value not in ("postcopy", "hybrid") and not slow.options.lazy_ok


def test_a_runc_container_may_stream_its_pages_and_a_podman_one_says_why_not() -> None:
    def node(name: str, engine: str) -> NodeRecord:
        return oci_node(name, engine, page_server=True)

    cold = MigrationRequest("web", "o2", strategy="cold")
    runc = admit(cold, node("o1", "runc"), node("o2", "runc"), Defaults())
    assert runc.options.page_server == "off"  # as measured: files are faster unless asked
    assert "unless page_server=on" in runc.options.page_server_why
    streamed = MigrationRequest("web", "o2", strategy="cold", page_server="on")
    runc = admit(streamed, node("o1", "runc"), node("o2", "runc"), Defaults())
    assert runc.options.page_server == "on"
    podman = admit(cold, node("o1", "podman"), node("o2", "podman"), Defaults())
    assert podman.options.page_server == "off"
    assert "writes its pages into its archive" in podman.options.page_server_why
    with pytest.raises(CapabilityError, match="page_server=on, but it is a Podman container"):
        admit(
            MigrationRequest("web", "o2", strategy="cold", page_server="on"),
            node("o1", "podman"),
            node("o2", "podman"),
            Defaults(),
        )
