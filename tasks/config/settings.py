"""ferry's settings: one frozen object, built once from env or a TOML file."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from tasks.core.retention import Retention
from workers.dirsync.dirs import parse_ports, parse_roots
from workers.errors import BadRequest

DEFAULT_STATE_DIR = Path("/var/lib/ferry") if os.geteuid() == 0 else Path.home() / ".ferry"


@dataclass(frozen=True)
class Settings:
    """Everything a ferry process needs to know, passed down explicitly.

    Empty URLs mean "the embedded Redis in ``state_dir``" (see tasks.config.broker).
    """

    state_dir: Path = DEFAULT_STATE_DIR
    broker_url: str = ""
    result_backend: str = ""
    redis_url: str = ""  # migration records and node registry (always Redis)
    secret: str = ""  # cluster secret: data-plane tokens; empty -> generated in state_dir
    shared_dir: Path | None = None  # container dirs on storage every node sees
    sync_roots: str = ""  # ':'-separated dirs below which containers may declare sync dirs
    sync_ports: str = ""  # FIRST-LAST: the rsync daemons' ports (for the firewall); empty: any
    listen_host: str = "127.0.0.1"  # data-plane listener address
    listen_port: int = 0  # 0: pick a free port
    advertise_host: str = ""  # address other nodes dial; default listen_host
    token_deadline_s: float = 3.0  # data plane: accept to a valid token, not reset by bytes
    listen_per_peer: int = 8  # data plane: connections without a token yet, per address
    heartbeat_s: float = 2.0
    log_level: str = "WARNING"  # the daemons' logs: INFO shows every task and Celery's banner
    node_ttl_s: float = 10.0
    visibility_timeout_s: int = 4 * 3600  # longer than the longest phase
    max_redeliveries: int = 2
    allow_pipe_max_size: bool = False  # may raise fs.pipe-max-size for post-copy
    criu_bin: str = "criu"
    bridge: str = ""  # the bridge containers with their own address (--net) plug into
    runtime: str = "criu"  # criu | oci | sim
    podman_store: str = ""  # oci: this node's own Podman store (root/, run/, tmp/); "": the host's
    runc_root: str = "/run/runc"  # oci: the runc --root of the containers `adopt runc:ID` names
    sim_page_size: int = 4096  # the sim's kernel page size: 16384 models a Pi 5's default kernel
    link_bps: float = 125e6  # assumed node-to-node bandwidth (bytes/s) until measured
    uplink_bps: float = 0.0  # the node's send budget, shared, frozen containers first (0: none)
    page_server: str = "auto"  # auto | on | off: cold dumps stream pages to the destination's CRIU
    compression: str = (
        "auto"  # auto | none | zstd: image files on the data plane (auto: when it pays)
    )
    freeze_overhead_ms: float = 150.0  # fixed cost of a cold freeze window (measured: x86 VM)
    progress_timeout_s: float = 150.0  # a step with no progress this long is sent again
    timeout_per_gib_s: float = 800.0  # a whole migration may take this per GiB ...
    timeout_min_s: float = 120.0  # ... and at least this
    timeout_action: str = "abort"  # abort | force (push a pre-copy to its final dump)
    main_concurrency: int = 4  # slots for a node's ordinary work (node.<name>)
    signing_key: str = (
        ""  # Celery message signing (tasks/messaging/signing.py): this node's key ...
    )
    signing_cert: str = ""  # ... its certificate ...
    signing_certs: str = ""  # ... and a folder of the cluster's trusted certificates (*.pem)
    retention_days: float = 30.0  # a finished migration's record, events and logs are kept ...
    retention_migrations: int = (
        10_000  # ... this long and at most this many (whichever keeps fewer)
    )
    failpoints: str = ""  # fault suite only: a file of armed failpoints (workers.failpoints)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from FERRY_* variables, over FERRY_CONFIG (TOML) if set."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        config = env.get("FERRY_CONFIG")
        if config:
            try:
                values.update(tomllib.loads(Path(config).read_text()))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise BadRequest(f"cannot read FERRY_CONFIG={config}: {exc}") from exc
        for f in fields(cls):
            key = "FERRY_" + f.name.upper()
            if key in env:
                values[f.name] = env[key]
        return cls.from_mapping(values)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise BadRequest(f"unknown setting(s): {', '.join(unknown)}")
        out: dict[str, Any] = {}
        for name, raw in values.items():
            default = getattr(cls(), name)
            out[name] = _coerce(name, raw, default)
        return cls(**out)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @property
    def retention(self) -> Retention:
        """The retention policy; BadRequest if a bound is not positive."""
        return Retention(self.retention_days, self.retention_migrations)

    @property
    def container_root(self) -> Path:
        return self.shared_dir or self.state_dir / "shared"

    @property
    def sync_root_paths(self) -> tuple[Path, ...]:
        return parse_roots(self.sync_roots)

    @property
    def sync_port_range(self) -> tuple[int, int] | None:
        return parse_ports(self.sync_ports)


def _coerce(name: str, raw: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            if isinstance(raw, str):
                if raw.lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                    raise ValueError(raw)
                return raw.lower() in {"1", "true", "yes", "on"}
            return bool(raw)
        if name == "sync_roots" and isinstance(raw, list):  # TOML: a list of paths
            return ":".join(str(p) for p in raw)
        if isinstance(default, Path) or name == "shared_dir":
            return Path(raw).expanduser() if raw not in ("", None) else None
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        return raw
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"bad value for {name}: {raw!r}") from exc
