"""ops/install-criu.sh --package / --from: CRIU built once, packed, installed elsewhere.

Real: the cached CRIU build the script made on this machine is packed, then
installed into a scratch prefix after `criu check` passes; packages for another
architecture or with a changed binary are refused before anything is installed.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "ops" / "install-criu.sh"
CACHE = Path(os.environ.get("FERRY_CRIU_CACHE", "/var/cache/ferry/criu"))
VERSION = "4.1.1"


def arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def run(*args: str, prefix: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"FERRY_CRIU_PREFIX": str(prefix)} if prefix else {})}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need(os.geteuid() == 0, "install-criu.sh needs root")
    need((CACHE / f"criu-{VERSION}/criu/criu").exists(), f"no cached CRIU build in {CACHE}")
    out = tmp_path_factory.mktemp("pkg")
    res = run("--package", str(out))
    assert res.returncode == 0, res.stderr
    tarball = out / f"criu-{VERSION}-{arch()}.tar.gz"
    assert tarball.exists() and f"--from criu-{VERSION}-{arch()}.tar.gz" in res.stderr
    return tarball


def test_the_package_holds_criu_its_checksum_and_arch(package: Path) -> None:
    with tarfile.open(package) as t:
        names = set(t.getnames())
        meta = t.extractfile(f"criu-{VERSION}-{arch()}/FERRY-CRIU")
        assert meta is not None
        text = meta.read().decode()
    base = f"criu-{VERSION}-{arch()}"
    assert names == {base, f"{base}/criu", f"{base}/FERRY-CRIU", f"{base}/SHA256SUMS"}
    assert f"arch={arch()}\n" in text and f"version={VERSION}\n" in text


def test_from_installs_after_criu_check(package: Path, tmp_path: Path) -> None:
    res = run("--from", str(package), prefix=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "criu check passes" in res.stderr
    criu = tmp_path / "sbin" / "criu"
    assert subprocess.run([str(criu), "check"], capture_output=True).returncode == 0
    again = run("--from", str(package), prefix=tmp_path)
    assert again.returncode == 0 and "keeping" in again.stderr  # Ansible: changed=0


def repack(package: Path, tmp: Path, name: str, corrupt: bool = False) -> Path:
    src = tmp / "src"
    with tarfile.open(package) as t:
        t.extractall(src, filter="data")
    (inner,) = src.iterdir()
    if corrupt:
        with open(inner / "criu", "ab") as f:
            f.write(b"\0")
    out = tmp / f"{name}.tar.gz"
    with tarfile.open(out, "w:gz") as t:
        t.add(inner, arcname=name)
    return out


def test_from_refuses_another_arch_and_a_changed_binary(package: Path, tmp_path: Path) -> None:
    other = repack(package, tmp_path / "a", f"criu-{VERSION}-riscv64")
    res = run("--from", str(other), prefix=tmp_path / "p1")
    assert res.returncode == 2 and f"package for {arch()}" in res.stderr
    assert not (tmp_path / "p1").exists()
    bad = repack(package, tmp_path / "b", f"criu-{VERSION}-{arch()}", corrupt=True)
    res = run("--from", str(bad), prefix=tmp_path / "p2")
    assert res.returncode == 2 and "SHA256SUMS" in res.stderr
    assert not (tmp_path / "p2").exists()
    missing = run("--from", str(tmp_path / "nothing.tar.gz"))
    assert missing.returncode == 2 and "no package at" in missing.stderr
