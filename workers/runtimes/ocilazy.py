"""Post-copy for runc containers: runc's lazy dump on the source, CRIU's lazy-pages daemon here.

The source runs ``runc checkpoint --lazy-pages --page-server ADDR:PORT
--status-fd FD``: its CRIU freezes the container, dumps all but its pages and
writes one byte to FD when its page server waits on PORT. CRIU 4.1's RPC
(cr-service.c) drops the address runc passes when lazy pages are on, so that
server would listen on every address of the node; the CRIU config file the
bundle names (``org.criu.config``, :mod:`workers.runtimes.ocibundle`) binds it
to loopback, behind the data plane's token (:mod:`workers.dataplane.lazylink`).
The destination starts ``criu lazy-pages`` on that admitted connection and
``runc restore --lazy-pages``: the container runs at once and each page it
touches comes over the network. When the last page has gone the source's dump
ends and runc removes the container there. The probe is the criu runtime's
(CRIU's own lazy round trip on this kernel); runc adds nothing it needs."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

from workers.criu.adapter import Criu
from workers.criu.lazydump import PORT_FILE, seized_at
from workers.criu.log import explain
from workers.criu.probe import capabilities as criu_capabilities
from workers.errors import CapabilityError, CriuError
from workers.records import Capabilities
from workers.runtimes.ocibundle import CRIU_CONF, lazy_on_loopback


def capabilities(state_dir: Path, criu: Criu, runc: str, allow_pipe_max_size: bool) -> Capabilities:
    """The criu probe (with its lazy round trip and page server), as a node running
    ``runc`` has it: no dirty tracker."""
    caps = criu_capabilities(state_dir, criu, allow_pipe_max_size)
    caps = replace(caps, tracker="", facts={**caps.facts, "runc": runc})
    if shutil.which(runc) is None:
        why = f"{runc} is not installed (apt-get install runc)"
        return replace(
            caps,
            criu_ok=False,
            criu_reason=why,
            lazy_pages=False,
            lazy_pages_reason=why,
            page_server=False,
        )
    return caps


def check_bundle(name: str, bundle: Path) -> None:
    """Refuse post-copy of ``name`` unless its bundle keeps runc's lazy page server on
    loopback (:func:`workers.runtimes.ocibundle.lazy_on_loopback`)."""
    if not lazy_on_loopback(bundle):
        raise CapabilityError(
            f"post-copy of {name} refused: its bundle has no {CRIU_CONF} keeping CRIU's "
            "page server on loopback, so it would serve the container's memory on every "
            "address; move it cold or with delta"
        )


def start_dump(
    runc: list[str],
    name: str,
    images: Path,
    address: str,
    port: int,
    parent: Path | None,
    timeout_s: float = 60,
) -> float:
    """Start runc's lazy dump of ``name`` into ``images``; return, when its page
    server waits on ``port``, the wall time the container froze at.

    The dump runs on (its own session, reaped by a thread) until every page has
    gone; :func:`workers.criu.lazydump.wait_served` watches it by its log.
    """
    images.mkdir(parents=True, exist_ok=True)
    argv = [*runc, "checkpoint", "--lazy-pages", "--page-server", f"{address}:{port}"]
    argv += ["--image-path", str(images), "--work-path", str(images)]
    if parent is not None:
        argv += ["--parent-path", os.path.relpath(parent, images)]
    ready, tell = os.pipe()
    started = time.time()
    try:
        try:
            with (images / "runc-checkpoint.out").open("wb") as out:
                proc = subprocess.Popen(
                    [*argv, "--status-fd", str(tell), name],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(tell,),
                )
        finally:
            os.close(tell)  # runc's copy is the writer now: EOF when it ends
        threading.Thread(target=proc.wait, daemon=True, name=f"runc-lazy-{name}").start()
        said = _wait_byte(ready, proc, timeout_s)
    finally:
        os.close(ready)
    log = images / "dump.log"
    if said is None:
        proc.kill()
        raise CriuError("lazy dump", 110, log, f"no page server after {timeout_s:.0f} s")
    if said != b"\0":
        out_text = (images / "runc-checkpoint.out").read_text(errors="replace").strip()
        errno, detail = explain(log) if log.exists() else (0, out_text[-300:])
        raise CriuError("lazy dump", errno, log, detail)
    (images / PORT_FILE).write_text(f"{port}\n")  # wait_served counts its bytes
    return seized_at(log.read_text(errors="replace"), started)


def _wait_byte(fd: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bytes | None:
    """The byte CRIU writes to the status fd (b"" if runc ended first); None on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 0.05)
        if readable:
            return os.read(fd, 1)
        if proc.poll() is not None:
            return b""
    return None
