"""runc's lazy page server stays on loopback only where the bundle says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.errors import CapabilityError
from workers.runtimes.ocibundle import CRIU_CONFIG, config, lazy_on_loopback, write_bundle
from workers.runtimes.ocilazy import check_bundle


def test_a_bundle_ferry_writes_binds_the_lazy_page_server_to_loopback(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    write_bundle(bundle, config("c1", tmp_path / "rootfs", ["sleep", "60"], None))
    cfg = json.loads((bundle / "config.json").read_text())
    assert cfg["annotations"][CRIU_CONFIG] == str(bundle / "criu.conf")
    assert (bundle / "criu.conf").read_text() == "address 127.0.0.1\n"
    assert lazy_on_loopback(bundle)
    check_bundle("c1", bundle)  # post-copy may go on


@pytest.mark.parametrize("spoil", ["no annotation", "no file", "another address", "no bundle"])
def test_post_copy_is_refused_where_the_page_server_would_listen_everywhere(
    tmp_path: Path, spoil: str
) -> None:
    bundle = tmp_path / "bundle"
    write_bundle(bundle, config("c1", tmp_path / "rootfs", ["sleep", "60"], None))
    if spoil == "no annotation":
        cfg = json.loads((bundle / "config.json").read_text())
        del cfg["annotations"][CRIU_CONFIG]
        (bundle / "config.json").write_text(json.dumps(cfg))
    elif spoil == "no file":
        (bundle / "criu.conf").unlink()
    elif spoil == "another address":
        (bundle / "criu.conf").write_text("address 0.0.0.0\n")
    else:
        bundle = tmp_path / "elsewhere"
    assert not lazy_on_loopback(bundle)
    with pytest.raises(CapabilityError, match="move it cold or with delta"):
        check_bundle("c1", bundle)
