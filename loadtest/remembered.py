"""`make bench-remembered`: the memory bound of the texts `/v1/embeddings` remembers.

    python loadtest/remembered.py [--texts 60000] [--remember 20000] [--batch 250]

Starts a real `crossfade serve` on 127.0.0.1 (the demo's models; `vector_clients.
remember_texts` set to --remember) and sends --texts distinct short texts through
`/v1/embeddings` (the old model: paraphrase-MiniLM-L3-v2, ONNX) in batches, --clients at a
time. Samples the server's RSS before the first request and every --sample-every texts, with
the remembered entries as `/metrics` reports them. Bounded: stops after --texts or
--max-seconds, whichever comes first, and stops the server. The bound holds when the entries
stop at --remember and RSS stays flat after that (its highest sample after the cap within
max(25% of the growth up to it, 16 MiB) of the sample at the cap); exit 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.cutover import serve  # noqa: E402
from loadtest.harness import free_port  # noqa: E402
from loadtest.soak import rss_mb  # noqa: E402
from proxy.config import load_settings  # noqa: E402
from proxy.demo import python_reference  # noqa: E402
from proxy.ingest import ingest  # noqa: E402
from proxy.runtime import Runtime  # noqa: E402

KEY = "loadtest-remembered-key"
WORDS = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra",
    "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
]  # fmt: skip


def texts(n: int) -> list[str]:
    """n distinct short texts (about 40 characters, a dozen tokens)."""
    w = len(WORDS)
    return [
        f"note {i}: {WORDS[i % w]} {WORDS[(i // w) % w]} {WORDS[(i // w**2) % w]} here"
        for i in range(n)
    ]


def prepare(work: Path, port: int, remember: int) -> Path:
    """A config serving the demo models in mode old over a small old index (readiness needs
    one), with no migration work running, remembering `remember` texts."""
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["data_dir"] = str(work)
    cfg["mode"] = "old"
    cfg["server"].update({"port": port, "admin_key": KEY})
    cfg["migration"] = {"lazy": False, "backfill": False}
    cfg["vector_clients"] = {"remember_texts": remember}
    work.mkdir(parents=True, exist_ok=True)
    path = work / "crossfade.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with Runtime(load_settings(path)) as rt:
        ingest(rt, "old", python_reference()[:8], progress=False)
    return path


def remembered(url: str) -> tuple[int, float]:
    """The entries and their approximate MiB, as `/metrics` reports them."""
    text = httpx.get(url + "/metrics", headers={"api-key": KEY}, timeout=60).text

    def gauge(name: str) -> float:
        found = re.search(rf"^{name} (\S+)$", text, flags=re.M)
        return float(found.group(1)) if found else -1.0

    return int(gauge("crossfade_remembered_texts")), gauge("crossfade_remembered_bytes") / 2**20


async def send_all(
    url: str,
    model: str,
    corpus: list[str],
    batch: int,
    clients: int,
    deadline: float,
    on_progress: Any,
) -> dict[str, int]:
    batches = [corpus[i : i + batch] for i in range(0, len(corpus), batch)]
    done = {"requests": 0, "texts": 0, "errors": 0}
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    lock = asyncio.Lock()

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty() and time.monotonic() < deadline:
            texts_ = queue.get_nowait()
            body = {"model": model, "input": texts_, "encoding_format": "base64"}
            r = await http.post("/v1/embeddings", json=body)
            async with lock:
                done["requests"] += 1
                if r.status_code != 200 or len(r.json()["data"]) != len(texts_):
                    done["errors"] += 1
                    continue
                before = done["texts"]
                done["texts"] += len(texts_)
                await on_progress(before, done["texts"])

    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return done


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=60_000)
    ap.add_argument("--remember", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--sample-every", type=int, default=5_000)
    ap.add_argument("--max-seconds", type=float, default=270)
    ap.add_argument("--work", default=str(ROOT / ".crossfade" / "remembered"))
    ap.add_argument("--out", default=str(ROOT / ".crossfade" / "remembered.json"))
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = prepare(work, port, args.remember)
    model = load_settings(config).models.old.name or "old"
    corpus = texts(args.texts)
    proc = serve(config, port)
    samples: list[dict[str, Any]] = []

    def sample(sent: int) -> None:
        n, mb = remembered(url)
        samples.append({"texts": sent, "entries": n, "store_mb": mb, "rss_mb": rss_mb(proc.pid)})

    async def progress(before: int, after: int) -> None:
        if after // args.sample_every > before // args.sample_every or after == args.texts:
            await asyncio.to_thread(sample, after)

    try:
        sample(0)
        t0 = time.monotonic()
        deadline = t0 + args.max_seconds
        done = asyncio.run(
            send_all(url, model, corpus, args.batch, args.clients, deadline, progress)
        )
        wall = time.monotonic() - t0
        if samples[-1]["texts"] != done["texts"]:
            sample(done["texts"])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)

    i_cap = next((i for i, s in enumerate(samples) if s["texts"] >= args.remember), -1)
    at_cap = samples[i_cap]
    first, last = samples[0], samples[-1]
    to_cap = at_cap["rss_mb"] - first["rss_mb"]
    after_cap = max(s["rss_mb"] for s in samples[i_cap:]) - at_cap["rss_mb"]
    allowed = max(0.25 * to_cap, 16.0)
    ok = (
        done["errors"] == 0
        and last["entries"] == min(args.remember, done["texts"])
        and after_cap <= allowed
    )
    report = {
        "texts_sent": done["texts"],
        "requests": done["requests"],
        "errors": done["errors"],
        "remember_texts": args.remember,
        "seconds": round(wall, 1),
        "texts_per_s": round(done["texts"] / wall, 1) if wall else None,
        "samples": [
            {**s, "rss_mb": round(s["rss_mb"], 1), "store_mb": round(s["store_mb"], 1)}
            for s in samples
        ],
        "rss_mb": {
            "before": round(first["rss_mb"], 1),
            "at_cap": round(at_cap["rss_mb"], 1),
            "end": round(last["rss_mb"], 1),
            "growth_to_cap": round(to_cap, 1),
            "max_growth_after_cap": round(after_cap, 1),
            "allowed_after_cap": round(allowed, 1),
        },
        "bound_holds": ok,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print("| texts sent | entries | their size (MiB, the store's estimate) | server RSS (MiB) |")
    print("|---|---|---|---|")
    for s in samples:
        print(f"| {s['texts']:,} | {s['entries']:,} | {s['store_mb']:.1f} | {s['rss_mb']:.1f} |")
    r = report["rss_mb"]
    print(
        f"\n{done['texts']:,} texts in {report['seconds']} s ({report['texts_per_s']} texts/s), "
        f"{done['errors']} errors; RSS {r['before']} -> {r['at_cap']} at the cap "
        f"(+{r['growth_to_cap']}) -> {r['end']} at the end; at most "
        f"+{r['max_growth_after_cap']} after the cap (allowed {r['allowed_after_cap']}): "
        f"{'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
