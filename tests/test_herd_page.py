"""The herd page in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Five node processes (``herdrt serve --node``) with their HTTP ports, a little traffic, and the
page of one node open in the browser: it must draw all five up with every link, show a killed
node down within 5 s, and show it up again once it restarts. The page must fetch nothing but
from the node that served it.

Set ``HERDRT_SCREENSHOT_DIR`` to keep the screenshots (the README's come from here).
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from _herdtest import BUNDLED_NAMES, FiveServers
from herdrt.herd.client import HerdClient
from herdrt.observe.top import run_top
from herdrt.observe.view import herd_edges

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

NAMES = BUNDLED_NAMES
#: The node whose page the browser opens, and the node the test kills.
VIEWER, VICTIM = "Bona", "Jaquez"


class Traffic(threading.Thread):
    """Tells to ``echo`` and to keyed counters through every node, a few thousand a second, so the
    page has rates to show."""

    def __init__(self, config):
        super().__init__(daemon=True)
        self.config = config
        self.stop = threading.Event()

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        clients: dict[str, HerdClient] = {}
        i = 0
        while not self.stop.is_set():
            for name in NAMES:
                try:
                    if name not in clients:
                        clients[name] = await HerdClient(self.config, name).connect(1.0)
                    for _ in range(50):
                        i += 1
                        clients[name].tell("echo", i)
                        clients[name].tell(f"key-{i % 97}", 1, kind="counter")
                except (OSError, ConnectionError, TimeoutError):
                    stale = clients.pop(name, None)
                    if stale is not None:
                        await stale.close()
            await asyncio.sleep(0.05)
        for client in clients.values():
            await client.close()


@pytest.fixture
def page_herd(tmp_path):
    with FiveServers.running(tmp_path, http=True) as herd:
        yield herd


def _shoot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    keep = os.environ.get("HERDRT_SCREENSHOT_DIR")
    if keep:
        page.screenshot(path=str(Path(keep) / name), full_page=True)


def test_the_herd_page_shows_a_killed_node_down_within_5_s_and_back_up(page_herd, tmp_path):
    from playwright.sync_api import sync_playwright

    base = page_herd.url(VIEWER)
    traffic = Traffic(page_herd.config)
    traffic.start()
    try:
        # `herdrt top` on the same herd under the same traffic (its README screenshot comes from here)
        console = Console(record=True, width=104, file=io.StringIO())
        view = asyncio.run(run_top(page_herd.config, once=True, console=console))
        assert view["summary"]["nodes_up"] == len(NAMES) and view["summary"]["rate"] > 0
        assert all(name in console.export_text(clear=False) for name in NAMES)
        keep = os.environ.get("HERDRT_SCREENSHOT_DIR")
        if keep:  # without rich's web fonts: a screenshot that fetches nothing
            svg = re.sub(r"@font-face\s*\{.*?\}", "", console.export_svg(title="herdrt top"), flags=re.DOTALL)
            (Path(keep) / "herdrt-top.svg").write_text(svg)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                requests: list[str] = []
                page.on("request", lambda request: requests.append(request.url))
                page.goto(base)

                def node(name: str, state: str) -> str:
                    return f'#graph g.node[data-node="{name}"][data-state="{state}"]'

                for name in NAMES:
                    page.wait_for_selector(node(name, "up"), timeout=10_000)
                for a, b in herd_edges(page_herd.config):
                    page.wait_for_selector(f'#graph line[data-link="{a}-{b}"][data-state="up"]', timeout=10_000)
                # rates need two views; then the busiest actors and the ring are drawn
                page.wait_for_function(
                    "() => /[0-9.]+k? msg\\/s/.test(document.getElementById('summary').textContent)", timeout=10_000
                )
                page.wait_for_function("() => history.length >= 5", timeout=10_000)  # a rate chart to show
                assert page.locator("#ring path[data-share]").count() == len(NAMES)
                assert "echo" in page.locator("#actors").inner_text()
                _shoot(page, tmp_path, "herd-page.png")

                page_herd.kill(VICTIM)
                killed = time.monotonic()
                page.wait_for_selector(node(VICTIM, "down"), timeout=5_000)
                assert time.monotonic() - killed < 5.0
                for a, b in herd_edges(page_herd.config):
                    state = "down" if VICTIM in (a, b) else "up"
                    page.wait_for_selector(f'#graph line[data-link="{a}-{b}"][data-state="{state}"]', timeout=5_000)
                assert "DOWN" in page.locator(f'#nodes tr[data-node="{VICTIM}"]').inner_text()
                _shoot(page, tmp_path, "herd-page-node-down.png")

                page_herd.start(VICTIM)
                page.wait_for_selector(node(VICTIM, "up"), timeout=20_000)
                for a, b in herd_edges(page_herd.config):
                    page.wait_for_selector(f'#graph line[data-link="{a}-{b}"][data-state="up"]', timeout=10_000)

                outside = [url for url in requests if not url.startswith(base)]
                assert outside == [], f"the page fetched from elsewhere: {outside}"
                assert f"{base}events" in requests
            finally:
                browser.close()
    finally:
        traffic.stop.set()
        traffic.join(10)
