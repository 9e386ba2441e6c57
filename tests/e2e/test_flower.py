"""Flower in a real browser: each migration phase is a task, and a running one shows its progress.

SIMULATED nodes (the sim runtime) run the migration: this tests what Flower
shows, not CRIU. Chromium is Debian's (``apt-get install chromium``), driven
by Playwright from PyPI (``pip install playwright``; no ``playwright
install``). Screenshots land in $FERRY_SCREENSHOTS, else a temp dir:
``FERRY_SCREENSHOTS=docs/screenshots`` refreshes the docs' pictures.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tasks.api.localcluster import LocalCluster
from tests.conftest import cluster_env, need
from tests.integration.helpers import free_port, wait_for

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# transfer and verify run inside the dump and restore tasks (the freeze window, no queue
# in between): their progress shows on those tasks
PHASES = ("prepare", "dump", "restore", "cleanup")


@pytest.fixture(scope="module")
def flower(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[tuple[LocalCluster, str, tuple[str, str]]]:
    """SIMULATED nodes f1 and f2, a coordinator, Flower with basic auth: (cluster, url, auth)."""
    need(Path(CHROMIUM).exists(), "chromium is not installed: apt-get install chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        need(False, "playwright is not installed: pip install playwright (no `playwright install`)")
    base = tmp_path_factory.mktemp("flower")
    c = LocalCluster(base, {**cluster_env(redis_url), "FERRY_RUNTIME": "sim"})
    auth = ("ferry", secrets.token_hex(8))
    port = free_port()
    try:
        c.start_coordinator()
        for n in ("f1", "f2"):
            c.start_node(n)
        c.start_flower(port, ":".join(auth))
        c.wait_ready(["f1", "f2"])
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(url + "/workers", auth) == 200, timeout=60, every=0.5)
        yield c, url, auth
    finally:
        c.stop()


def _get(url: str, auth: tuple[str, str]) -> int:
    token = b64encode(":".join(auth).encode()).decode()
    req = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return int(resp.status)
    except OSError:
        return 0


def _succeeded(url: str, auth: tuple[str, str], mid: str) -> bool:
    """Flower has heard that each phase's task of migration ``mid`` succeeded (its API)."""
    token = b64encode(":".join(auth).encode()).decode()
    req = urllib.request.Request(url + "/api/tasks", headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            tasks = json.load(resp)
    except (OSError, ValueError):
        return False
    done = {
        t.get("name")
        for t in tasks.values()
        if t.get("state") == "SUCCESS" and mid in str(t.get("args"))
    }
    return all(f"ferry.node.{phase}" in done for phase in PHASES)


def test_flower_shows_each_phase_and_a_running_transfer_s_progress(
    flower: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    c, url, (user, password) = flower
    client = c.client
    client.run("f1", ["counter"], name="flowerweb", labels={"sim.memory": str(1 << 20)})
    wait_for(lambda: any(k["name"] == "flowerweb" for k in client.containers()))
    # 1 MiB of sim memory (its images) at 100 kB/s: the transfer runs for about 10 s, long
    # enough to look at, even when a loaded machine slows the browser down
    m = client.migrate("flowerweb", "f2", strategy="cold", bandwidth_bps=100e3)
    shots = Path(os.environ.get("FERRY_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)

        def new_page() -> Any:  # a context of its own: Flower keeps the last search in storage
            return browser.new_context(
                http_credentials={"username": user, "password": password},
                viewport={"width": 1600, "height": 900},
            ).new_page()

        page = new_page()
        # (prepare and dump may take long on a loaded machine; the transfer then takes ~5 s)
        wait_for(lambda: client.status(m.id).phase.value == "transfer", timeout=120)
        page.goto(f"{url}/tasks?state=PROGRESS")
        row = page.locator("#tasks-table tbody tr", has_text="ferry.node.dump")
        row.wait_for(timeout=15_000)
        text = row.inner_text()
        assert "PROGRESS" in text and "transfer of flowerweb (f1 -> f2, cold)" in text, text
        assert m.id in text  # the args: (migration id, step)
        assert ".f1@" in text  # the node that runs it, in the second column
        page.screenshot(path=str(shots / "flower-tasks-progress.png"), full_page=True)
        row.locator("a[href*='/task/']").first.click()
        page.wait_for_selector("text=Task details")
        body = page.inner_text("#task-page")
        assert "ferry.node.dump" in body and "PROGRESS" in body and " MiB at " in body, body
        assert ", ETA " in body, body
        page.screenshot(path=str(shots / "flower-task.png"), full_page=True)

        assert client.status(m.id).state.value in ("running", "done")
        assert m.wait(timeout=60).state.value == "done"
        # the last events reach Flower
        wait_for(lambda: _succeeded(url, (user, password), m.id), timeout=15)
        page = new_page()
        page.goto(f"{url}/tasks")
        table = page.locator("#tasks-table tbody")
        for phase in PHASES:
            page.locator("#tasks-table tbody tr", has_text=f"ferry.node.{phase}").first.wait_for(
                timeout=15_000
            )
        shown = table.inner_text()
        assert m.id in shown and "SUCCESS" in shown and "ferry.control.start" in shown
        page.screenshot(path=str(shots / "flower-tasks.png"), full_page=True)
        browser.close()
    client.kill("flowerweb")
