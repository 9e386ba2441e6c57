"""ops/ansible: the playbook parses, and its check-safe part really runs on localhost.

`--tags check-safe -e ferry_root=DIR` renders every config file and unit the
roles write (environment file, sshd drop-in, nftables rules, Redis settings,
systemd units) under DIR and touches nothing else. The rendered files are then
checked by the tools that will read them: ferry's settings, ``sshd -T``,
``nft -c`` and ``systemd-analyze verify`` (each where it is installed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.config.settings import Settings
from tests.conftest import need

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK_DIR = ROOT / "ops" / "ansible"
SECRETS = {
    "ferry_redis_password": "r" * 32,
    "ferry_secret": "s" * 64,
    "ferry_flower_auth": "admin:flower-password-1",
    "ferry_cluster_networks": ["10.0.0.0/24", "192.168.50.0/24"],
    "ferry_cluster_networks6": ["fd00:f::/64"],
}
INVENTORY = f"""
[head]
localhost ansible_connection=local ansible_python_interpreter={sys.executable} \
ferry_address=127.0.0.1
[compute]
localhost ferry_node=pi-01
"""


def ansible_playbook() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    exe = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    need(exe is not None, "ansible-core is not installed (it is in the test extra)")
    assert exe is not None
    return exe


def play(
    tmp: Path, *args: str, extra: dict[str, object] | None = None
) -> subprocess.CompletedProcess[str]:
    inventory = tmp / "inventory.ini"
    inventory.write_text(INVENTORY)
    env = {
        **os.environ,
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_CONFIG": str(PLAYBOOK_DIR / "ansible.cfg"),
    }
    argv = [ansible_playbook(), "-i", str(inventory), "site.yml", *args]
    if extra is not None:
        argv += ["-e", json.dumps(extra)]
    return subprocess.run(
        argv, cwd=PLAYBOOK_DIR, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ansible")
    root = tmp / "root"
    extra = {**SECRETS, "ferry_root": str(root), "ansible_become": False}
    first = play(tmp, "--tags", "check-safe", extra=extra)
    assert first.returncode == 0, first.stdout + first.stderr
    again = play(tmp, "--tags", "check-safe", extra=extra)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "changed=0" in again.stdout, f"a second run changed something:\n{again.stdout}"
    return root


def test_the_playbook_passes_syntax_check(tmp_path: Path) -> None:
    res = subprocess.run(
        [ansible_playbook(), "--syntax-check", "-i", "inventory.example.ini", "site.yml"],
        cwd=PLAYBOOK_DIR,
        capture_output=True,
        text=True,
        env={**os.environ, "ANSIBLE_HOME": str(tmp_path)},
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_it_refuses_to_run_without_the_secrets(tmp_path: Path) -> None:
    res = play(
        tmp_path,
        "--tags",
        "check-safe",
        extra={"ferry_root": str(tmp_path / "root"), "ansible_become": False},
    )
    assert res.returncode != 0
    assert "ferry_redis_password" in res.stdout
    assert not (tmp_path / "root").exists(), "nothing may be written before the check"


def test_the_environment_file_is_private_and_ferry_reads_it(rendered: Path) -> None:
    path = rendered / "etc/ferry/ferry.env"
    assert path.stat().st_mode & 0o777 == 0o600
    assert (rendered / "var/lib/ferry").stat().st_mode & 0o777 == 0o700
    env = dict(
        ln.split("=", 1) for ln in path.read_text().splitlines() if ln and not ln.startswith("#")
    )
    url = f"redis://ferry:{'r' * 32}@127.0.0.1:6379/0"
    s = Settings.from_env(env)
    assert (s.broker_url, s.redis_url, s.secret) == (url, url, "s" * 64)
    assert (s.listen_host, s.listen_port, s.advertise_host) == ("127.0.0.1", 7070, "127.0.0.1")
    assert s.sync_port_range == (7071, 7086)  # the rsync daemons: where the firewall admits
    assert env["FERRY_FLOWER_AUTH"] == "admin:flower-password-1"


def test_redis_gets_an_acl_user_and_no_default_user(rendered: Path) -> None:
    conf = (rendered / "etc/redis/ferry.conf").read_text()
    assert "user default off" in conf
    assert f"user ferry on >{'r' * 32} " in conf
    assert "bind 127.0.0.1 -::1 127.0.0.1" in conf
    assert (rendered / "etc/redis/ferry.conf").stat().st_mode & 0o777 == 0o640


def test_sshd_takes_keys_only_and_keeps_sftp(rendered: Path, tmp_path: Path) -> None:
    drop_in = rendered / "etc/ssh/sshd_config.d/10-ferry.conf"
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not (os.path.exists(sshd) and os.geteuid() == 0):
        pytest.skip("sshd -T needs openssh-server and root (the host keys)")
    # A main config like Debian's: the drop-ins first, then contrary settings.
    main = tmp_path / "sshd_config"
    main.write_text(
        f"Include {drop_in}\nPasswordAuthentication yes\nPermitRootLogin yes\n"
        "Subsystem sftp /usr/lib/openssh/sftp-server\n"
    )
    # sshd -T wants its privilege separation dir, which only a running ssh
    # service creates: give it one on a private /run that vanishes with it.
    script = 'mount -t tmpfs tmpfs /run && mkdir /run/sshd && exec "$0" -T -f "$1"'
    res = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, sshd, str(main)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    effective = dict(ln.split(" ", 1) for ln in res.stdout.splitlines() if " " in ln)
    assert effective["passwordauthentication"] == "no"
    assert effective["permitrootlogin"] == "no"
    assert effective["kbdinteractiveauthentication"] == "no"
    assert effective["authenticationmethods"] == "publickey"
    assert effective["subsystem"].startswith("sftp ")


def test_the_nft_rules_admit_only_the_cluster_network(rendered: Path) -> None:
    rules = (rendered / "etc/ferry/ferry.nft").read_text()
    assert "10.0.0.0/24, 192.168.50.0/24" in rules and "fd00:f::/64" in rules
    assert "tcp dport { 6379, 5555, 7070, 7071-7086 } counter drop" in rules
    nft = shutil.which("nft") or "/usr/sbin/nft"
    if not (os.path.exists(nft) and os.geteuid() == 0):
        pytest.skip("nft -c needs the nftables package and root")
    res = subprocess.run(
        [nft, "-c", "-f", str(rendered / "etc/ferry/ferry.nft")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr


def test_the_units_verify_cleanly(rendered: Path, tmp_path: Path) -> None:
    units = sorted((rendered / "etc/systemd/system").glob("*.service"))
    assert {u.name for u in units} == {
        "ferry-worker@.service",
        "ferry-coordinator.service",
        "ferry-flower.service",
        "ferry-firewall.service",
    }
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    ferry = Path(sys.executable).parent / "ferry"
    for unit in units:
        # verify checks that ExecStart exists: point it at this venv's ferry.
        text = unit.read_text().replace("/opt/ferry/venv/bin/ferry", str(ferry))
        copy = tmp_path / unit.name.replace("@.", "@pi-01.")
        copy.write_text(text)
        res = subprocess.run(
            [analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, check=False
        )
        problems = [
            ln
            for ln in (res.stdout + res.stderr).splitlines()
            if copy.name.split("@")[0] in ln or str(copy) in ln
        ]
        assert res.returncode == 0 and not problems, "\n".join(problems)


def test_the_kernel_is_checked_first_and_reported(tmp_path: Path) -> None:
    """The play's kernel check runs before the roles; on a kernel with another page size
    than the cluster's it stops the play before anything is written."""
    extra = {**SECRETS, "ferry_root": str(tmp_path / "root"), "ansible_become": False}
    ok = play(tmp_path, "--tags", "check-safe", extra=extra)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "CONFIG_CHECKPOINT_RESTORE" in ok.stdout
    assert ok.stdout.index("Check each compute node's kernel") < ok.stdout.index("TASK [common")
    other = {**extra, "ferry_root": str(tmp_path / "other"), "ferry_page_size": 65536}
    wrong = play(tmp_path, "--tags", "check-safe", extra=other)
    assert wrong.returncode != 0
    assert "wrong page size" in wrong.stdout
    assert not (tmp_path / "other").exists(), "nothing may be written before the kernel check"


