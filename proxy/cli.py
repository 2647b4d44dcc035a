"""`crossfade` command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import orjson

# Models are loaded from local paths only; never reach for a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DEFAULT_CONFIG = "config/demo.yaml"
EVAL_CONFIG = "config/scifact.yaml"
COVERAGES = [0, 25, 50, 75, 100]  # where `tune` fits a knot
BACKENDS = ("edge", "chroma")  # where `eval` and `tune` simulate (proxy/experiment.py)


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def _print_json_line(obj: Any) -> None:
    """One compact JSON line on stderr: machine-readable progress beside the log."""
    sys.stderr.write(orjson.dumps(obj).decode() + "\n")


def _settings(args: argparse.Namespace, default: str = DEFAULT_CONFIG, **overrides: Any) -> Any:
    from proxy.config import load_settings
    from proxy.logs import quiet_libraries

    path = args.config or os.environ.get("CROSSFADE_CONFIG") or default
    settings = load_settings(path, **overrides)
    quiet_libraries(settings.server.log_level)  # before any model library is imported
    return settings


def _percent(text: str) -> float:
    """A percentage such as 10% or 10, within 0..100 (argparse type)."""
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage such as 10%") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is outside 0% to 100%")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.app import create_app
    from proxy.config import ConfigError
    from proxy.migration.cutover import describe
    from proxy.runtime import Runtime
    from proxy.security import exposure_problem, reads_need_key

    settings = _settings(args)
    if args.host:  # the address served decides who may read (and the Host allow-list)
        settings.server.host = args.host
    host = settings.server.host
    port = args.port or settings.server.port
    problem = exposure_problem(settings.server)
    if problem:  # before any model loads: a refusal costs nothing
        raise ConfigError(problem)
    rt = Runtime(settings)
    # Load both models before listening: a model that cannot load stops start-up here, with
    # one line naming the side, its path and why (uvicorn is never started).
    for side in ("old", "new"):
        try:
            rt.model(side)
        except RuntimeError as e:
            raise RuntimeError(" ".join(f"{side} model: {e}".split())) from None
    app = create_app(rt)
    # The serving pointer the app just loaded (not the config's `mode`, which only seeds it).
    routing = app.state.control.routing
    print(f"crossfade: serving {describe(routing)} on http://{host}:{port}", file=sys.stderr)
    server = settings.server
    print(  # how many keys of each kind, never the keys
        f"crossfade: reads {'need a key' if reads_need_key(server) else 'open (loopback)'}; "
        f"writes need a read-write key ({len(server.api_keys)} configured) or the admin key; "
        f"{len(server.read_only_api_keys)} read-only key(s)",
        file=sys.stderr,
    )
    level = settings.server.log_level
    logging.basicConfig(level=level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    uvicorn.run(app, host=host, port=port, log_level=level)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Re-embed from the fleet's shared queue (no HTTP): as many as the backfill needs, on as
    many machines; SIGTERM or Ctrl-C stops it after the batch in flight."""
    import asyncio
    import signal

    from proxy.config import ConfigError
    from proxy.migration.worker import work
    from proxy.runtime import Runtime

    settings = _settings(args)
    if settings.state.url is None:
        raise ConfigError(
            "state.url: `crossfade worker` shares the migration's queue with the other "
            "processes of a fleet through PostgreSQL (state.url); alone, `crossfade serve` "
            "re-embeds itself"
        )
    level = settings.server.log_level
    logging.basicConfig(level=level.upper(), format="%(levelname)s:     %(name)s: %(message)s")

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with Runtime(settings) as rt:
            rt.model("new")  # a model that can't load stops the worker here, named
            print(f"crossfade: worker on the shared state at {rt.state.where}", file=sys.stderr)
            with contextlib.suppress(asyncio.CancelledError):
                await work(rt)

    asyncio.run(main())
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from proxy.ingest import ingest, read_jsonl
    from proxy.runtime import Runtime
    from proxy.writes import ingest_both, live_sides

    with Runtime(_settings(args)) as rt:
        docs, progress = read_jsonl(args.file), not args.quiet
        if args.index == "old" and "new" in live_sides(rt):  # a migration runs: dual write
            result = ingest_both(rt, docs, progress=progress)
        else:
            result = ingest(rt, args.index, docs, progress=progress)
    _print_json(result)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from proxy.migration.start import start_migration
    from proxy.runtime import Runtime

    with Runtime(_settings(args)) as rt:
        result = start_migration(
            rt,
            strategy=args.strategy,
            progress=not args.quiet,
            into=args.into,
            in_place=args.in_place,
            vector=args.vector,
        )
    _print_json(result)
    return 0


