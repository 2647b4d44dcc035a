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
from proxy.demo import python_reference, write_eval_set
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from tests.helpers import LiveServer, demo_settings, wait_for

N = 40
KEY = "dashboard-test-key"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    *("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
]
needs_browser = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CROSSFADE_REQUIRE_BROWSER"),
    reason="Debian chromium not installed (`make test` installs it with apt-get)",
)


@pytest.fixture
def live(tmp_path: Path, models: dict) -> Iterator[tuple[str, Runtime]]:
    settings = demo_settings(
        tmp_path / "data",
        # Slow enough that the browser sees several points before the sweep could finish.
        migration={"batch_size": 2, "max_docs_per_s": 3},
        server={"admin_key": KEY, "history_interval_s": 0.5},
    )
    rt = Runtime(settings, dict(models))
    docs = python_reference()[:N]
    ingest(rt, "old", docs, progress=False)
    start_migration(rt, progress=False)
    write_eval_set(settings.data_path(settings.cutover.eval_set or "eval"), docs)
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


@needs_browser
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
            # Controls reflect what can be done now: paused, nothing cut over, 0% coverage.
            expect(page.locator("#pause")).to_be_disabled()
            expect(page.locator("#resume")).to_be_enabled()
            expect(page.locator("#rollback")).to_be_disabled()
            expect(page.locator("#rollback")).to_have_attribute("title", re.compile("nothing to"))
            expect(page.locator("#cutover")).to_be_disabled()
            expect(page.locator("#cutover")).to_have_attribute("title", re.compile("coverage"))
            page.check("#force")  # a forced cutover is possible at any coverage
            expect(page.locator("#cutover")).to_be_enabled()
            page.uncheck("#force")
            expect(page.locator("#cutover")).to_be_disabled()

            # A wrong key is refused and changes nothing.
            page.fill("#key", "not-the-key")
            page.click("#resume")
            expect(page.locator("#message")).to_contain_text("401", timeout=10_000)
            assert rt.state.get("paused") is True

            page.fill("#key", KEY)
            page.click("#resume")
            expect(page.locator("#worker-state")).to_contain_text("running", timeout=10_000)
            expect(page.locator("#resume")).to_be_disabled()
            expect(page.locator("#pause")).to_be_enabled()
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

            # The audit log is readable with the key and records the backfill controls.
            expect(page.locator("#audit")).to_contain_text("backfill pause")
            expect(page.locator("#audit")).to_contain_text("paused false → true")
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000

            # In `new`, there is nothing to cut over any more; a rollback is what can be done.
            admin = {"Authorization": f"Bearer {KEY}"}
            r = httpx.post(url + "/admin/cutover", json={"force": True}, headers=admin)
            assert r.status_code == 200, r.text
            expect(page.locator("#mode")).to_have_text("new", timeout=10_000)
            expect(page.locator("#cutover")).to_be_disabled()
            expect(page.locator("#cutover")).to_have_attribute("title", re.compile("already cut"))
            page.check("#force")
            expect(page.locator("#cutover")).to_be_disabled()
            expect(page.locator("#rollback")).to_be_enabled()
            page.click("#rollback")
            expect(page.locator("#mode")).to_have_text("fused", timeout=10_000)
            expect(page.locator("#rollback")).to_be_disabled()
        finally:
            browser.close()


@needs_browser
def test_api_docs_render_offline_in_chromium(live: tuple[str, Runtime]) -> None:
    """/docs (Swagger UI) draws the API from assets the proxy serves itself: every request
    the page makes to anywhere but the proxy is aborted, and none is needed."""
    from playwright.sync_api import expect, sync_playwright

    url, _ = live
    html = httpx.get(url + "/docs").text
    assert "cdn" not in html.lower() and "/static-offline-docs/swagger-ui-bundle.js" in html
    outside: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()

            def only_the_proxy(route) -> None:  # type: ignore[no-untyped-def]
                if route.request.url.startswith(url):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            page.route("**/*", only_the_proxy)
            page.goto(url + "/docs")
            expect(page.locator(".swagger-ui .info .title")).to_contain_text(
                "crossfade", timeout=20_000
            )
            expect(page.locator(".opblock-summary-path", has_text="/search").first).to_be_visible()
            assert page.locator(".opblock").count() >= 10
        finally:
            browser.close()
    assert outside == []