KERNEL = ROOT / "ops" / "kernel"


def check_kernel(
    tmp: Path, config: str, page: int, board: str, *args: str
) -> subprocess.CompletedProcess[str]:
    (tmp / "config").write_text(config)
    (tmp / "os-release").write_text("ID=debian\n")
    env = {
        **os.environ,
        "FERRY_KERNEL_CONFIG": str(tmp / "config"),
        "FERRY_PAGE_SIZE": str(page),
        "FERRY_BOARD": board,
        "FERRY_OS_RELEASE": str(tmp / "os-release"),
    }
    return subprocess.run(
        ["bash", str(KERNEL / "check-kernel.sh"), *args], env=env, capture_output=True, text=True
    )


PI_OS = "CONFIG_CHECKPOINT_RESTORE=y\nCONFIG_NAMESPACES=y\n# CONFIG_USERFAULTFD is not set\nCONFIG_INET_DIAG=y\n"


def test_check_kernel_on_raspberry_pi_os_offers_the_two_routes(tmp_path: Path) -> None:
    res = check_kernel(
        tmp_path, PI_OS, 4096, "Raspberry Pi 4 Model B Rev 1.4", "--page-size", "4096"
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "missing  CONFIG_USERFAULTFD" in res.stdout and "missing  CONFIG_UNIX_DIAG" in res.stdout
    assert "ops/kernel/ferry.config" in res.stdout and "linux-raspi" in res.stdout
    strict = check_kernel(tmp_path, PI_OS, 4096, "Raspberry Pi 4 Model B Rev 1.4", "--strict")
    assert strict.returncode == 1
    pi5 = check_kernel(
        tmp_path, PI_OS, 16384, "Raspberry Pi 5 Model B Rev 1.0", "--page-size", "4096"
    )
    assert pi5.returncode == 1 and "kernel8.img" in pi5.stdout
    none = check_kernel(tmp_path, "# CONFIG_CHECKPOINT_RESTORE is not set\n", 4096, "")
    assert none.returncode == 1 and "cannot migrate anything" in none.stdout


def test_the_fragment_names_every_option_the_probe_reads() -> None:
    """ops/kernel/ferry.config turns on what workers.criu.kernel checks (but soft-dirty,
    which arm64 cannot have, and the page size, which pi5-4k.config sets)."""
    from workers.criu.kernel import OPTIONS

    text = (KERNEL / "ferry.config").read_text()
    wanted = set(OPTIONS) - {"MEM_SOFT_DIRTY", "ARM64_16K_PAGES", "PTE_MARKER_UFFD_WP"}
    assert {o for o in wanted if f"CONFIG_{o}=y" not in text} == set()
    assert "CONFIG_ARM64_4K_PAGES=y" in (KERNEL / "pi5-4k.config").read_text()


def test_nfs_exports_the_shared_dir_and_the_nodes_mount_it(tmp_path: Path) -> None:
    """ferry_nfs: the head's export (cluster networks only), the compute nodes' mount
    unit at the same path, and NFS's port behind the firewall."""
    root = tmp_path / "root"
    extra = {
        **SECRETS,
        "ferry_root": str(root),
        "ansible_become": False,
        "ferry_nfs": True,
        "ferry_shared_dir": "/srv/ferry-shared",
        "ferry_nfs_mount": True,  # localhost is the head too: mount it all the same here
    }
    res = play(tmp_path, "--tags", "check-safe", extra=extra)
    assert res.returncode == 0, res.stdout + res.stderr
    exports = (root / "etc/exports.d/ferry.exports").read_text().splitlines()[-1]
    assert exports == (
        "/srv/ferry-shared 10.0.0.0/24(rw,sync,no_subtree_check,no_root_squash) "
        "192.168.50.0/24(rw,sync,no_subtree_check,no_root_squash) "
        "fd00:f::/64(rw,sync,no_subtree_check,no_root_squash)"
    )
    unit = root / "etc/systemd/system/srv-ferry\\x2dshared.mount"
    text = unit.read_text()
    assert "What=127.0.0.1:/srv/ferry-shared" in text and "Where=/srv/ferry-shared" in text
    escaped = subprocess.run(
        ["systemd-escape", "--path", "--suffix=mount", "/srv/ferry-shared"],
        capture_output=True,
        text=True,
        check=False,
    )
    if escaped.returncode == 0:
        assert escaped.stdout.strip() == unit.name
    rules = (root / "etc/ferry/ferry.nft").read_text()
    assert "tcp dport { 6379, 5555, 7070, 7071-7086, 2049 } counter drop" in rules
    env = (root / "etc/ferry/ferry.env").read_text()
    assert "FERRY_SHARED_DIR=/srv/ferry-shared" in env
    bad = play(tmp_path, "--tags", "check-safe", extra={**extra, "ferry_shared_dir": ""})
    assert bad.returncode != 0 and "ferry_shared_dir" in bad.stdout
