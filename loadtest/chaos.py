"""`make chaos`: dual writes and search while the new model's server misbehaves (bounded,
127.0.0.1 only).

Old model: the demo's local paraphrase-MiniLM-L3 (ONNX). New model: `kind: openai`, served by
Infinity (all-MiniLM-L6-v2) behind a FaultProxy (loadtest/servers.py) that answers 10% of
requests 429 (Retry-After: 1) and 10% 500 for the whole run, and closes its port for
`--outage-s` seconds in the middle. The demo corpus (the Python language reference, 454
passages) is ingested to old, the migration is started, and `crossfade serve` (a child
process) serves it fused while its re-embed worker backfills through the faults.

`--clients` clients (16) run for `--seconds`; each is an application instance with a search
loop and an edit loop, each loop one request at a time. Searches alternate between
crossfade's `POST /search` and the Qdrant surface (`POST /collections/<c>/points/query`, a
Document query); every query text is unique, so no search is served from the query cache.
Edits alternate between `PUT /documents` and the Qdrant upsert (`PUT /collections/<c>/points`,
Document vectors) and change the text, the metadata or both of a document the client owns
(clients edit disjoint id sets, one edit at a time, so "the last acknowledged version" of a
document is well defined). Every edit is recorded with its outcome: acknowledged (2xx),
pending (503 saying it is in the journal and will reach every index), refused (any other
answer: applied nowhere) or unknown (no answer).

Afterwards, once the write journal is empty and the backfill done, the proxy is stopped and:
  * every document is compared in the old and the new index (text, text hash, metadata);
    `crossfade verify` runs too (its `disagreements`, when it reports them, are checked);
  * every acknowledged edit is in both indexes as the last acknowledged version of its
    document, no refused edit is, and documents never edited are as ingested;
  * search p99 during the outage is within `--max-ratio` (2x) of its p99 before it;
  * no search failed.

    python loadtest/chaos.py [--seconds 150] [--clients 16] [--out .crossfade/chaos.json]

Writes need no key on this branch; with API keys (server.api_keys) the script sends
`--api-key` / $CROSSFADE_CHAOS_API_KEY as the `api-key` header, by default the admin key it
configures (the admin key authorises every route).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.harness import free_port, wait_ready  # noqa: E402
from loadtest.servers import FaultProxy, Infinity, hosted_model, infinity_installed  # noqa: E402
from proxy.config import load_settings  # noqa: E402
from proxy.demo import python_reference  # noqa: E402
from proxy.document import Doc  # noqa: E402
from proxy.ingest import ingest  # noqa: E402
from proxy.runtime import Runtime  # noqa: E402

KEY = "chaos-admin-key"
DOCUMENT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # what the app names; not used


# --- set-up ---------------------------------------------------------------------------------


def write_config(data_dir: Path, port: int, model_url: str, **new: Any) -> Path:
    """The demo config with the new model hosted at `model_url`, served on `port`."""
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["data_dir"] = str(data_dir)
    cfg["server"].update({"port": port, "admin_key": KEY})
    cfg["models"]["new"] = hosted_model(model_url, **{"batch_size": 16, "max_length": 256, **new})
    cfg.pop("cutover", None)  # no labelled set: this run never cuts over
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "crossfade.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def prepare(config: Path, docs: list[Doc], backfill_share: float = 0.0) -> None:
    """Old index of `docs`, migration started (BM25 seeded), `backfill_share` of it
    re-embedded here; the rest is left to the serving proxy's worker."""
    from proxy.migration.start import start_migration
    from proxy.migration.worker import Reembedder

    rt = Runtime(load_settings(config))
    try:
        ingest(rt, "old", docs, progress=False)
        start_migration(rt, strategy="lazy", progress=False)
        if backfill_share > 0:
            worker = Reembedder(rt)
            new = rt.store("new")
            while new.count(dense_only=True) < backfill_share * len(docs):
                if not (worker.step() or worker.refill()):
                    break
    finally:
        rt.close()


