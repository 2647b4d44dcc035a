"""A Chroma server that goes away mid-search, through the proxy's HTTP search: real models, a
real `chroma run` (of this test's own, killed with SIGKILL while searches are in flight, then
started again on the same data and port). Every answer is a 200 (flagged degraded once the
server is gone, served from what is still up) or a 503 (nothing left to serve from): never a
500; and the server coming back is used again without a restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from loadtest.servers import Chroma
from proxy.app import create_app
from proxy.demo import python_reference
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.model import Embedder
from proxy.runtime import Runtime
from tests.helpers import LiveServer, demo_settings, wait_for

N = 40
T = 15.0  # every HTTP call is bounded
QUERIES = ("catch an exception", "for loop over a range", "import a module", "with statement")


def search(url: str, i: int) -> httpx.Response:
    body = {"query": QUERIES[i % len(QUERIES)], "k": 5}
    return httpx.post(url + "/search", json=body, timeout=T)


@pytest.mark.parametrize("on_chroma", [("old",), ("new",), ("old", "new")])
def test_a_chroma_server_killed_mid_search_degrades_or_503s(
    tmp_path: Path, models: dict[str, Embedder], on_chroma: tuple[str, ...]
) -> None:
    server = Chroma(tmp_path / "chroma").start()
    indexes = {
        side: {"backend": "chroma", "url": server.url, "collection": side, "timeout_s": 2}
        if side in on_chroma
        else {"backend": "edge", "path": side}
        for side in ("old", "new")
    }
    # `new` may serve alone at a third's coverage: reachability is tested, not the gate.
    settings = demo_settings(tmp_path / "data", indexes=indexes, cutover={"min_coverage": 0})
    docs = python_reference()[:N]
    try:
        with Runtime(settings, dict(models)) as rt:
            ingest(rt, "old", docs, progress=False)
            start_migration(rt, progress=False)
            ingest(rt, "new", docs[::3], progress=False)
            rt.state.set("paused", True)  # (the worker would race the searches)
            with LiveServer(create_app(rt)) as live:
                up = search(live.url, 0)
                assert up.status_code == 200 and "x-crossfade-degraded" not in up.headers

                answers: list[tuple[float, httpx.Response]] = []
                done = threading.Event()

                def client() -> None:
                    i = 0
                    while not done.is_set():
                        answers.append((time.monotonic(), search(live.url, i)))
                        i += 1

                threads = [threading.Thread(target=client) for _ in range(3)]
                for t in threads:
                    t.start()
                wait_for(lambda: len(answers) >= 6, 60, "searches while the server is up")
                server.proc.kill()  # type: ignore[union-attr]  # mid-search, no goodbye
                server.proc.wait()  # type: ignore[union-attr]
                gone = time.monotonic()
                wait_for(lambda: sum(t > gone for t, _ in answers) >= 12, 60, "searches after")
                done.set()
                for t in threads:
                    t.join(timeout=2 * T)

                statuses = {r.status_code for _, r in answers}
                assert statuses <= {200, 503}, [r.text for _, r in answers if r.status_code >= 500]
                after = [r for t, r in answers if t > gone]
                down = " and ".join(f"{s} index unreachable" for s in on_chroma)
                if on_chroma == ("old", "new"):
                    assert {r.status_code for r in after} == {503}
                    assert all("index unreachable" in r.json()["error"] for r in after)
                else:
                    assert {r.status_code for r in after} == {200}
                    for r in after:
                        assert r.headers["x-crossfade-degraded"] == down
                        res = r.json()
                        assert res["degraded"] == down and len(res["results"]) == 5
                        assert not any(on_chroma[0] in h["ranks"] for h in res["results"])
                for _, r in answers:  # a 200 is whole, whether served before or after
                    if r.status_code == 200:
                        assert len(r.json()["results"]) == 5

                server.start()  # the same data, the same port
                wait_for(
                    lambda: "x-crossfade-degraded" not in search(live.url, 0).headers,
                    30,
                    "the server to be used again",
                )
                back = search(live.url, 1)
                assert back.status_code == 200 and "degraded" not in back.json()
    finally:
        server.stop()
