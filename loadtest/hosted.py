"""A whole SciFact migration to a hosted model, through a real OpenAI-compatible server.

Old: paraphrase-MiniLM-L3-v2 (local ONNX). New: `kind: openai` against Infinity on 127.0.0.1
serving all-MiniLM-L6-v2 (loadtest/servers.py starts it; `make infinity` installs it). The
re-embed worker migrates the whole corpus in phases, all in one run so the ratios compare:

  1. docs/s with 1, 4 and 16 requests in flight (`--docs-per-phase` documents each);
  2. a tokens/min limit at half the 16-in-flight throughput: tokens billed (the server's
     `usage`) over one minute, against the limit;
  3. the rest at 16 in flight.

Then: the new index's vectors against the local sentence-transformers model (cosine on a
sample: each stored vector is the nearest neighbour of the local embedding of its text) and
nDCG@10 of new-model search at 100% coverage, hosted (queries through the API over the index
the worker wrote) against local (the same model run here, brute force). Bounded: loopback
only, one corpus, one minute of rate limiting. The data stays in ../shared.

    .venv/bin/python loadtest/hosted.py --beir ../shared/data/scifact
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.servers import Infinity, hosted_model, infinity_installed  # noqa: E402
from proxy.beir import load_beir  # noqa: E402
from proxy.config import ModelConfig, load_settings  # noqa: E402
from proxy.embedding import embed_documents_cached, load_embedder  # noqa: E402
from proxy.evaluation import score_run  # noqa: E402
from proxy.ingest import ingest  # noqa: E402
from proxy.migration.start import start_migration  # noqa: E402
from proxy.migration.worker import Reembedder  # noqa: E402
from proxy.model import Embedder  # noqa: E402
from proxy.runtime import Runtime  # noqa: E402


def hosted_cfg(url: str, in_flight: int, tpm: float = 0.0) -> dict[str, Any]:
    return hosted_model(
        url,
        batch_size=16,
        max_concurrent_requests=in_flight,
        tokens_per_minute=tpm,
        max_length=256,
    )


def runtime(settings: Any, old: Embedder, url: str, in_flight: int, tpm: float = 0.0) -> Runtime:
    cfg = ModelConfig(**hosted_cfg(url, in_flight, tpm))
    s = settings.model_copy(deep=True)
    s.models.new = cfg
    return Runtime(s, {"old": old, "new": load_embedder(cfg)})


def run_worker(rt: Runtime, docs: int | None = None, seconds: float | None = None) -> dict:
    """Run the worker's batches until `docs` written, `seconds` passed or nothing is left."""
    worker = Reembedder(rt)
    model = rt.model("new")
    t0, tok0, written = time.monotonic(), model.tokens, 0  # type: ignore[attr-defined]
    samples = [(0.0, 0)]
    while True:
        n = worker.step()
        if n == 0 and rt.state.depth()["total"] == 0 and not worker.refill():
            break
        written += n
        now = time.monotonic() - t0
        samples.append((now, model.tokens - tok0))  # type: ignore[attr-defined]
        if (docs is not None and written >= docs) or (seconds is not None and now >= seconds):
            break
    wall = time.monotonic() - t0
    return {
        "docs": written,
        "seconds": round(wall, 2),
        "docs_per_s": round(written / wall, 1),
        "samples": samples,
    }


