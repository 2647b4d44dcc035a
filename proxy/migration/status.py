"""What `GET /migration` and `crossfade status` report."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from proxy.migration.canary import drift_alarms, drift_message
from proxy.migration.fitted import fusion_status, load_fit
from proxy.migration.spend import spend_status
from proxy.migration.worker import Reembedder, control_state
from proxy.runtime import SIDES, Runtime
from proxy.search import Searcher
from proxy.store import IndexUnavailable, VectorStore


def migration_status(
    rt: Runtime, worker: Reembedder | None = None, searcher: Searcher | None = None
) -> dict[str, Any]:
    """`searcher`: the serving one, whose fusion is reported (else the stored fit's)."""
    indexes: dict[str, Any] = {}
    for side in SIDES:
        try:
            indexes[side] = _index_status(rt, side)
        except IndexUnavailable as e:  # counts unknown: say so rather than guess 0
            indexes[side] = {
                "exists": None,
                "reachable": False,
                "error": str(e),
                "bound_fingerprint": None,
                "documents": None,
                "with_vector": None,
                "coverage": None,
                "fingerprints": {},
            }
    new = indexes["new"]
    unembeddable = rt.state.unembeddable()
    if new["documents"] is not None:  # what can't be re-embedded is missing, not left out
        new["unembeddable"] = unembeddable["count"]
        total = new["documents"] + unembeddable["count"]
        new["coverage"] = round(new["with_vector"] / total, 4) if total else 0.0
    remaining = None if new["documents"] is None else new["documents"] - new["with_vector"]
    control = control_state(rt.state, rt.settings.migration)
    state = worker_state(control["paused"], worker)
    # The current rate: a worker that is not running (paused, idle, waiting, absent) re-embeds
    # nothing now, whatever its last minute's average says. A fleet's: every process's.
    rate = worker.stats.rate() if worker and state == "running" else 0.0
    fleet = rt.state.members() if rt.state.shared else []
    if fleet:
        rate = sum(float(m.info.get("rate_docs_per_s") or 0.0) for m in fleet)
    reembedded = rt.state.reembedded()
    fitted = searcher.fitted if searcher else load_fit(rt.state, rt.fingerprints())
    return {
        "migration": rt.state.get("migration"),
        "indexes": indexes,
        "queue": rt.state.depth(),
        # Document write batches not yet in every index, and how their retries go.
        "write_journal": rt.journal.status(),
        # Documents with no text to re-embed them from: they block the gate until they get
        # text or are excluded (`crossfade migrate exclude`).
        "unembeddable": unembeddable,
        "control": control,
        "worker": None if worker is None else {"running": True, **worker.report()},
        "worker_state": state,
        # Processes sharing this migration's state (a fleet), as their heartbeats say.
        "fleet": [{"name": m.name, "role": m.role, "age_s": m.age_s, **m.info} for m in fleet],
        # Re-embeds this migration: a document embedded more than once is a duplicate.
        "reembedded": {
            "embeddings": reembedded.total,
            "documents": reembedded.distinct,
            "duplicates": reembedded.duplicates,
        },
        "remaining": remaining,
        "rate_docs_per_s": round(rate, 2),
        "eta_s": round(remaining / rate, 1) if rate > 0 and remaining is not None else None,
        "fusion": fusion_status(rt.state, rt.settings.fusion, fitted, new["coverage"] or 0.0),
        # The migration's API tokens and money, and the cap (hosted new model).
        "spend": spend_status(rt.state, rt.settings, control["max_spend"]),
        # Hosted models whose canary drifted: vector writes naming them are refused.
        "model_drift": {
            side: {**alarm, "message": drift_message(side, alarm)}
            for side, alarm in drift_alarms(rt).items()
        },
        "models": {side: _model_status(rt, side) for side in SIDES},
    }


def _model_status(rt: Runtime, side: str) -> dict[str, Any]:
    """Which model a side uses: local (its kind) or a hosted provider with its counters."""
    cfg = getattr(rt.settings.models, side)
    if cfg.kind != "openai":
        return {"kind": cfg.kind}
    model = rt.model(side)
    return {
        "kind": cfg.kind,
        **getattr(model, "describe", dict)(),
        "requests": getattr(model, "requests", None),
        "retries": getattr(model, "retries", None),
        "failures": getattr(model, "failures", None),
    }


def worker_state(paused: bool, worker: Reembedder | None) -> str:
    """In words: paused, pausing (a batch still in flight), running, idle (nothing queued),
    waiting (an index or the model is down), capped (the spend cap), blocked (the new model
    drifted), or stopped (no proxy: the CLI read the stores itself)."""
    if paused:
        return "pausing" if worker is not None and worker.stats.busy else "paused"
    return "stopped" if worker is None else worker.stats.state


def _index_status(rt: Runtime, side: str) -> dict[str, Any]:
    store = rt.store(side)
    info = store.info()
    docs = store.count()
    with_vector = store.count(dense_only=True)
    return {
        "exists": info is not None,
        "reachable": True,
        "bound_fingerprint": info.fingerprint if info else None,
        "documents": docs,
        "with_vector": with_vector,
        "coverage": round(with_vector / docs, 4) if docs else 0.0,
        "fingerprints": store.fingerprints() if info else {},
    }


Digest = dict[str, tuple[str | None, str]]


def _digest(store: VectorStore) -> Digest:
    """Per doc id: the text hash and a hash of the metadata (one scroll, no texts kept)."""
    out: Digest = {}
    for batch in store.scroll(512, ["text_sha256", "metadata"]):
        for p in batch:
            meta = orjson.dumps(p.get("metadata") or {}, option=orjson.OPT_SORT_KEYS)
            out[p["doc_id"]] = (p.get("text_sha256"), hashlib.sha256(meta).hexdigest())
    return out


def disagreements(old: Digest, new: Digest, known: set[str], shown: int = 20) -> dict[str, Any]:
    """Where the two indexes tell a document differently: in one only, another text, other
    metadata. `known`: ids that can't be in the new index (no text, listed by status), kept
    apart. Pure."""
    only_old = sorted(d for d in old.keys() - new.keys() if d not in known)
    only_new = sorted(new.keys() - old.keys())
    both = old.keys() & new.keys()
    text = sorted(d for d in both if old[d][0] != new[d][0])
    meta = sorted(d for d in both if old[d][0] == new[d][0] and old[d][1] != new[d][1])
    kinds = {"only_old": only_old, "only_new": only_new, "text": text, "metadata": meta}
    return {
        "count": sum(len(v) for v in kinds.values()),
        **{k: {"count": len(v), "ids": v[:shown]} for k, v in kinds.items()},
        "without_text": len(known & old.keys()),
    }


def compare_indexes(rt: Runtime) -> dict[str, Any] | None:
    """Old against new for every document (None: there is no old index to compare: retired,
    or not created)."""
    from proxy.migration.finish import retired

    old, new = rt.store("old"), rt.store("new")
    if retired(rt) or old.info() is None or new.info() is None:
        return None
    return disagreements(_digest(old), _digest(new), rt.state.unembeddable_ids())


def verify(rt: Runtime, sample: int = 64, repair: bool = False) -> dict[str, Any]:
    """Check the new index point by point: one point per doc id, every vector from the bound
    model and of the current text (hash), and for a sample, the stored vector equals a fresh
    embedding of the stored text (it is its own nearest neighbour at cosine ~1). And old
    against new for every document: the same texts and metadata (a dual write that reached
    one side only shows here, by id). And an index's BM25 sidecar against the index
    (proxy/migration/sidecars.py); `repair` rewrites where they differ, or rebuilds it."""
    import numpy as np

    from proxy.migration.sidecars import SidecarFollower, check_sidecars, sidecar_problems

    if rt.state.shared:  # a fleet: this process's sidecars, caught up as a replica's would be
        SidecarFollower(rt).catch_up()
    sidecars = check_sidecars(rt, repair)
    new = rt.store("new")
    info = new.info()
    if info is None:
        problems = ["the new index does not exist", *sidecar_problems(sidecars)]
        return {"ok": False, "bm25_sidecars": sidecars, "problems": problems}
    ids: list[str] = []
    problems: list[str] = []
    fields = ["text", "text_sha256", "vector_sha256", "model_fingerprint"]
    payloads: dict[str, dict[str, Any]] = {}
    for batch in new.scroll(512, fields):
        for p in batch:
            ids.append(p["doc_id"])
            payloads[p["doc_id"]] = p
    with_vector = new.with_dense(ids)
    missing = [d for d in ids if d not in with_vector]
    stale = [
        d for d in with_vector if payloads[d].get("vector_sha256") != payloads[d]["text_sha256"]
    ]
    foreign = [d for d in with_vector if payloads[d].get("model_fingerprint") != info.fingerprint]
    if len(set(ids)) != len(ids):
        problems.append(f"{len(ids) - len(set(ids))} duplicate doc ids")
    for name, bad in (("without a vector", missing), ("stale", stale), ("foreign", foreign)):
        if bad:
            problems.append(f"{len(bad)} documents {name}, e.g. {sorted(bad)[:3]}")
    rng = np.random.default_rng(0)
    picked = [str(d) for d in rng.permutation(sorted(with_vector))[:sample]]
    mismatched = []
    if picked:
        vecs = rt.model("new").embed_documents([payloads[d]["text"] for d in picked])
        for d, v in zip(picked, vecs, strict=True):
            top = new.search_dense(v, 1)
            if not top or top[0][1] < 0.999 or (top[0][0] != d and top[0][1] < 0.9999):
                mismatched.append(d)
    if mismatched:
        problems.append(f"{len(mismatched)} sampled vectors do not match their text")
    compared = compare_indexes(rt)
    if compared and compared["count"]:
        shown = {k: v["ids"][:3] for k, v in compared.items() if isinstance(v, dict) and v["ids"]}
        problems.append(f"{compared['count']} documents differ between old and new: {shown}")
    unembeddable = rt.state.unembeddable()
    if unembeddable["count"]:
        problems.append(
            f"{unembeddable['count']} documents cannot be re-embedded (no text), e.g. "
            f"{[u['doc_id'] for u in unembeddable['ids'][:3]]}: give them text or "
            "`crossfade migrate exclude ID...`"
        )
    problems.extend(sidecar_problems(sidecars))
    return {
        "ok": not problems,
        "documents": len(ids),
        "unique_ids": len(set(ids)),
        "with_vector": len(with_vector),
        "sampled": len(picked),
        "disagreements": compared,
        "unembeddable": unembeddable,
        "bm25_sidecars": sidecars,
        "problems": problems,
    }