def cmd_exclude(args: argparse.Namespace) -> int:
    """Migrate without documents that cannot be re-embedded (listed by `crossfade status`):
    an operator's decision, so it is recorded in the audit log."""
    from proxy.migration.cutover import AuditLog
    from proxy.state.open import open_state

    settings = _settings(args)
    state = open_state(settings)
    try:
        actor = _actor()
        excluded = state.exclude(args.ids, actor)
        unknown = [d for d in args.ids if d not in excluded]
        if excluded:
            AuditLog(state).append({"action": "migrate exclude", "actor": actor, "ids": excluded})
        left = state.unembeddable()["count"]
    finally:
        state.close()
    _print_json({"excluded": excluded, "not_listed": unknown, "still_blocking": left})
    if unknown:
        print(
            f"crossfade: not listed as unembeddable (see `crossfade status`): {unknown}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_finish(args: argparse.Namespace) -> int:
    """Through the running proxy if one answers (it owns the pointer and the shards), else
    on the stores directly."""
    settings = _settings(args)
    body = {"now": args.now, "drop": args.drop, "actor": _actor()}
    r = _call_proxy(settings, "POST", "/admin/finish", body)
    if r is not None:
        if r.status_code >= 400:
            print(f"crossfade: {_in_words(r)}", file=sys.stderr)
            return 1
        _print_json(r.json())
        return 0
    from proxy.migration.cutover import AuditLog, load_routing, save_routing
    from proxy.migration.finish import FinishRefused, finish_migration
    from proxy.runtime import Runtime

    with Runtime(settings) as rt:
        routing, _ = load_routing(rt.state, settings)
        try:
            entry = finish_migration(
                rt, routing, AuditLog(rt.state), body["actor"], args.now, args.drop
            )
        except FinishRefused as e:
            print(f"crossfade: {e}", file=sys.stderr)
            return 1
        save_routing(rt.state, routing, None)
    _print_json(entry)
    return 0


def _proxy_url(settings: Any) -> str:
    host = settings.server.host if settings.server.host not in ("0.0.0.0", "::") else "127.0.0.1"
    return f"http://{host}:{settings.server.port}"


def _call_proxy(settings: Any, method: str, path: str, body: Any = None) -> Any | None:
    """One request to the running proxy, with the admin key; None if no proxy answers."""
    import httpx

    from proxy.security import admin_key

    headers = {"Authorization": f"Bearer {admin_key(settings)}"}
    try:
        return httpx.request(
            method, _proxy_url(settings) + path, json=body, headers=headers, timeout=900
        )
    except httpx.TransportError:
        return None


def _ask_proxy(settings: Any, method: str, path: str, body: Any = None) -> Any | None:
    """The running proxy owns the embedded shards; ask it first. None if it is not running."""
    r = _call_proxy(settings, method, path, body)
    if r is None:
        return None
    if r.status_code >= 400:
        raise RuntimeError(_in_words(r))
    return r.json()


def _in_words(r: Any) -> str:
    """A refusal as a sentence: the proxy's error, then each field at fault and why (not the
    raw validation JSON)."""
    try:
        body = r.json()
    except ValueError:
        return f"proxy answered {r.status_code}: {r.text[:300]}"
    lines = [f"{body.get('error', 'refused')} (HTTP {r.status_code})"]
    for p in body.get("problems") or []:
        field = str(p.get("field", "")).removeprefix("body.")
        lines.append(f"  {field}: {p['message']}" if p.get("message") else f"  {field}")
    return "\n".join(lines)


def _from_proxy_or_stores(settings: Any, path: str, local: Any) -> Any:
    """Ask the running proxy (it owns the embedded shards); if none runs, open the stores."""
    out = _ask_proxy(settings, "GET", path)
    if out is None:
        from proxy.runtime import Runtime

        with Runtime(settings) as rt:
            out = local(rt)
    return out


def _local_status(rt: Any) -> dict[str, Any]:
    """`GET /migration` without a proxy: the stores' counts and the persisted pointer."""
    from proxy.migration.cutover import load_routing
    from proxy.migration.status import migration_status
    from proxy.routing import routing_dict

    return {**migration_status(rt), "routing": routing_dict(load_routing(rt.state, rt.settings)[0])}


def cmd_status(args: argparse.Namespace) -> int:
    from proxy.migration.cutover import describe
    from proxy.routing import parse_routing

    settings = _settings(args)
    out = _from_proxy_or_stores(settings, "/migration", _local_status)
    if args.json:
        _print_json(out)
        return 0
    print(f"serving: {describe(parse_routing(out['routing']))}")
    for side, ix in out["indexes"].items():
        if ix.get("reachable") is False:
            print(f"{side:>4}: {ix['error']}")
            continue
        print(
            f"{side:>4}: {ix['documents']} documents, {ix['with_vector']} with vectors "
            f"({100 * ix['coverage']:.1f}%), bound to {ix['bound_fingerprint']}"
        )
        for fp, n in ix["fingerprints"].items():
            print(f"        {n:>8}  {fp}")
    fusion = out["fusion"]
    now = " ".join(f"{n} {w:g}" for n, w in fusion["weights_now"].items())
    fit = fusion.get("fit") or {}
    print(
        f"fusion: {fusion['source']}; weights now {now}; missing new rank from "
        f"{'+'.join(fusion['impute_from'])}"
        + (f"; stored fit ignored: {fit['ignored']}" if fit.get("ignored") else "")
    )
    qmap = out.get("query_map")  # served by a running proxy only
    if qmap and qmap["fitted"]:
        print(
            f"query map (apps' old-model vectors): fitted on {qmap['pairs']} pairs, fidelity "
            f"{qmap['fidelity']:g} (needs {qmap['min_fidelity']:g}): "
            + ("used" if qmap["used"] else "not used, old index alone")
        )
    elif qmap:
        print(f"query map: not fitted yet (needs {qmap['min_pairs']} migrated documents)")
    q, ctl, state = out["queue"], out["control"], out["worker_state"]
    worker = f"worker {state}"
    if state == "running":  # a rate only while documents are being re-embedded
        eta = f"{out['eta_s']:.0f}s" if out["eta_s"] is not None else "-"
        worker += f", rate {out['rate_docs_per_s']} docs/s, ETA {eta}"
    backfill = f"backfill {'on' if ctl['backfill'] else 'off'} until {ctl['until']:g}%"
    lazy = f"lazy {'on' if ctl['lazy'] else 'off'}"
    print(f"queue: {q['hits']} hits + {q['backfill']} backfill; {worker}; {backfill}; {lazy}")
    for m in out.get("fleet") or []:  # a fleet: every process that beat lately
        rate = f", {m['rate_docs_per_s']} docs/s" if m.get("rate_docs_per_s") else ""
        print(f"fleet: {m['name']} ({m['role']}): {m.get('state', '?')}{rate}, {m['age_s']}s ago")
    done = out.get("reembedded") or {}
    if done.get("embeddings"):
        print(
            f"re-embedded: {done['documents']} documents, {done['embeddings']} embeddings "
            f"({done['duplicates']} duplicate embeddings: documents embedded again)"
        )
    u = out["unembeddable"]
    if u["count"]:
        ids = ", ".join(f"{i['doc_id']} ({i['why']})" for i in u["ids"][:10])
        more = " ..." if u["count"] > 10 else ""
        print(
            f"CANNOT BE RE-EMBEDDED: {u['count']} documents, blocking cutover until given text "
            f"or excluded (crossfade migrate exclude ID...): {ids}{more}"
        )
    j = out["write_journal"]
    if j["pending"]:
        retry = f", next retry in {j['next_retry_in_s']:g}s" if j["retrying"] else ""
        print(
            f"WRITES NOT YET IN EVERY INDEX: {j['pending']} batch(es), oldest "
            f"{j['oldest_age_s']:g}s, {j['max_attempts']} failed attempt(s){retry}; "
            f"last error: {j['last_error']}"
        )
    for line in spend_lines(out):
        print(line)
    return 0


def spend_lines(out: dict[str, Any]) -> list[str]:
    """`crossfade status`'s lines on a hosted new model: spend against the cap, drift."""
    lines = []
    spend = out.get("spend") or {}
    if spend.get("tokens") or spend.get("max_spend"):
        cap = spend["max_spend"]
        line = (
            f"spend: {spend['tokens']} tokens in {spend['requests']} requests, "
            f"{spend['cost']:g} at {spend['price_per_million_tokens']:g}/M tokens"
            + (f", cap {cap:g}" if cap else ", no cap")
        )
        if spend["capped"]:
            line += "; re-embedding STOPPED at the cap (raise it: backfill limit --max-spend)"
        lines.append(line)
    for side, alarm in (out.get("model_drift") or {}).items():
        lines.append(f"DRIFT ({side} model): {alarm['message']}")
    return lines


def cmd_backfill(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.ray is not None:
        if args.action is not None:
            raise ValueError("backfill --ray runs the backfill; pause or resume it apart")
        from proxy.migration.ray_backfill import backfill_on_ray, say_stderr

        # Ray prints its own notices (a task retried after its actor died) on stdout: there
        # they would break the JSON of the result.
        with contextlib.redirect_stdout(sys.stderr):
            out = backfill_on_ray(settings, args.ray, args.actors, say_stderr)
        _print_json(out)
        return 0
    if args.action is None:
        raise ValueError("backfill needs an action (pause, resume, on, off, limit) or --ray")
    body: dict[str, Any] = {}
    if args.action in ("pause", "resume"):
        body["action"] = args.action
    if args.action in ("on", "off"):
        body["backfill"] = args.action == "on"
    if args.until is not None:
        body["until"] = args.until
    if args.max_spend is not None:
        body["max_spend"] = args.max_spend
    if args.action == "limit" and args.until is None and args.max_spend is None:
        raise ValueError("backfill limit needs --until (e.g. --until 50%) or --max-spend")
    body["actor"] = _actor()
    out = _ask_proxy(settings, "POST", "/migration/backfill", body)
    if out is None:  # proxy not running: persist the control for its next start (audited)
        from proxy.migration.control import ControlPlane
        from proxy.runtime import Runtime

        with Runtime(settings) as rt:
            out = ControlPlane(rt).steer_backfill(
                body["actor"],
                body.get("action"),
                body.get("backfill"),
                body.get("until"),
                body.get("max_spend"),
            )
    _print_json(out)
    return 0


def cmd_canary(args: argparse.Namespace) -> int:
    """Through the running proxy; with none, on the stores' state directly (audited)."""
    settings = _settings(args)
    body = {"action": args.action, "actor": _actor()}
    out = _ask_proxy(settings, "POST", "/admin/canary", body)
    if out is None:
        from proxy.migration.canary import accept_drift, check_canaries, drift_alarms
        from proxy.migration.cutover import AuditLog
        from proxy.runtime import Runtime

        with Runtime(settings) as rt:
            if args.action == "check":
                out = {"checked": check_canaries(rt), "drift": drift_alarms(rt)}
            else:
                lifted = accept_drift(rt)
                AuditLog(rt.state).append(
                    {"action": "canary accept", "actor": body["actor"], "lifted": lifted}
                )
                out = {"lifted": lifted, "drift": drift_alarms(rt)}
    _print_json(out)
    return 1 if out.get("drift") else 0


def _actor() -> str:
    return os.environ.get("CROSSFADE_ACTOR") or os.environ.get("USER") or "cli"


def _admin_call(args: argparse.Namespace, path: str, body: dict[str, Any]) -> int:
    """Admin actions go through the running proxy: it owns the serving pointer. A success
    prints the answer (JSON); a refusal says why in words on stderr, after the gate's
    numbers if a gate refused it."""
    settings = _settings(args)
    r = _call_proxy(settings, "POST", path, body)
    if r is None:
        raise RuntimeError(f"no proxy answering at {_proxy_url(settings)}")
    if r.status_code < 400:
        _print_json(r.json())
        return 0
    gate = r.json().get("gate") if r.headers.get("content-type", "").endswith("json") else None
    if gate:
        _print_json(gate)
    print(f"crossfade: {_in_words(r)}", file=sys.stderr)
    for why in (gate or {}).get("refused_because", []):
        print(f"  {why}", file=sys.stderr)
    return 1


def cmd_cutover(args: argparse.Namespace) -> int:
    body = {
        "beir": str(Path(args.beir).resolve()) if args.beir else None,
        "split": args.split,
        "force": args.force,
        "actor": _actor(),
    }
    return _admin_call(args, "/admin/cutover", body)


def cmd_rollback(args: argparse.Namespace) -> int:
    return _admin_call(args, "/admin/rollback", {"actor": _actor()})


def cmd_mode(args: argparse.Namespace) -> int:
    body = {"mode": args.mode, "force": args.force, "actor": _actor()}
    return _admin_call(args, "/admin/mode", body)


def cmd_split(args: argparse.Namespace) -> int:
    mode = None if args.mode == "none" else args.mode
    body = {"mode": mode, "percent": args.percent, "force": args.force, "actor": _actor()}
    return _admin_call(args, "/admin/split", body)


def cmd_drift(args: argparse.Namespace) -> int:
    from proxy.migration.control import ControlPlane
    from proxy.migration.drift import drift_report

    settings = _settings(args)
    out = _from_proxy_or_stores(
        settings, "/drift", lambda rt: drift_report(rt, ControlPlane(rt).modes_in_use())
    )
    _print_json(out)
    for side, ix in out["indexes"].items():
        if ix["alarm"]:
            print(
                f"crossfade: DRIFT in the serving {side} index (bound to "
                f"{ix['bound_fingerprint']}): foreign vectors {ix['foreign']}",
                file=sys.stderr,
            )
    return 1 if out["alarm"] else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from proxy.migration.plan import plan

    settings = _settings(args)
    query = f"?sample={args.sample}" if args.sample else ""
    out = _from_proxy_or_stores(settings, "/admin/plan" + query, lambda rt: plan(rt, args.sample))
    if args.docs:
        from proxy.migration.plan import capacity

        tpm = (
            {k: int(v) for k, v in (kv.split("=") for kv in args.tpm.split(","))}
            if args.tpm
            else None
        )
        # Rates: this corpus's sample, measured just now, unless measured elsewhere and given
        # (the worker's own rate from loadtest/scale.py); a GPU's only if given.
        out["capacity"] = capacity(
            args.docs,
            args.tokens_per_doc or out["tokens"]["per_doc"],
            args.cpu_docs_per_s or out["docs_per_s_full_speed"],
            args.store_points_per_s,
            settings.plan.price_per_million_tokens,
            _ints(args.workers),
            gpu_docs_per_s=args.gpu_docs_per_s,
            gpus=_ints(args.gpus),
            tpm=tpm,
            cpu_worker_hour=args.cpu_worker_hour,
            gpu_hour=args.gpu_hour,
        )
        out["capacity"]["tokens_per_doc_from"] = (
            "--tokens-per-doc"
            if args.tokens_per_doc
            else f"{out['tokens']['counted_by']} of the configured new model on the sample "
            "(an API model counting with another tokenizer: pass --tokens-per-doc)"
        )
        out["capacity"]["cpu_rate_from"] = (
            "--cpu-docs-per-s" if args.cpu_docs_per_s else "the new model on the sample, now"
        )
    _print_json(out)
    return 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def cmd_optimize(args: argparse.Namespace) -> int:
    """Build the HNSW index of an embedded shard, offline. qdrant-edge's optimize() holds the
    GIL for its whole run (tens of seconds at 100k points), so the proxy never calls it: run
    this with the proxy stopped (the shard's lock refuses it otherwise)."""
    import time

    from proxy.runtime import Runtime

    settings = _settings(args)
    if getattr(settings.indexes, args.index).backend != "edge":
        raise RuntimeError("optimize is for the embedded engine; a Qdrant server optimizes itself")
    with Runtime(settings) as rt:
        store = rt.store(args.index)
        t0 = time.perf_counter()
        changed = store.shard.optimize()  # type: ignore[attr-defined]
        _print_json(
            {
                "index": args.index,
                "optimized": changed,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from proxy.migration.status import verify
    from proxy.runtime import Runtime

    with Runtime(_settings(args)) as rt:
        out = verify(rt, sample=args.sample, repair=args.repair)
    _print_json(out)
    return 0 if out["ok"] else 1


def _coverages(text: str | None) -> list[int]:
    if not text:
        return [100]
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise SystemExit(f"--simulate-coverage: expected integers like 0,25,50: {e}") from e
    if not values or any(v < 0 or v > 100 for v in values):
        raise SystemExit("--simulate-coverage: percentages must lie in 0..100")
    return values


def cmd_eval(args: argparse.Namespace) -> int:
    from proxy.experiment import evaluate, format_table, vector_share

    settings = _settings(args, EVAL_CONFIG)
    ev = evaluate(
        settings,
        args.beir,
        args.split,
        _coverages(args.simulate_coverage),
        seed=args.seed,
        progress=not args.json,
        tune=args.tune,
        min_fit_queries=args.min_queries,
        backend=args.backend,
        url=args.chroma_url,
    )
    if ev.tuned is not None:
        from proxy.migration.fitted import profile_dict

        print(f"crossfade-tuned: {ev.how}", file=sys.stderr)
        print(orjson.dumps(profile_dict(ev.tuned)).decode(), file=sys.stderr)
    if args.json:
        _print_json({"coverage": ev.result, "adapter": ev.adapter})
    else:
        print(f"{args.beir} split={args.split}: {ev.docs} docs, {len(ev.scored)} queries scored")
        for metric in ("ndcg@10", "recall@100"):
            print(f"\n{metric}")
            print(format_table(ev.result, metric))
        print("\nvector: old-model query vectors (old index + query map, proxy/adapter.py)")
        for pct, a in ev.adapter.items():
            fit = (
                f"fidelity {a['fidelity']:+.3f} (held-out neighbours: map {a['agreement']:.3f}"
                f", old model {a['old_agreement']:.3f}, {a['held_out']} pairs)"
                if "fidelity" in a
                else "no map"
            )
            use = "served" if a["used"] else "not served: old index only"
            print(f"{pct + '%':>8} {a['pairs']:>7} pairs, {fit}, {use}")
        if ev.result:
            top, share = vector_share(ev.result)
            print(f"vector / crossfade nDCG@10 at {top}%: {share:.3f}")
    if args.plot:
        from proxy.plot import plot_quality

        title = f"{Path(args.beir).name}: nDCG@10 during a migration ({len(ev.scored)} queries)"
        out = plot_quality(ev.result, args.plot, title=title)
        print(f"chart written to {out}", file=sys.stderr)
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """Fit the fusion on labelled queries and store it with the migration state, where the
    serving path picks it up (a running proxy within seconds)."""
    from proxy.experiment import evaluate
    from proxy.migration.cutover import AuditLog
    from proxy.migration.fitted import profile_dict, save_fit
    from proxy.runtime import Runtime

    settings = _settings(args, EVAL_CONFIG)
    beir = args.beir or (
        settings.data_path(settings.cutover.eval_set) if settings.cutover.eval_set else None
    )
    if beir is None:
        raise SystemExit("tune: give --beir DIR or set cutover.eval_set")
    split = args.split or settings.cutover.eval_split
    ev = evaluate(
        settings,
        beir,
        split,
        COVERAGES,
        seed=args.seed,
        progress=True,
        tune=True,
        min_fit_queries=args.min_queries,
        backend=args.backend,
        url=args.chroma_url,
    )
    assert ev.tuned is not None
    if ev.tuned.source == "default rule":
        raise SystemExit(f"tune: nothing stored: {ev.how}")
    out: dict[str, Any] = {"fusion": profile_dict(ev.tuned), "how": ev.how, "held_out": ev.result}
    if not args.dry_run:
        held_out = {
            pct: {s: m["ndcg@10"] for s, m in systems.items()} for pct, systems in ev.result.items()
        }
        with Runtime(settings) as rt:
            save_fit(rt.state, ev.tuned, rt.fingerprints(), how=ev.how, held_out=held_out)
            AuditLog(rt.state).append(
                {"action": "fusion fitted", "actor": "cli", "fit": profile_dict(ev.tuned)}
            )
            out["stored"] = rt.state.where
    _print_json(out)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Set up the demo migration (idempotent) and serve it."""
    from proxy.demo import python_reference, write_eval_set
    from proxy.ingest import ingest
    from proxy.migration.start import start_migration
    from proxy.runtime import Runtime

    settings = _settings(args)
    with Runtime(settings) as rt:
        docs = python_reference()
        print(f"demo: {len(docs)} passages of the Python language reference", file=sys.stderr)
        _print_json_line({"ingest": ingest(rt, "old", docs)})
        if rt.state.get("migration") is None:
            _print_json_line({"migration": start_migration(rt)})
        if settings.cutover.eval_set:
            write_eval_set(settings.data_path(settings.cutover.eval_set), docs)
    return cmd_serve(args)


def cmd_config_reference(args: argparse.Namespace) -> int:
    from proxy.config import reference_markdown

    print(reference_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="crossfade", description=__doc__)
    p.add_argument("--config", help=f"YAML config (default $CROSSFADE_CONFIG or {DEFAULT_CONFIG})")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the proxy")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("worker", help="re-embed from a fleet's shared queue (state.url)")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("demo", help="ingest the demo corpus, start a migration, serve")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("ingest", help="embed a JSONL corpus into an index (resumable)")
    s.add_argument("--index", choices=["old", "new"], required=True)
    s.add_argument("file")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("migrate", help="migration control")
    msub = s.add_subparsers(dest="action", required=True)
    m = msub.add_parser("start", help="create the new index and seed every document (BM25)")
    m.add_argument("--strategy", choices=["lazy", "shadow", "rebuild"], default="lazy")
    m.add_argument("--quiet", action="store_true")
    where = m.add_mutually_exclusive_group()
    where.add_argument(
        "--into",
        metavar="COLLECTION",
        help="adopted collection: the new index is a new collection beside it, in its layout "
        "(cutover moves the alias COLLECTION_serving)",
    )
    where.add_argument(
        "--in-place",
        action="store_true",
        help="the new index is a new named vector (+ BM25) in the old index's collection "
        "(adopted) or edge shard, beside the old vector",
    )
    m.add_argument("--vector", help="name of the new vector with --in-place (default: model name)")
    m.set_defaults(func=cmd_migrate)
    m = msub.add_parser(
        "exclude", help="migrate without documents that cannot be re-embedded (audited)"
    )
    m.add_argument("ids", nargs="+", metavar="ID", help="doc ids `crossfade status` lists")
    m.set_defaults(func=cmd_exclude)
    m = msub.add_parser(
        "finish", help="after a cutover: stop dual writes, retire the old index, audit it"
    )
    m.add_argument("--now", action="store_true", help="skip migration.finish_guard_s")
    keep = m.add_mutually_exclusive_group()
    keep.add_argument("--drop", action="store_true", help="delete the old index / old vector")
    keep.add_argument("--keep", action="store_true", help="keep it, unused (the default)")
    m.set_defaults(func=cmd_finish)

    s = sub.add_parser("config-reference", help="print the config reference (markdown)")
    s.set_defaults(func=cmd_config_reference)

    s = sub.add_parser("status", help="coverage, fingerprints, queue, rate and ETA")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser(
        "backfill", help="pause/resume the re-embed worker, switch or limit backfill"
    )
    s.add_argument("action", nargs="?", choices=["pause", "resume", "on", "off", "limit"])
    s.add_argument(
        "--until", type=_percent, help="stop the background sweep at this coverage, e.g. 50%%"
    )
    s.add_argument(
        "--max-spend",
        type=float,
        help="the migration's spend cap (0 = none); re-embedding resumes when raised",
    )
    s.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the backfill as a Ray Data job on the Ray cluster at ADDRESS (e.g. "
        "ray://head:10001 or head:6379; needs state.url and `pip install 'crossfade[ray]'`)",
    )
    s.add_argument(
        "--actors", type=int, default=2, help="with --ray: actors embedding (one GPU each)"
    )
    s.set_defaults(func=cmd_backfill)

    s = sub.add_parser(
        "canary", help="re-check hosted models' canaries, or accept a drift (lifts the refusal)"
    )
    s.add_argument("action", choices=["check", "accept"])
    s.set_defaults(func=cmd_canary)

    s = sub.add_parser("cutover", help="gated, atomic switch to the new index (via the proxy)")
    s.add_argument("--beir", help="BEIR dir of labelled queries (default: cutover.eval_set)")
    s.add_argument("--split", help="qrels split (default: cutover.eval_split)")
    s.add_argument("--force", action="store_true", help="switch even if the gate refuses")
    s.set_defaults(func=cmd_cutover)

    s = sub.add_parser("rollback", help="undo the last cutover (refused if there is none to undo)")
    s.set_defaults(func=cmd_rollback)

    force_new = "serve `new` below cutover.min_coverage anyway (answers marked degraded)"
    s = sub.add_parser("mode", help="set the base serving mode")
    s.add_argument("mode", choices=["old", "shadow", "fused", "new"])
    s.add_argument("--force", action="store_true", help=force_new)
    s.set_defaults(func=cmd_mode)

    s = sub.add_parser("split", help="route a sticky share of clients to another mode")
    s.add_argument("--mode", required=True, choices=["old", "shadow", "fused", "new", "none"])
    s.add_argument("--percent", required=True, type=_percent, help="e.g. 10%%")
    s.add_argument("--force", action="store_true", help=force_new)
    s.set_defaults(func=cmd_split)

    s = sub.add_parser("drift", help="fingerprint distribution; exits 1 if a serving index drifts")
    s.set_defaults(func=cmd_drift)

    s = sub.add_parser("plan", help="estimate re-embed time, tokens, cost and storage")
    s.add_argument("--sample", type=int, help="documents embedded to measure speed")
    s.add_argument("--docs", type=int, help="capacity plan for this many documents (e.g. 10M)")
    s.add_argument("--workers", default="1,8,32", help="CPU worker counts to plan for")
    s.add_argument(
        "--cpu-docs-per-s",
        type=float,
        help="one CPU worker's measured rate (default: the new model on this sample, now)",
    )
    s.add_argument("--gpu-docs-per-s", type=float, help="one GPU's measured rate (no default)")
    s.add_argument("--gpus", default="1,8,32", help="GPU counts to plan for")
    s.add_argument("--tokens-per-doc", type=float, help="default: counted on the sample")
    s.add_argument(
        "--store-points-per-s",
        type=float,
        help="the vector store's measured write rate (loadtest/scale.py's seeding rate)",
    )
    s.add_argument(
        "--tpm",
        help="API tokens-per-minute limits, name=TPM,... (default: OpenAI's published "
        "text-embedding-3-small tiers)",
    )
    s.add_argument("--cpu-worker-hour", type=float, help="price of one CPU worker-hour")
    s.add_argument("--gpu-hour", type=float, help="price of one GPU-hour")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("optimize", help="build an embedded shard's HNSW index (proxy stopped)")
    s.add_argument("--index", choices=["old", "new"], required=True)
    s.set_defaults(func=cmd_optimize)

    s = sub.add_parser("verify", help="check every point of the new index (stop the proxy first)")
    s.add_argument("--sample", type=int, default=64, help="vectors re-embedded and compared")
    s.add_argument(
        "--repair",
        action="store_true",
        help="rewrite a BM25 sidecar (a Chroma index's) from its collection where they differ, "
        "or rebuild it where it is missing",
    )
    s.set_defaults(func=cmd_verify)

    for name, func, helptext in (
        ("eval", cmd_eval, "quality of old/new/BM25/RRF/crossfade on a BEIR dataset"),
        ("tune", cmd_tune, "fit the fusion on labelled queries and store it for serving"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument(
            "--beir",
            required=name == "eval",
            help="BEIR dir: queries.jsonl, qrels (+ a train split if it has one) and "
            "corpus.jsonl (empty: the corpus of the old index)"
            + ("" if name == "eval" else "; default cutover.eval_set"),
        )
        s.add_argument("--split", default="test" if name == "eval" else None)
        s.add_argument("--seed", type=int, default=0)
        s.add_argument(
            "--min-queries",
            type=int,
            help="fewest fitting queries a fit needs (default 50); fewer keep the label-free rule",
        )
        s.add_argument(
            "--backend",
            choices=BACKENDS,
            default="edge",
            help="where the simulation's scratch indexes live: embedded edge shards, or two "
            "Chroma collections (default: an embedded Chroma under the eval directory)",
        )
        s.add_argument(
            "--chroma-url",
            metavar="URL",
            help="with --backend chroma: a running Chroma server (http://HOST:PORT) to hold "
            "the scratch collections instead (nothing is started)",
        )
        if name == "eval":
            s.add_argument("--simulate-coverage", help="comma-separated percentages, e.g. 0,50,100")
            s.add_argument("--json", action="store_true", help="print one JSON object")
            s.add_argument("--plot", metavar="FILE.png", help="also draw nDCG@10 against coverage")
            s.add_argument(
                "--tune",
                action="store_true",
                help="also fit the fusion on queries left out of every figure and report it "
                "as crossfade-tuned",
            )
        else:
            s.add_argument("--dry-run", action="store_true", help="fit and report; store nothing")
        s.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    from proxy.config import ConfigError
    from proxy.errors import CrossfadeError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"crossfade: {e}", file=sys.stderr)
        return 2
    except (CrossfadeError, FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"crossfade: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
