"""The dashboard in a real browser: headless Debian Chromium driven by Playwright against a live
proxy (real models, real engine, loopback HTTP). It must see coverage move while a backfill
runs, pause it with the admin key, and see it stop."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.app import create_app
from proxy.demo import python_reference
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from tests.conftest import LiveServer, demo_settings, wait_for

N = 40
KEY = "dashboard-test-key"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
def live(tmp_path: Path, models: dict) -> Iterator[tuple[str, Runtime]]:
    settings = demo_settings(
        tmp_path / "data",
        # Slow enough that the browser sees several points before the sweep could finish.
        migration={"batch_size": 2, "max_docs_per_s": 3},
        server={"admin_key": KEY, "history_interval_s": 0.5},
    )
    rt = Runtime(settings, dict(models))
    ingest(rt, "old", python_reference()[:N], progress=False)
    start_migration(rt, progress=False)
    rt.state.set("paused", True)  # the browser starts it
    with LiveServer(create_app(rt)) as server:
        yield server.url, rt


def test_dashboard_is_self_contained(live: tuple[str, Runtime]) -> None:
    url, _ = live
    r = httpx.get(url + "/dashboard")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    # Nothing loaded from elsewhere: every src/href is relative to the proxy.
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", r.text)
    assert all(not re.match(r"^(https?:)?//", ref) for ref in refs), refs
    assert "fetch(" in r.text  # it reads the proxy's own endpoints


def test_history_records_coverage(live: tuple[str, Runtime]) -> None:
    url, _ = live
    first = httpx.get(url + "/migration/history").json()["samples"]
    assert first and first[-1]["coverage"] == 0.0 and first[-1]["documents"] == N
    later = httpx.get(url + "/migration/history", params={"since": first[-1]["t"]}).json()
    assert all(s["t"] > first[-1]["t"] for s in later["samples"])
    assert httpx.get(url + "/migration/history", params={"since": "soon"}).status_code == 422


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CROSSFADE_REQUIRE_BROWSER"),
    reason="Debian chromium not installed (`make test` installs it with apt-get)",
)
def test_dashboard_in_chromium_sees_backfill_and_pauses_it(
    live: tuple[str, Runtime], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, rt = live

    def with_vector() -> int:
        return httpx.get(url + "/migration").json()["indexes"]["new"]["with_vector"]

    def worker() -> dict:
        return httpx.get(url + "/migration").json()["worker"]

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url + "/dashboard?refresh_ms=400")
            expect(page.locator("#coverage")).to_have_text("0.00%", timeout=20_000)
            expect(page.locator("#mode")).to_have_text("fused")
            # the fusion in use and its weights at this coverage (no fit stored: the rule)
            expect(page.locator("#fusion")).to_contain_text("default rule")
            expect(page.locator("#fusion")).to_contain_text("new 1")
            expect(page.locator("#worker-state")).to_contain_text("paused")

            # A wrong key is refused and changes nothing.
            page.fill("#key", "not-the-key")
            page.click("#resume")
            expect(page.locator("#message")).to_contain_text("401", timeout=10_000)
            assert rt.state.get("paused") is True

            page.fill("#key", KEY)
            page.click("#resume")
            expect(page.locator("#worker-state")).to_contain_text("running", timeout=10_000)
            # Coverage moves on the page while the backfill runs, and the chart draws it.
            expect(page.locator("#coverage")).not_to_have_text("0.00%", timeout=60_000)
            seen = page.locator("#coverage").inner_text()
            expect(page.locator("#coverage")).not_to_have_text(seen, timeout=60_000)

            page.click("#pause")
            expect(page.locator("#worker-state")).to_contain_text("paused", timeout=10_000)
            # A batch already taken still lands (the page says so); after that, nothing moves.
            wait_for(lambda: not worker()["busy"], 60, "the batch in flight")
            expect(page.locator("#worker-state")).not_to_contain_text("finishing", timeout=10_000)
            stopped = with_vector()
            time.sleep(3.0)
            assert with_vector() == stopped < N
            expect(page.locator("#coverage")).to_have_text(f"{100 * stopped / N:.2f}%")
            points = int(page.locator("#chart").get_attribute("data-points") or 0)
            assert points >= 3
            assert page.locator("#chart polyline").count() == 1

            # The audit log is readable with the key; pause/resume are not routing changes.
            expect(page.locator("#audit")).to_contain_text("no control actions yet")
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
