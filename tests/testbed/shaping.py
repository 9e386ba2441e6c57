"""Traffic shaping of one network interface with tc: rate, delay and loss.

Each piece acts on one direction of a link, so a testbed shapes both ends of a
node's veth pair:

    rate    tbf on egress
    delay   netem on egress (under the tbf when there is one)
    loss    a classic-BPF filter on ingress that drops a random share of packets

Loss is a BPF filter rather than netem so that it works on kernels built
without ``sch_netem``; it drops on ingress because a drop on the sender's own
egress is reported to TCP as local congestion, and never looks like loss. Delay has no
such fallback: without netem it is not applied and a ``ShapingWarning`` says so.
A dropped packet is what the kernel handles as one: a TCP segment-offload burst
of up to 64 KiB counts as one packet, exactly as it would for netem.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import warnings
from dataclasses import dataclass
from typing import Any

from workers.errors import BadRequest, CapabilityError, PermanentError

_RATE = re.compile(r"(\d+(?:\.\d+)?)([kmgt]?)(bit|bps)", re.IGNORECASE)
_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
# tc's classic-BPF bytecode: A = random u32; drop (TC_ACT_SHOT) if A < threshold.
# 4294963256 is SKF_AD_OFF + SKF_AD_RANDOM, the "ld rand" extension.
_DROP_PROGRAM = "4,32 0 0 4294963256,53 0 1 {threshold},6 0 0 0,6 0 0 2"
_DROP_FILTER = ("ingress", "pref", "1", "handle", "1", "bpf", "da", "bytecode")


class ShapingWarning(UserWarning):
    """Part of a requested shape could not be applied on this kernel."""


@dataclass(frozen=True)
class Shape:
    """How one direction of a link behaves: rate (tc syntax, None = unshaped), delay, loss."""

    rate: str | None = None
    delay_ms: float = 0.0
    loss_pct: float = 0.0

    def __post_init__(self) -> None:
        if self.rate is not None:
            object.__setattr__(self, "rate", _format_rate(parse_rate(self.rate)))
        if not (math.isfinite(self.delay_ms) and self.delay_ms >= 0):
            raise BadRequest(f"bad delay {self.delay_ms!r} ms: use a number >= 0")
        if not 0 <= self.loss_pct <= 100:
            raise BadRequest(f"bad loss {self.loss_pct!r} %: use 0 to 100")

    def __str__(self) -> str:
        return (
            f"rate {self.rate or 'unshaped'}, delay {self.delay_ms:g} ms, loss {self.loss_pct:g} %"
        )


def parse_rate(rate: str) -> int:
    """Bytes per second of a tc rate such as ``100mbit``, ``1gbit`` or ``500kbps``."""
    match = _RATE.fullmatch(rate.strip())
    if not match:
        raise BadRequest(f"bad rate {rate!r}: use e.g. 1gbit, 100mbit or 500kbit")
    value = float(match[1]) * _SCALE[match[2].lower()]
    per_second = int(value if match[3].lower() == "bps" else value / 8)
    if per_second <= 0:
        raise BadRequest(f"bad rate {rate!r}: must be above zero")
    return per_second


def apply(dev: str, shape: Shape, netns: str | None = None) -> None:
    """Replace whatever shaping ``dev`` has with ``shape``."""
    clear(dev, netns)
    where = ["root"]
    if shape.rate is not None:
        per_second = parse_rate(shape.rate)
        # tbf passes at most `burst` bytes at once; with one MTU of burst a
        # 1gbit link reaches only ~2/3 of its rate, so allow 2 ms of traffic.
        burst = max(per_second // 500, 8192)
        tbf = f"root handle 1: tbf rate {per_second * 8}bit burst {burst} latency 20ms"
        _tc(netns, "qdisc", "add", "dev", dev, *tbf.split())
        where = ["parent", "1:1"]  # netem, if any, goes under the tbf
    if shape.delay_ms:
        _add_netem(dev, netns, where, shape.delay_ms)
    if shape.loss_pct:
        threshold = min(round(shape.loss_pct / 100 * 2**32), 2**32 - 1)
        _tc(netns, "qdisc", "add", "dev", dev, "clsact")
        program = _DROP_PROGRAM.format(threshold=threshold)
        _tc(netns, "filter", "add", "dev", dev, *_DROP_FILTER, program)


def clear(dev: str, netns: str | None = None) -> None:
    """Remove the shaping that ``apply`` installs on ``dev``."""
    for qdisc in _tc_json(netns, "qdisc", "show", "dev", dev):
        if qdisc.get("root") and qdisc["kind"] in ("tbf", "netem"):
            _tc(netns, "qdisc", "del", "dev", dev, "root")
        elif qdisc["kind"] == "clsact":
            _tc(netns, "qdisc", "del", "dev", dev, "clsact")


def read(dev: str, netns: str | None = None) -> Shape:
    """The shaping ``dev`` has now, as the kernel reports it."""
    rate, delay_ms, loss_pct = None, 0.0, 0.0
    for qdisc in _tc_json(netns, "qdisc", "show", "dev", dev):
        options = qdisc.get("options", {})
        if qdisc["kind"] == "tbf":
            rate = _format_rate(options["rate"])
        elif qdisc["kind"] == "netem" and "delay" in options:
            delay_ms = round(options["delay"]["delay"] * 1000, 3)
    for rule in _tc_json(netns, "filter", "show", "dev", dev, "ingress"):
        insns = rule.get("options", {}).get("bytecode", {}).get("insns", [])
        if len(insns) == 4 and insns[0]["k"] == 4294963256:
            loss_pct = round(insns[1]["k"] / 2**32 * 100, 4)
    return Shape(rate, delay_ms, loss_pct)


def _add_netem(dev: str, netns: str | None, where: list[str], delay_ms: float) -> None:
    try:
        netem = f"handle 10: netem delay {round(delay_ms * 1000)}us"
        _tc(netns, "qdisc", "add", "dev", dev, *where, *netem.split())
    except PermanentError as exc:
        if "qdisc kind is unknown" not in str(exc):
            raise
        warnings.warn(
            f"delay {delay_ms:g} ms not applied: this kernel has no netem "
            "(CONFIG_NET_SCH_NETEM); rate and loss still apply",
            ShapingWarning,
            stacklevel=3,
        )


def _format_rate(per_second: int) -> str:
    bits = per_second * 8
    for unit, scale in (("tbit", 10**12), ("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= scale and bits % scale == 0:
            return f"{bits // scale}{unit}"
    return f"{bits}bit"


def _tc(netns: str | None, *args: str) -> str:
    argv = ["tc", *(["-n", netns] if netns else []), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise CapabilityError(
            "`tc` not found: install iproute2 (apt-get install iproute2)"
        ) from exc
    if done.returncode != 0:
        raise PermanentError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


def _tc_json(netns: str | None, *args: str) -> list[dict[str, Any]]:
    out = _tc(netns, "-j", *args).strip()
    return [entry for entry in json.loads(out or "[]") if entry]
