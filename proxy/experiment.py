"""Simulated-coverage evaluation on a BEIR dataset, through the product's own query path.

The old index is built with the old model (ingest, resumable). The new index is seeded exactly
as `crossfade migrate start` seeds it, then a seeded random p% of documents get their new-model
vector, growing through the requested coverages. At each coverage every query runs through
`Searcher.candidates` (the stores and lists the proxy serves with); `score_systems` then scores
the ranked lists as old-only, new-only, BM25, plain RRF and crossfade's fusion (and, given a
fitted profile, `crossfade-tuned`), all on the same judged queries.

Beside them, `vector`: an app that sends old-model query vectors, not text (proxy/adapter.py).
At each coverage a query map is fitted on the migrated documents' (old, new) vector pairs; each
query's old-model vector is searched in the old index as it is and, where the map is usable, in
the new index through the map, and the two lists are fused by `fuse_vector` (no BM25: no text).
Document vectors are cached on disk by (model fingerprint, text hash): a second run costs
seconds, not minutes.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from proxy.adapter import MIN_FIT_PAIRS, QueryMap, fit_query_map, fuse_vector, usable
from proxy.beir import Beir, load_beir, qrels_file
from proxy.clock import now_iso
from proxy.config import FusionConfig, IndexConfig, IndexesConfig, Settings
from proxy.document import Doc, doc_of
from proxy.embedding import embed_documents_cached
from proxy.evaluation import Qrels, score_run
from proxy.fusion import FusionParams, Profile, default_profile, fuse, params_for, plain_rrf
from proxy.ingest import Progress, ingest
from proxy.migration.start import start_migration
from proxy.point import make_point
from proxy.runtime import Runtime
from proxy.search import Candidates, Searcher, holding_new
from proxy.tuning import MIN_FIT_QUERIES, Steps, fit_profile, split_for_fitting

VECTOR = "vector"  # old-model query vectors: the old index + the query map (proxy/adapter.py)
SYSTEMS = ("old", "new", "bm25", "rrf", "crossfade", VECTOR)
TUNED = "crossfade-tuned"
DEPTH = 100


@dataclass
class VectorHits:
    """One old-model query vector's lists: the old index's hits, the new index's hits of its
    mapped vector (empty without a usable map), and the hits holding a new vector."""

    old: list[tuple[str, float]]
    new: list[tuple[str, float]]
    migrated: set[str]


@dataclass
class VectorStep:
    """The vector path at one coverage: the map fitted there, whether it was served, and the
    lists of every query."""

    qmap: QueryMap | None
    used: bool
    hits: dict[str, VectorHits]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = self.qmap.summary() if self.qmap else {"pairs": 0}
        out.pop("fitted_at", None)
        return {**out, "used": self.used}


@dataclass
class Simulation:
    steps: dict[int, tuple[float, dict[str, Candidates]]]
    vector: dict[int, VectorStep] = field(default_factory=dict)


def scratch_settings(
    settings: Settings, beir_dir: str | Path, backend: str = "edge", url: str | None = None
) -> Settings:
    """The same models and fusion, with indexes of their own under
    `<data_dir>/eval/<set name>-<hash of its path>`: a simulation drops and rebuilds its new
    index, so it must never run on the indexes a deployment serves, and two data sets must
    never share one. `backend` chroma: two collections named for the set (`eval-<set>-<hash>-
    old`, `-new`) on the Chroma server at `url`, by default an embedded Chroma under that
    directory (`local:<dir>/chroma`); their BM25 sidecar lies under it too. The embedding
    cache is the same for both backends."""
    root = Path(beir_dir).resolve()
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:8]
    data_dir = settings.data_path(f"eval/{root.name}-{tag}")
    if backend == "chroma":
        name = re.sub(r"[^a-zA-Z0-9._-]", "_", f"eval-{root.name}-{tag}")
        where = url or f"local:{data_dir.resolve() / 'chroma'}"
        # Chroma searches an HNSW graph; the edge shards of a simulation are searched
        # exactly (no HNSW built). A breadth of 4 x the list depth finds an exact top-100
        # (docs/measurements/chroma-eval.md), so the figures measure the fusion, not the ANN.
        ef = 4 * DEPTH
        indexes = IndexesConfig(
            old=IndexConfig(backend="chroma", url=where, collection=f"{name}-old", ef_search=ef),
            new=IndexConfig(backend="chroma", url=where, collection=f"{name}-new", ef_search=ef),
        )
    elif backend == "edge":
        if url is not None:
            raise ValueError("a Chroma URL is for backend 'chroma'; edge shards are embedded")
        indexes = IndexesConfig(
            old=IndexConfig(backend="edge", path="old"),
            new=IndexConfig(backend="edge", path="new"),
        )
    else:
        raise ValueError(f"backend {backend!r}: a simulation runs on edge or chroma")
    return settings.model_copy(update={"data_dir": str(data_dir), "indexes": indexes})


def system_runs(
    cands: Mapping[str, Candidates],
    fusion: FusionConfig,
    coverage: float,
    tuned: Profile | None = None,
    vector: Mapping[str, VectorHits] | None = None,
) -> dict[str, dict[str, list[str]]]:
    """Per system, per query: the ranked doc ids. Pure, so tuning can call it in a loop.
    `vector` (the vector path's lists) adds the `vector` system."""
    systems: dict[str, FusionParams] = {
        "rrf": plain_rrf(fusion.k),
        "crossfade": params_for(fusion, coverage),
    }
    if tuned is not None:
        systems[TUNED] = params_for(fusion, coverage, tuned)
    names = [s for s in SYSTEMS if s != VECTOR or vector is not None]
    runs: dict[str, dict[str, list[str]]] = {s: {} for s in (*names, *systems)}
    for qid, c in cands.items():
        for name in ("old", "new", "bm25"):
            runs[name][qid] = c.ranked.get(name, [])[:DEPTH]
        for name, params in systems.items():
            runs[name][qid] = [f.doc_id for f in fuse(c.ranked, params, c.migrated, DEPTH)]
    if vector is not None:
        for qid in cands:
            h = vector[qid]
            runs[VECTOR][qid] = [f.doc_id for f in fuse_vector(h.old, h.new, h.migrated, DEPTH)]
    return runs


def score_systems(
    steps: Steps,
    qrels: Qrels,
    fusion: FusionConfig,
    tuned: Profile | None = None,
    vector: Mapping[int, VectorStep] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """{"<pct>": {system: metrics}}, every system scored on the queries of `qrels` only."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for pct in sorted(steps):
        coverage, cands = steps[pct]
        judged = {q: c for q, c in cands.items() if q in qrels}
        hits = vector[pct].hits if vector is not None else None
        runs = system_runs(judged, fusion, coverage, tuned, hits)
        out[str(pct)] = {s: score_run(run, qrels) for s, run in runs.items()}
    return out


def vector_share(result: Mapping[str, Mapping[str, Mapping[str, float]]]) -> tuple[str, float]:
    """At the highest coverage: the vector system's nDCG@10 as a share of crossfade's (the
    text path's)."""
    top = max(result, key=float)
    text = result[top]["crossfade"]["ndcg@10"]
    return top, result[top][VECTOR]["ndcg@10"] / text if text > 0 else 0.0


async def _all_candidates(searcher: Searcher, queries: Mapping[str, str]) -> dict[str, Candidates]:
    sem = asyncio.Semaphore(4)

    async def one(qid: str, text: str) -> tuple[str, Candidates]:
        async with sem:
            return qid, await searcher.candidates(text, ("old", "new", "bm25"), DEPTH)

    return dict(await asyncio.gather(*(one(q, t) for q, t in queries.items())))


class _VectorPath:
    """The eval's vector client: each query embedded once with the old model (as the app
    would), searched in the old index once (it does not change), and at each coverage through
    a map fitted on the documents migrated so far, exactly as a serving proxy would."""

    def __init__(self, rt: Runtime, data: Beir, queries: Mapping[str, str], seed: int) -> None:
        self.rt, self.seed = rt, seed
        self.cfg = rt.settings.vector_clients
        texts = [d.text for d in data.docs]
        self.doc_old = embed_documents_cached(rt.model("old"), texts, rt.embedding_cache)
        self.fps = rt.fingerprints()
        self.qids = list(queries)
        self.qvecs = rt.query_model("old").embed_queries([queries[q] for q in self.qids])
        old = rt.store("old")
        pairs = zip(self.qids, self.qvecs, strict=True)
        self.old = {q: old.search_dense(v, DEPTH) for q, v in pairs}

    def step(self, doc_new: np.ndarray, migrated: np.ndarray, coverage: float) -> VectorStep:
        qmap = None
        if len(migrated) >= MIN_FIT_PAIRS:
            qmap = fit_query_map(
                self.doc_old[migrated],
                doc_new[migrated],
                self.fps["old"],
                self.fps["new"],
                max_pairs=self.cfg.adapter_max_pairs,
                seed=self.seed,
            )
        used = usable(qmap, self.cfg, self.fps["old"], self.fps["new"])
        hits: dict[str, VectorHits] = {}
        new = self.rt.store("new")
        mapped = qmap.apply(self.qvecs) if used and qmap else None
        for i, q in enumerate(self.qids):
            old = self.old[q]
            if mapped is None:
                hits[q] = VectorHits(old, [], set())
                continue
            found = new.search_dense(mapped[i], DEPTH)
            hits[q] = VectorHits(old, found, holding_new(new, old, found, coverage))
        return VectorStep(qmap, used, hits)


def simulate_steps(
    settings: Settings,
    data: Beir,
    coverages: Sequence[int],
    seed: int = 0,
    progress: bool = True,
    queries: Mapping[str, str] | None = None,
) -> dict[int, tuple[float, dict[str, Candidates]]]:
    """Build the indexes in `settings` and return every query's candidates at each coverage
    (`queries` defaults to the data set's judged ones)."""
    return simulation(settings, data, coverages, seed, progress, queries, vector=False).steps


def simulation(
    settings: Settings,
    data: Beir,
    coverages: Sequence[int],
    seed: int = 0,
    progress: bool = True,
    queries: Mapping[str, str] | None = None,
    vector: bool = True,
) -> Simulation:
    """`simulate_steps`, and with `vector` the vector path's lists at each coverage."""
    rt = Runtime(settings)
    queries = queries or data.queries
    try:
        ingest(rt, "old", data.docs, progress=progress)
        new = rt.store("new")
        new.drop()
        start_migration(rt, strategy="simulation", progress=progress)
        model = rt.model("new")
        bar = Progress("embed new", len(data.docs)) if progress else None
        vecs = embed_documents_cached(
            model, [d.text for d in data.docs], rt.embedding_cache, progress=bar
        )
        order = np.random.default_rng(seed).permutation(len(data.docs))
        searcher = rt.searcher()
        path = _VectorPath(rt, data, queries, seed) if vector else None
        done = 0
        sim = Simulation({})
        for pct in sorted(set(coverages)):
            target = round(pct / 100 * len(data.docs))
            stamp = now_iso()
            for start in range(done, target, 512):
                idx = order[start : min(start + 512, target)]
                new.upsert([make_point(rt, "new", data.docs[i], vecs[i], stamp) for i in idx])
            done = max(done, target)
            coverage = searcher.coverage.recount()
            cands = asyncio.run(_all_candidates(searcher, queries))
            sim.steps[pct] = (coverage, cands)
            if path is not None:
                sim.vector[pct] = path.step(vecs, order[:done], coverage)
        return sim
    finally:
        rt.close()


def simulate(
    settings: Settings,
    data: Beir,
    coverages: Sequence[int],
    seed: int = 0,
    progress: bool = True,
    on_steps: Callable[[Steps], None] | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """Returns {"<pct>": {system: metrics}} over the data set's judged queries."""
    sim = simulation(settings, data, coverages, seed=seed, progress=progress)
    if on_steps:
        on_steps(sim.steps)
    return score_systems(sim.steps, data.qrels, settings.fusion, vector=sim.vector)


def format_table(result: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str) -> str:
    systems = list(next(iter(result.values()))) if result else list(SYSTEMS)
    head = f"{'coverage':>8} " + " ".join(f"{s:>15}" for s in systems)
    rows = [head]
    for pct, by_system in result.items():
        rows.append(
            f"{pct + '%':>8} " + " ".join(f"{by_system[s][metric]:>15.3f}" for s in systems)
        )
    return "\n".join(rows)


@dataclass
class Evaluation:
    result: dict[str, dict[str, dict[str, float]]]
    scored: list[str]  # the query ids every figure is averaged over
    docs: int
    tuned: Profile | None = None
    fitted_on: list[str] = field(default_factory=list)  # never among `scored`
    how: str = ""
    adapter: dict[str, dict[str, Any]] = field(default_factory=dict)  # per coverage: the map


def corpus_of_deployment(settings: Settings) -> list[Doc]:
    """The documents of the configured old index, for a labelled set that ships no corpus
    (the corpus is the deployment's own)."""
    with Runtime(settings) as rt:
        if rt.store("old").info() is None:
            raise RuntimeError("the labelled set has no corpus.jsonl and the old index is empty")
        return [
            doc_of(p) for batch in rt.store("old").scroll(512, ["text", "metadata"]) for p in batch
        ]


def evaluate(
    settings: Settings,
    root: str | Path,
    split: str,
    coverages: Sequence[int],
    seed: int = 0,
    progress: bool = True,
    tune: bool = False,
    min_fit_queries: int | None = None,
    backend: str = "edge",
    url: str | None = None,
) -> Evaluation:
    """Every system at each simulated coverage, on scratch indexes (`scratch_settings`, on
    `backend`, a Chroma server's at `url`). With `tune`, the fusion is also fitted
    (proxy/tuning.py) on queries that are then left out of every figure reported, and scored
    beside the others as `crossfade-tuned`."""
    data = load_beir(root, split)
    if not data.docs:
        data.docs = corpus_of_deployment(settings)
    scratch = scratch_settings(settings, root, backend, url)
    if not tune:
        sim = simulation(scratch, data, coverages, seed=seed, progress=progress)
        result = score_systems(sim.steps, data.qrels, settings.fusion, vector=sim.vector)
        return Evaluation(result, sorted(data.qrels), len(data.docs), adapter=_adapter(sim))
    train = None
    if split != "train" and qrels_file(root, "train") is not None:
        train = load_beir(root, "train", with_corpus=False)
    parts = split_for_fitting(data.qrels, train.qrels if train else None)
    queries = {**(train.queries if train else {}), **data.queries}
    sim = simulation(scratch, data, coverages, seed=seed, progress=progress, queries=queries)
    steps = sim.steps
    fit_queries = {q: r for q, r in parts.fit.items() if q in queries}
    rule = default_profile(settings.fusion)
    how = parts.how
    min_fit_queries = MIN_FIT_QUERIES if min_fit_queries is None else min_fit_queries
    if len(fit_queries) < min_fit_queries:
        # A handful of queries fits noise (seen on the demo's 15: -0.05 held out); keep the rule.
        profile = rule
        how += f"; {len(fit_queries)} fitting queries are fewer than {min_fit_queries}: rule kept"
    else:
        profile, _ = fit_profile(
            steps,
            fit_queries,
            settings.fusion.k,
            rule,
            source=f"fitted on {Path(root).name} ({len(fit_queries)} queries)",
        )
    result = score_systems(steps, parts.score, settings.fusion, profile, sim.vector)
    return Evaluation(
        result,
        sorted(parts.score),
        len(data.docs),
        profile,
        sorted(fit_queries),
        how,
        _adapter(sim),
    )


def _adapter(sim: Simulation) -> dict[str, dict[str, Any]]:
    return {str(pct): step.summary() for pct, step in sorted(sim.vector.items())}