def serve(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """`crossfade serve` as a child process (the environment, PYTHONPATH included, passes)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "--config", str(config), "serve"],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=300)
    except RuntimeError:
        proc.kill()
        raise
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def write_headers(api_key: str | None) -> dict[str, str]:
    """What a write carries: the key as Qdrant clients send it (`api-key`), if any."""
    return {"api-key": api_key} if api_key else {}


def percentiles(ms: list[float]) -> dict[str, Any]:
    if not ms:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    a = np.asarray(ms)
    return {
        "n": len(ms),
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p95_ms": round(float(np.percentile(a, 95)), 1),
        "p99_ms": round(float(np.percentile(a, 99)), 1),
        "max_ms": round(float(a.max()), 1),
    }


# --- the load -------------------------------------------------------------------------------


@dataclass
class Edit:
    client: int
    seq: int  # per client, increasing: the order of one client's (sequential) edits
    doc_id: str
    api: str  # "crossfade" | "qdrant"
    kind: str  # "text" | "metadata" | "both"
    text: str
    metadata: dict[str, Any]
    sent_s: float
    done_s: float = 0.0
    status: int = 0  # 0: no answer
    outcome: str = "unknown"  # acknowledged | pending | refused | unknown
    error: str | None = None


@dataclass
class Search:
    api: str
    sent_s: float
    ms: float
    status: int
    degraded: str | None


@dataclass
class Run:
    t0: float = 0.0
    edits: list[Edit] = field(default_factory=list)
    searches: list[Search] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0


def outcome_of(status: int, body: str) -> str:
    if 200 <= status < 300:
        return "acknowledged"
    # WritePending: applied to some index, kept in the journal until every index has it.
    if status == 503 and "stays in the write journal" in body:
        return "pending"
    return "refused"


def queries_from(docs: list[Doc]) -> list[str]:
    heads = [next(x for x in d.text.splitlines() if x.strip())[:120] for d in docs[::3]]
    return heads + ["how do I catch an exception", "what does yield do", "class definition"]


async def searcher(
    cid: int, http: httpx.AsyncClient, run: Run, qs: list[str], collection: str, args: Any
) -> None:
    rng = random.Random(1000 + cid)
    n = 0
    while run.now() < args.seconds:
        n += 1
        q = f"{rng.choice(qs)} {cid}-{n}"  # unique: every search embeds with both models
        api = "crossfade" if n % 2 else "qdrant"
        if api == "crossfade":
            path, body = "/search", {"query": q, "k": 10, "with_text": False}
        else:
            path = f"/collections/{collection}/points/query"
            body = {
                "query": {"nearest": {"text": q, "model": DOCUMENT_MODEL}},
                "limit": 10,
                "with_payload": False,
            }
        sent = run.now()
        t = time.perf_counter()
        try:
            r = await http.post(path, json=body)
            status, degraded = r.status_code, r.headers.get("x-crossfade-degraded")
        except httpx.HTTPError as e:
            status, degraded = 0, repr(e)
        run.searches.append(Search(api, sent, (time.perf_counter() - t) * 1000, status, degraded))
        await asyncio.sleep(rng.uniform(0, args.search_think_s))


async def editor(
    cid: int,
    http: httpx.AsyncClient,
    run: Run,
    own: list[Doc],
    collection: str,
    headers: dict[str, str],
    args: Any,
) -> None:
    rng = random.Random(cid)
    current = {d.doc_id: d for d in own}  # the last acknowledged version of each
    seq = 0
    await asyncio.sleep(rng.uniform(0, args.edit_think_s))
    while run.now() < args.seconds:
        seq += 1
        doc = current[rng.choice(sorted(current))]
        kind = rng.choice(["text", "metadata", "both"])
        api = "crossfade" if seq % 2 else "qdrant"
        text = doc.text
        if kind != "metadata":  # a new revision of the text, on the original passage
            base = doc.text.split("\n\n[revision ")[0]
            text = f"{base}\n\n[revision {seq} by client {cid}]"
        meta = dict(doc.metadata)
        if kind != "text":
            meta.update({"rev": seq, "editor": f"client-{cid}", "tags": [api, kind]})
        e = Edit(cid, seq, doc.doc_id, api, kind, text, meta, run.now())
        if api == "crossfade":
            req = http.put(
                "/documents",
                json={"documents": [{"id": doc.doc_id, "text": text, "metadata": meta}]},
                headers=headers,
            )
        else:
            point = {
                "id": doc.doc_id,
                "vector": {"text": text, "model": DOCUMENT_MODEL},
                "payload": {"metadata": meta},
            }
            req = http.put(
                f"/collections/{collection}/points",
                params={"wait": "true"},
                json={"points": [point]},
                headers=headers,
            )
        try:
            r = await req
            e.status, e.outcome = r.status_code, outcome_of(r.status_code, r.text)
            if e.outcome != "acknowledged":
                e.error = r.text[:300]
        except httpx.HTTPError as ex:
            e.error = repr(ex)
        e.done_s = run.now()
        run.edits.append(e)
        if e.outcome in ("acknowledged", "pending"):
            current[doc.doc_id] = Doc(doc.doc_id, text, meta)
        await asyncio.sleep(rng.uniform(0.5, 1.5) * args.edit_think_s)


async def outage(fault: FaultProxy, run: Run, at_s: float, seconds: float) -> None:
    await asyncio.sleep(max(0.0, at_s - run.now()))
    run.events.append({"t_s": round(run.now(), 2), "event": "model server stopped"})
    await asyncio.to_thread(fault.stop)
    run.events.append({"t_s": round(run.now(), 2), "event": "port closed"})
    await asyncio.sleep(max(0.0, at_s + seconds - run.now()))
    await asyncio.to_thread(fault.start)
    run.events.append({"t_s": round(run.now(), 2), "event": "model server back"})


async def sampler(http: httpx.AsyncClient, run: Run, seconds: float) -> None:
    while run.now() < seconds:
        try:
            st = (await http.get("/migration", timeout=30)).json()
            run.samples.append(
                {
                    "t_s": round(run.now(), 1),
                    "coverage": st["indexes"]["new"]["coverage"],
                    "journal_pending": st["write_journal"]["pending"],
                }
            )
        except (httpx.HTTPError, KeyError, ValueError) as e:
            run.samples.append({"t_s": round(run.now(), 1), "error": repr(e)[:200]})
        await asyncio.sleep(5)


async def load(url: str, docs: list[Doc], fault: FaultProxy, collection: str, args: Any) -> Run:
    run = Run()
    qs = queries_from(docs)
    owned: dict[int, list[Doc]] = defaultdict(list)
    for i, d in enumerate(docs):
        owned[i % args.clients].append(d)
    headers = write_headers(args.api_key)
    limits = httpx.Limits(max_connections=4 * args.clients + 4)
    # Writes wait for the model's retries and for the writes queued before them: a long
    # timeout, so an answer is always seen (no answer = an unknown outcome).
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        run.t0 = time.monotonic()
        tasks = [searcher(c, http, run, qs, collection, args) for c in range(args.clients)]
        tasks += [
            editor(c, http, run, owned[c], collection, headers, args) for c in range(args.clients)
        ]
        side = [
            asyncio.create_task(outage(fault, run, args.outage_at, args.outage_s)),
            asyncio.create_task(sampler(http, run, args.seconds)),
        ]
        await asyncio.gather(*tasks)  # the clients stop at --seconds, after the outage
        await asyncio.gather(*side)
        run.events.append({"t_s": round(run.now(), 2), "event": "clients done"})
    return run


def wait_settled(url: str, timeout: float) -> dict[str, Any]:
    """Wait for the write journal to empty and the backfill to finish; the last status."""
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            st = httpx.get(url + "/migration", timeout=30).json()
        except httpx.HTTPError:
            time.sleep(1)
            continue
        if st["write_journal"]["pending"] == 0 and st["indexes"]["new"]["coverage"] >= 1.0:
            break
        time.sleep(2)
    st["waited_s"] = round(time.monotonic() - t0, 1)
    return st


# --- the checks -----------------------------------------------------------------------------


def read_index(rt: Runtime, side: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    dupes = 0
    for batch in rt.store(side).scroll(512, ["text", "metadata", "text_sha256"]):
        for p in batch:
            dupes += p["doc_id"] in out
            out[p["doc_id"]] = p
    if dupes:
        out["__duplicates__"] = {"count": dupes}
    return out


def compare_indexes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Every document in both indexes with the same text (and hash) and metadata."""
    only_old = sorted(set(old) - set(new))
    only_new = sorted(set(new) - set(old))
    differ: dict[str, list[str]] = {}
    for d in sorted(set(old) & set(new)):
        what = [f for f in ("text", "text_sha256", "metadata") if old[d].get(f) != new[d].get(f)]
        if what:
            differ[d] = what
    return {
        "documents_old": len(old),
        "documents_new": len(new),
        "only_in_old": only_old[:20],
        "only_in_new": only_new[:20],
        "differ": dict(list(differ.items())[:20]),
        "disagreements": len(only_old) + len(only_new) + len(differ),
    }


def check_edits(
    docs: list[Doc], edits: list[Edit], indexes: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Each document holds, in every index, its last acknowledged (or pending) edit, or,
    when an edit after that one had no answer, possibly that one; never a refused edit;
    a document never successfully edited is as ingested."""
    by_doc: dict[str, list[Edit]] = defaultdict(list)
    for e in edits:
        by_doc[e.doc_id].append(e)
    lost: list[dict[str, Any]] = []
    refused_present: list[dict[str, Any]] = []
    original_changed: list[str] = []
    for d in docs:
        mine = sorted(by_doc.get(d.doc_id, []), key=lambda e: e.seq)
        applied = [e for e in mine if e.outcome in ("acknowledged", "pending")]
        last = applied[-1] if applied else None
        want = [(last.text, last.metadata)] if last else [(d.text, d.metadata)]
        after = [e for e in mine if e.outcome == "unknown" and (last is None or e.seq > last.seq)]
        want += [(e.text, e.metadata) for e in after]
        for side, index in indexes.items():
            p = index.get(d.doc_id)
            have = (p.get("text"), p.get("metadata")) if p else None
            if have in want:
                continue
            refused = [e for e in mine if e.outcome == "refused" and have == (e.text, e.metadata)]
            if refused:
                refused_present.append({"doc_id": d.doc_id, "index": side, "seq": refused[-1].seq})
            elif last is None:
                original_changed.append(f"{d.doc_id} ({side})")
            else:
                lost.append(
                    {
                        "doc_id": d.doc_id,
                        "index": side,
                        "want_seq": last.seq,
                        "have_text_tail": (have[0] or "")[-60:] if have else None,
                        "have_metadata": have[1] if have else None,
                    }
                )
    outcomes = Counter(e.outcome for e in edits)
    return {
        "edits": len(edits),
        "outcomes": dict(outcomes),
        "refused_statuses": dict(Counter(e.status for e in edits if e.outcome == "refused")),
        "by_api": {
            api: dict(Counter(e.outcome for e in edits if e.api == api))
            for api in ("crossfade", "qdrant")
        },
        "by_kind": {
            k: dict(Counter(e.outcome for e in edits if e.kind == k))
            for k in ("text", "metadata", "both")
        },
        "documents_edited": sum(
            1 for d in docs if any(e.outcome != "refused" for e in by_doc[d.doc_id])
        ),
        "lost": len(lost),
        "lost_samples": lost[:10],
        "refused_but_present": len(refused_present),
        "refused_but_present_samples": refused_present[:10],
        "unedited_changed": len(original_changed),
        "unedited_changed_samples": original_changed[:10],
        "refused_samples": [e.error for e in edits if e.outcome == "refused"][:3],
    }


def phase_of(t: float, events: dict[str, float], warmup_s: float) -> str | None:
    if t < warmup_s:
        return None
    if t < events["down"]:
        return "before"
    if t < events["up"]:
        return "outage"
    return "after"


def search_figures(run: Run, warmup_s: float) -> dict[str, Any]:
    events = _events(run)
    out: dict[str, Any] = {}
    for phase in ("before", "outage", "after"):
        inside = [s for s in run.searches if phase_of(s.sent_s, events, warmup_s) == phase]
        ok = [s for s in inside if s.status == 200]
        out[phase] = {
            **percentiles([s.ms for s in ok]),
            "failed": len(inside) - len(ok),
            "degraded": sum(1 for s in ok if s.degraded),
            "by_api_p99_ms": {
                api: percentiles([s.ms for s in ok if s.api == api])["p99_ms"]
                for api in ("crossfade", "qdrant")
            },
            # Full fusion (the new model answered the query) against degraded (old + BM25).
            "fused_p99_ms": percentiles([s.ms for s in ok if not s.degraded])["p99_ms"],
            "degraded_p99_ms": percentiles([s.ms for s in ok if s.degraded])["p99_ms"],
        }
        edits = [e for e in run.edits if phase_of(e.sent_s, events, warmup_s) == phase]
        out[phase]["edits"] = {
            "sent": len(edits),
            **dict(Counter(e.outcome for e in edits)),
            "latency": percentiles([(e.done_s - e.sent_s) * 1000 for e in edits]),
        }
    failed = [s for s in run.searches if s.status != 200]
    out["all"] = {"searches": len(run.searches), "failed": len(failed)}
    out["failed_samples"] = [f"{s.status}: {s.degraded}" for s in failed[:5]]
    before, during = out["before"]["p99_ms"], out["outage"]["p99_ms"]
    out["p99_outage_over_before"] = round(during / before, 3) if before and during else None
    return out


def run_verify(rt: Runtime) -> dict[str, Any]:
    """`crossfade verify` on the stopped proxy's data, with its count of documents old and new
    disagree on (by id: in one only, another text, other metadata)."""
    from proxy.migration.status import verify

    try:
        out = verify(rt)
    except Exception as e:  # a crash of verify is a finding, reported
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    compared = out.get("disagreements")  # None: no old index to compare (retired)
    out["disagreements_count"] = compared["count"] if compared else 0
    return out


# --- main -----------------------------------------------------------------------------------


def add_run_args(ap: argparse.ArgumentParser, name: str) -> None:
    """The options every loadtest run of this kind takes: the write key, where it works and
    where its report goes (under .crossfade/, named `name`)."""
    ap.add_argument(
        "--api-key",
        default=os.environ.get("CROSSFADE_CHAOS_API_KEY") or KEY,
        help="sent as `api-key` on writes (default $CROSSFADE_CHAOS_API_KEY, else the admin key)",
    )
    ap.add_argument("--work", default=str(ROOT / ".crossfade" / name))
    ap.add_argument("--out", default=str(ROOT / ".crossfade" / f"{name}.json"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=150, help="how long the clients run")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--docs", type=int, default=0, help="corpus size (0: all 454 passages)")
    ap.add_argument("--outage-at", type=float, help="seconds in (default: the middle)")
    ap.add_argument("--outage-s", type=float, default=30)
    ap.add_argument("--warmup-s", type=float, default=15, help="not counted in 'before'")
    ap.add_argument("--p429", type=float, default=0.1)
    ap.add_argument("--p500", type=float, default=0.1)
    ap.add_argument("--search-think-s", type=float, default=1.0, help="0 to this between searches")
    ap.add_argument("--edit-think-s", type=float, default=1.0, help="mean pause between edits")
    ap.add_argument("--backfill-share", type=float, default=0.9, help="re-embedded before serving")
    ap.add_argument("--max-ratio", type=float, default=2.0)
    ap.add_argument("--settle-timeout-s", type=float, default=300)
    add_run_args(ap, "chaos")
    args = ap.parse_args()
    if args.outage_at is None:
        args.outage_at = max(args.warmup_s + 30, (args.seconds - args.outage_s) / 2)
    if args.outage_at + args.outage_s + 10 > args.seconds:
        ap.error("--seconds leaves no time after the outage")
    if not infinity_installed():
        print("Infinity is not installed: run `make infinity`", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    docs = python_reference()
    docs = docs[: args.docs] if args.docs else docs

    def say(msg: str) -> None:
        print(f"chaos: {msg}", file=sys.stderr, flush=True)

    server = Infinity(work / "infinity.log")
    fault: FaultProxy | None = None
    proc: subprocess.Popen[bytes] | None = None
    summary: dict[str, Any] = {
        "config": {
            k: getattr(args, k)
            for k in (
                "seconds",
                "clients",
                "outage_at",
                "outage_s",
                "warmup_s",
                "p429",
                "p500",
                "search_think_s",
                "edit_think_s",
                "backfill_share",
                "max_ratio",
            )
        },
        "documents": len(docs),
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()},
    }
    try:
        say("starting Infinity (all-MiniLM-L6-v2) on 127.0.0.1")
        server.start()
        fault = FaultProxy(server.url, seed=7).start()
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config = write_config(work / "data", port, fault.url)
        t = time.monotonic()
        prepare(config, docs, args.backfill_share)
        took = time.monotonic() - t
        say(f"old index, migration started, {args.backfill_share:.0%} backfilled ({took:.0f}s)")
        fault.p429, fault.p500 = args.p429, args.p500  # from here to the end
        proc = serve(config, port, work / "proxy.log")
        collection = load_settings(config).indexes.old.collection
        say(f"serving on {url}: {args.clients} clients for {args.seconds:.0f}s, model down "
            f"{args.outage_at:.0f}-{args.outage_at + args.outage_s:.0f}s")  # fmt: skip
        run = asyncio.run(load(url, docs, fault, collection, args))
        say("clients done; waiting for the write journal and the backfill to settle")
        settled = wait_settled(url, args.settle_timeout_s)
        summary["settled"] = {
            "waited_s": settled.get("waited_s"),
            "write_journal": settled.get("write_journal"),
            "coverage": settled.get("indexes", {}).get("new", {}).get("coverage"),
        }
        try:
            metrics = httpx.get(url + "/metrics", timeout=30).text
            summary["metrics_write_journal"] = [
                x for x in metrics.splitlines() if x.startswith("crossfade_write_journal")
            ]
        except httpx.HTTPError as e:
            summary["metrics_write_journal"] = repr(e)
        stop(proc)
        summary["model_faults"] = dict(fault.faults)
        fault.p429 = fault.p500 = 0.0  # verify's own model calls are not under test
        say("proxy stopped; comparing the indexes")
        with Runtime(load_settings(config)) as rt:
            indexes = {side: read_index(rt, side) for side in ("old", "new")}
            summary["indexes"] = compare_indexes(indexes["old"], indexes["new"])
            summary["verify"] = run_verify(rt)
    finally:
        if proc is not None:
            stop(proc)
        if fault is not None:
            fault.stop()
        server.stop()

    summary["events"] = run.events
    summary["searches"] = search_figures(run, args.warmup_s)
    summary["edits"] = check_edits(docs, run.edits, indexes)
    summary["coverage_samples"] = run.samples
    s, e, ix, v = summary["searches"], summary["edits"], summary["indexes"], summary["verify"]
    ratio = s["p99_outage_over_before"]
    checks = {
        "journal_drained": (summary["settled"]["write_journal"] or {}).get("pending") == 0,
        "indexes_agree": ix["disagreements"] == 0,
        "verify_ok": bool(v.get("ok")),
        "verify_no_disagreements": v.get("disagreements_count", 0) == 0,
        "no_edit_lost": e["lost"] == 0,
        "no_refused_edit_applied": e["refused_but_present"] == 0,
        "unedited_documents_unchanged": e["unedited_changed"] == 0,
        "edits_acknowledged_in_every_phase": all(
            any(
                x.outcome == "acknowledged" and phase_of(x.sent_s, _events(run), 0) == p
                for x in run.edits
            )
            for p in ("before", "after")
        ),
        "no_search_failed": s["all"]["failed"] == 0,
        "outage_p99_within_ratio": ratio is not None and ratio <= args.max_ratio,
    }
    summary["checks"] = checks
    summary["ok"] = all(checks.values())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2, default=str))
    (work / "edits.jsonl").write_text("\n".join(json.dumps(asdict(x)) for x in run.edits) + "\n")
    (work / "searches.jsonl").write_text(
        "\n".join(json.dumps(asdict(x)) for x in run.searches) + "\n"
    )
    brief = {k: v for k, v in summary.items() if k != "coverage_samples"}
    print(json.dumps(brief, indent=2, default=str))
    failed = ", ".join(k for k, ok in checks.items() if not ok)
    say(f"p99 before {s['before']['p99_ms']} ms, during the outage {s['outage']['p99_ms']} ms "
        f"(x{ratio}); edits {e['outcomes']}; disagreements {ix['disagreements']}; "
        f"{'ok' if summary['ok'] else 'FAILED: ' + failed}")  # fmt: skip
    return 0 if summary["ok"] else 1


def _events(run: Run) -> dict[str, float]:
    times = {e["event"]: e["t_s"] for e in run.events}
    return {"down": times["model server stopped"], "up": times["model server back"]}


if __name__ == "__main__":
    sys.exit(main())
