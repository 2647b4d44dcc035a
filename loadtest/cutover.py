"""Scenario `cutover`: a cutover and a rollback in the middle of a bounded load.

    python loadtest/cutover.py [--clients 16] [--requests 2000]

Builds the demo migration (Python reference, old L3 -> new MiniLM-L6), backfills it to 100%,
starts `crossfade serve` as a real process on 127.0.0.1, and sends the load; after a third of
the requests it cuts over (through the eval gate), after two thirds it rolls back. Reports
latency, QPS, failed requests and responses that mixed modes (both must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtest.harness import free_port, run_load, wait_ready  # noqa: E402
from proxy.config import load_settings  # noqa: E402
from proxy.demo import python_reference, write_eval_set  # noqa: E402
from proxy.document import Doc  # noqa: E402
from proxy.ingest import ingest  # noqa: E402
from proxy.migration.start import start_migration  # noqa: E402
from proxy.migration.worker import Reembedder  # noqa: E402
from proxy.runtime import Runtime  # noqa: E402

KEY = "loadtest-admin-key"


def prepare(
    data_dir: Path, port: int, models: dict[str, Any] | None = None, docs: list[Doc] | None = None
) -> Path:
    """A finished demo migration (100% coverage) of `docs` (default: the whole demo corpus)
    and a config for a proxy serving it."""
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["data_dir"] = str(data_dir)
    cfg["server"].update({"port": port, "admin_key": KEY})
    cfg["cutover"] = {"eval_set": str(data_dir / "eval")}
    path = data_dir / "crossfade.yaml"
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    rt = Runtime(load_settings(path), models)
    try:
        docs = docs or python_reference()
        ingest(rt, "old", docs, progress=False)
        start_migration(rt, strategy="lazy", progress=False)
        worker = Reembedder(rt)
        while worker.step() or worker.refill():
            pass
        write_eval_set(data_dir / "eval", docs)
    finally:
        rt.close()
    return path


def queries() -> list[str]:
    docs = python_reference()
    heads = [next(x for x in d.text.splitlines() if x.strip()) for d in docs[::5]]
    return heads + ["how do I catch an exception", "what does yield do", "class definition"]


def serve(config: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "--config", str(config), "serve"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
    except RuntimeError:
        proc.kill()
        raise
    return proc


def run(
    data_dir: Path,
    clients: int,
    requests: int,
    models: dict[str, Any] | None = None,
    docs: list[Doc] | None = None,
) -> dict:
    port = free_port()
    config = prepare(data_dir, port, models, docs)
    url = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {KEY}"}

    async def cutover() -> Any:
        async with httpx.AsyncClient(base_url=url, timeout=600) as c:
            r = await c.post("/admin/cutover", json={"actor": "loadtest"}, headers=admin)
            body = r.json()
            gate = body.get("gate", body)
            return {
                "status": r.status_code,
                "gate_ok": gate.get("ok"),
                "refused_because": gate.get("refused_because"),
                "old": gate.get("old"),
                "new": gate.get("new"),
            }

    async def rollback() -> Any:
        async with httpx.AsyncClient(base_url=url, timeout=600) as c:
            r = await c.post("/admin/rollback", json={"actor": "loadtest"}, headers=admin)
            return {"status": r.status_code, "to": r.json().get("to", {}).get("mode")}

    proc = serve(config, port)
    try:
        report = asyncio.run(
            run_load(
                url,
                queries(),
                clients=clients,
                requests=requests,
                max_seconds=900,
                headers=lambda c: {"X-Client-Key": f"client-{c}"},
                actions=[(1 / 3, cutover, "cutover"), (2 / 3, rollback, "rollback")],
            )
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return report.summary()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--data-dir", default=str(ROOT / ".crossfade" / "loadtest-cutover"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    summary = run(Path(args.data_dir), args.clients, args.requests)
    print(json.dumps(summary, indent=2))
    return 0 if summary["errors"] == 0 and summary["inconsistent"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
