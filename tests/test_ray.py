"""`crossfade backfill --ray` against a real local Ray cluster (`ray start --head` on
127.0.0.1, 2 CPUs, started and stopped here), a real PostgreSQL (the fleet's shared state)
and a real Chroma server, with the fleet's config (loadtest/fleet.py) and the demo's local
new model (all-MiniLM-L6-v2, ONNX).

What it shows: a backfill through 2 actors completes, `crossfade verify` clean, no document
embedded twice beyond 2%; a pause stops the job; a Ray worker process SIGKILLed mid-run loses
nothing (its batch is retried by Ray: claimed and skipped, never written twice; the documents
it held are taken by a later round once its lease ends, or off the queue if it wrote them);
docs/s with 1 and 2 actors, printed as a ratio (no assertion: on 2 busy cores it need not be
2x).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip(
    "ray.data", reason="Ray is not installed: pip install 'crossfade[ray]' (in the dev extra)"
)

from loadtest.fleet import ROOT, Fleet, corpus, own_env  # noqa: E402
from loadtest.harness import free_port, wait_for  # noqa: E402
from proxy.migration.worker import set_control  # noqa: E402
from proxy.state.postgres import PostgresState  # noqa: E402

DOCS = 300
RAY = Path(sys.executable).with_name("ray")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A one-node Ray cluster on 127.0.0.1 for this module: its address. Its temp dir is a
    short one of its own (Ray's Unix sockets live under it: pytest's paths can be too long
    for them); its workers import crossfade from this checkout (PYTHONPATH)."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = free_port()
    env = {**own_env(), "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [str(RAY), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1"]
    cmd += ["--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}"]
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120, cwd=ROOT)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def ray_fleet(tmp_path: Path, pg_url: str, chroma_server: Any) -> Fleet:
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    fleet = Fleet(
        tmp_path,
        pg_url,
        chroma_server.url,
        "",
        # A lease outlives a batch of 16 on a loaded box, and ends soon after a kill.
        {"lease_s": 10.0, "batch_size": 16},
        f"ray{uuid.uuid4().hex[:8]}",
        new_model=demo["models"]["new"],
        # The session's export cache (tests/helpers.py): the new model is exported to ONNX
        # once, not once per test (the export is tested in tests/test_cli.py).
        model_cache=os.environ["CROSSFADE_MODEL_CACHE"],
    )
    fleet.setup(corpus(DOCS))
    return fleet


def backfill(fleet: Fleet, address: str, actors: int) -> subprocess.Popen[str]:
    """`crossfade backfill --ray` as the operator runs it: a process of its own, with the
    config `fleet.setup` used (the actors, on this host, find the ONNX export in its model
    cache)."""
    return subprocess.Popen(
        [sys.executable, "-m", "proxy.cli", "--config", str(fleet.config("cli"))]
        + ["backfill", "--ray", address, "--actors", str(actors)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=own_env(),
    )


def result(proc: subprocess.Popen[str], timeout: float = 150) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)["backfill"]  # type: ignore[no-any-return]


def test_a_backfill_through_two_actors_completes(
    tmp_path: Path, pg_url: str, chroma_server: Any, ray_cluster: str
) -> None:
    """1 actor until a pause stops it (the pause: nothing more embedded after the job ends),
    then 2 actors to the end: verify clean, no duplicates; docs/s of each, as a ratio."""
    t0 = time.monotonic()
    fleet = ray_fleet(tmp_path, pg_url, chroma_server)
    print(f"ray: setup {time.monotonic() - t0:.1f}s")
    state = PostgresState(pg_url)
    try:
        proc = backfill(fleet, ray_cluster, 1)
        wait_for(lambda: state.reembedded().total >= 80, 120, "80 documents re-embedded")
        set_control(state, action="pause")
        one = result(proc)
        assert one["stopped"] == "paused" and 80 <= one["written"] < DOCS, one
        settled = state.reembedded().total
        time.sleep(1.5)
        assert state.reembedded().total == settled  # nothing embedded after it stopped
        set_control(state, action="resume")

        t0 = time.monotonic()
        two = result(backfill(fleet, ray_cluster, 2))
        print(f"ray: 2 actors, the other {two['written']} in {time.monotonic() - t0:.1f}s")
        assert two["stopped"] is None and two["coverage"] == 1.0, two
        assert one["written"] + two["written"] == DOCS, (one, two)
        ratio = two["steady_docs_per_s"] / max(one["steady_docs_per_s"], 1e-9)
        print(
            f"ray: docs/s 1 actor {one['steady_docs_per_s']:.1f}, 2 actors "
            f"{two['steady_docs_per_s']:.1f}: x{ratio:.2f} (start-up excluded; with it "
            f"{one['docs_per_s']:.1f} and {two['docs_per_s']:.1f})"
        )
        verified = fleet.cli("verify")
        assert '"ok": true' in verified, verified[-2000:]
        counted = state.reembedded()
        assert counted.distinct == DOCS and counted.duplicates <= 0.02 * DOCS, counted
        # The actors beat as workers: members of the fleet, with their progress.
        actors = [m for m in state.members(120) if m.name.startswith("ray actor")]
        assert len(actors) >= 2 and all(m.role == "worker" for m in actors), actors
        assert sum(m.info["processed"] for m in actors) > 0, actors
    finally:
        state.close()


def test_an_actor_killed_mid_run_loses_nothing(
    tmp_path: Path, pg_url: str, chroma_server: Any, ray_cluster: str
) -> None:
    fleet = ray_fleet(tmp_path, pg_url, chroma_server)
    state = PostgresState(pg_url)
    try:
        proc = backfill(fleet, ray_cluster, 2)

        def running_actor() -> int | None:
            for m in state.members(2.0):
                if m.name.startswith("ray actor") and m.info.get("state") == "running":
                    pid = int(m.name.rsplit(" ", 1)[1])
                    try:
                        os.kill(pid, 0)
                    except ProcessLookupError:
                        continue
                    return pid
            return None

        victim = wait_for(running_actor, 120, "an actor re-embedding")
        killed_at = state.reembedded().total
        os.kill(victim, signal.SIGKILL)
        done = result(proc, timeout=180)
        print(f"ray: SIGKILL of actor pid {victim} at {killed_at}/{DOCS}: {done}")
        assert killed_at < DOCS and done["stopped"] is None and done["coverage"] == 1.0, done
        verified = fleet.cli("verify")
        assert '"ok": true' in verified, verified[-2000:]
        # Nothing lost is read from the index (above); the count errs low, never high: the
        # victim's chunk whose write landed as it died (16 at most) is written, not counted.
        counted = state.reembedded()
        assert DOCS - 16 <= counted.distinct <= DOCS, counted
        assert counted.duplicates <= 0.02 * DOCS, counted
        # What it held is cleared once its lease ends: no claim left behind.
        assert done["left_queued"] == 0 and state.depth()["total"] == 0, done
    finally:
        state.close()