def tokens_between(samples: list[tuple[float, int]], a: float, b: float) -> int:
    """Tokens billed between `a` and `b` seconds, read from the (time, cumulative) samples."""

    def at(t: float) -> float:
        ts = [s[0] for s in samples]
        return float(np.interp(t, ts, [s[1] for s in samples]))

    return int(at(b) - at(a))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beir", default=str(ROOT.parent / "shared" / "data" / "scifact"))
    ap.add_argument("--docs-per-phase", type=int, default=480)
    ap.add_argument("--limit-seconds", type=float, default=75.0)
    ap.add_argument("--data-dir", default=str(ROOT / ".crossfade" / "hosted-scifact"))
    ap.add_argument("--out", default=str(ROOT / ".crossfade" / "hosted-scifact.json"))
    args = ap.parse_args()
    if not infinity_installed():
        print("Infinity is not installed: run `make infinity`", file=sys.stderr)
        return 2
    data = Path(args.data_dir)
    for stale in ("new", "migration.sqlite", "migration.sqlite-wal", "migration.sqlite-shm"):
        p = data / stale
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    beir = load_beir(args.beir, "test")
    settings = load_settings(ROOT / "config" / "scifact.yaml", data_dir=str(data))
    log = data / "infinity.log"
    data.mkdir(parents=True, exist_ok=True)
    server = Infinity(log).start()
    out: dict[str, Any] = {"documents": len(beir.docs), "queries": len(beir.queries)}
    try:
        old = load_embedder(settings.models.old)
        rt = runtime(settings, old, server.url, 1)
        t0 = time.monotonic()
        ingest(rt, "old", beir.docs, progress=True)  # resumable, vectors cached on disk
        start_migration(rt, progress=True)
        print(f"old index + seed: {time.monotonic() - t0:.0f}s", file=sys.stderr)
        rt.close()

        phases = {}
        for in_flight in (1, 4, 16):
            rt = runtime(settings, old, server.url, in_flight)
            r = run_worker(rt, docs=args.docs_per_phase)
            r.pop("samples")
            phases[in_flight] = r
            print(f"{in_flight:>2} in flight: {r}", file=sys.stderr)
            rt.close()
        out["docs_per_s"] = {str(k): v["docs_per_s"] for k, v in phases.items()}
        base = phases[1]["docs_per_s"]
        out["speedup_vs_1"] = {str(k): round(v["docs_per_s"] / base, 2) for k, v in phases.items()}

        # Half of what 16 in flight achieved, in the server's tokens (Infinity: characters).
        chars_per_doc = float(np.mean([len(d.text) for d in beir.docs]))
        tpm = round(phases[16]["docs_per_s"] * chars_per_doc * 60 / 2, -3)
        rt = runtime(settings, old, server.url, 16, tpm=tpm)
        r = run_worker(rt, seconds=args.limit_seconds)
        start = max(0.0, r["seconds"] - 60.0 - 5.0)  # one full minute, after the ramp-up
        measured = tokens_between(r["samples"], start, start + 60.0)
        out["tokens_per_minute"] = {
            "limit": tpm,
            "measured_over_60s": measured,
            "ratio": round(measured / tpm, 4),
            "docs_per_s": r["docs_per_s"],
        }
        print(f"tpm limit: {out['tokens_per_minute']}", file=sys.stderr)
        rt.close()

        rt = runtime(settings, old, server.url, 16)
        r = run_worker(rt)
        print(f"rest at 16 in flight: {r['docs']} docs, {r['docs_per_s']} docs/s", file=sys.stderr)
        new = rt.store("new")
        out["coverage"] = new.count(dense_only=True) / new.count()
        hosted_model = rt.model("new")

        # Vectors: the local model's embedding of a sample, against what the index holds.
        local = load_embedder(settings.models.new)
        rng = np.random.default_rng(0)
        sample = [beir.docs[i] for i in rng.choice(len(beir.docs), 200, replace=False)]
        lv = local.embed_documents([d.text for d in sample])
        cos = []
        for d, v in zip(sample, lv, strict=True):
            (top, score), *_ = new.search_dense(v, 1)
            cos.append(score if top == d.doc_id else 0.0)
        out["vectors_vs_local"] = {"sample": len(cos), "min_cosine": round(min(cos), 6)}

        # nDCG@10 at 100%: hosted (queries through the API, the index the worker wrote) and
        # local (the same model here, brute force over its own document vectors, cached).
        qids = list(beir.queries)
        # One query a request, as the query path sends them (each within its timeout).
        qh = [hosted_model.embed_queries([beir.queries[q]])[0] for q in qids]
        hosted_run = {
            q: [d for d, _ in new.search_dense(v, 100)] for q, v in zip(qids, qh, strict=True)
        }
        dl = embed_documents_cached(local, [d.text for d in beir.docs], rt.embedding_cache)
        ql = local.embed_queries([beir.queries[q] for q in qids])
        ids = [d.doc_id for d in beir.docs]
        top = np.argsort(-(ql @ dl.T), axis=1)[:, :100]
        local_run = {q: [ids[j] for j in top[i]] for i, q in enumerate(qids)}
        h, lo = score_run(hosted_run, beir.qrels), score_run(local_run, beir.qrels)
        out["ndcg@10"] = {
            "hosted": h["ndcg@10"],
            "local": lo["ndcg@10"],
            "diff": round(abs(h["ndcg@10"] - lo["ndcg@10"]), 4),
        }
        rt.close()
    finally:
        server.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    ok = (
        out["vectors_vs_local"]["min_cosine"] >= 0.9999
        and out["ndcg@10"]["diff"] <= 0.002
        and abs(out["tokens_per_minute"]["ratio"] - 1) <= 0.05
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
