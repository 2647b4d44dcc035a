"""The command line as an operator meets it, against a live proxy: what `status` says, how
refusals read, and what `crossfade demo` prints (a real process, its log read as a file)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.app import create_app
from proxy.cli import main
from proxy.demo import python_reference
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.runtime import Runtime
from tests.helpers import LiveServer, ProxyProcess, cli_config, demo_settings, wait_for

KEY = "cli-test-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}
DOCS = python_reference()[:30]


@pytest.fixture
def live(tmp_path: Path, models: dict) -> Iterator[tuple[str, Path]]:
    """A proxy re-embedding slowly (the CLI sees it at work), and a config that points the
    CLI at it."""
    settings = demo_settings(
        tmp_path / "data",
        server={"admin_key": KEY},
        # 30 documents at 1 a second: still running when the CLI first looks.
        migration={"batch_size": 1, "max_docs_per_s": 1},
    )
    with Runtime(settings, dict(models)) as rt:
        ingest(rt, "old", DOCS, progress=False)
        start_migration(rt, progress=False)
        with LiveServer(create_app(rt)) as server:
            cfg = cli_config(tmp_path / "c.yaml", settings.data_dir, server.port, admin_key=KEY)
            yield server.url, cfg


def cli(capsys: pytest.CaptureFixture[str], cfg: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--config", str(cfg), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_status_names_the_serving_pointer_and_a_paused_worker_has_no_rate(
    live: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, cfg = live

    def status() -> dict:
        return httpx.get(url + "/migration").json()

    wait_for(lambda: status()["rate_docs_per_s"] > 0, 60, "the worker to re-embed")
    assert cli(capsys, cfg, "split", "--mode", "old", "--percent", "10%")[0] == 0
    generation = httpx.get(url + "/admin/routing", headers=ADMIN).json()["generation"]
    code, out, _ = cli(capsys, cfg, "status")
    assert code == 0
    assert out.splitlines()[0] == f"serving: mode=fused, split 10% -> old, generation {generation}"
    assert re.search(r"worker running, rate [0-9.]+ docs/s, ETA [0-9]+s;", out), out

    assert cli(capsys, cfg, "backfill", "pause")[0] == 0
    wait_for(lambda: status()["worker_state"] == "paused", 60, "the batch in flight to land")
    code, out, _ = cli(capsys, cfg, "status")
    queue = next(line for line in out.splitlines() if line.startswith("queue:"))
    assert "worker paused;" in queue and "rate" not in queue and "ETA" not in queue, queue
    done = status()["reembedded"]  # the re-embeds so far, said in words too
    assert f"re-embedded: {done['documents']} documents, {done['embeddings']} embeddings" in out
    code, out, _ = cli(capsys, cfg, "status", "--json")
    s = json.loads(out)
    assert s["worker_state"] == "paused" and s["rate_docs_per_s"] == 0 and s["eta_s"] is None
    assert s["routing"]["split_mode"] == "old" and s["routing"]["split_percent"] == 10


def test_refusals_read_as_sentences(
    live: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, cfg = live
    before = httpx.get(url + "/admin/routing", headers=ADMIN).json()
    for percent, words in (("150%", "150% is outside 0% to 100%"), ("ten", "is not a percentage")):
        with pytest.raises(SystemExit) as exit:
            main(["--config", str(cfg), "split", "--mode", "new", "--percent", percent])
        assert exit.value.code == 2 and words in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", str(cfg), "backfill", "limit", "--until", "101"])
    assert "101 is outside 0% to 100%" in capsys.readouterr().err

    code, out, err = cli(capsys, cfg, "mode", "new")
    assert code == 1 and out == ""
    assert re.match(r"crossfade: mode new refused: coverage [0-9.]+% < required 100%", err), err
    assert "force: true" in err and "(HTTP 409)" in err and "{" not in err
    code, out, err = cli(capsys, cfg, "rollback")
    assert code == 1 and err.startswith("crossfade: nothing to roll back: no cutover since")
    assert httpx.get(url + "/admin/routing", headers=ADMIN).json() == before


def test_demo_log_is_json_and_quiet_and_names_the_serving_pointer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`crossfade demo`, then a restart after a switch: the log holds JSON (not Python dicts)
    for results, no progress bars or tokenizer warnings, and each start-up line names the
    pointer that was served."""
    monkeypatch.delenv("CROSSFADE_MODEL_CACHE")  # a fresh deployment: its first start exports
    proxy = ProxyProcess(tmp_path, admin_key=KEY)
    proxy.start(command="demo")
    try:
        first = httpx.get(proxy.url + "/readyz").json()["routing"]
        plan = httpx.get(proxy.url + "/admin/plan?sample=16", headers=ADMIN, timeout=600).json()
        r = httpx.post(
            proxy.url + "/admin/mode", json={"mode": "new", "force": True}, headers=ADMIN
        )
        assert r.status_code == 200
    finally:
        proxy.stop()
    proxy.start()
    try:
        second = httpx.get(proxy.url + "/readyz").json()["routing"]
    finally:
        proxy.stop()
    assert second["mode"] == "new" and second["generation"] == first["generation"] + 1

    log = proxy.log.read_text()
    lines = log.splitlines()
    starts = [x for x in lines if x.startswith("crossfade: serving")]
    assert starts == [
        f"crossfade: serving mode=fused, no split, generation {first['generation']} on {proxy.url}",
        f"crossfade: serving mode=new, no split, generation {second['generation']} on {proxy.url}",
    ]
    results = [json.loads(x) for x in lines if x.startswith("{")]
    assert [next(iter(x)) for x in results] == ["ingest", "migration"]
    assert results[0]["ingest"]["total"] == len(python_reference())
    for noise in ("{'", "\r", "Loading weights", "it/s]", "Token indices sequence length"):
        assert noise not in log, noise
    # Truncation is stated once, in words, where it is measured.
    truncated = plan["truncated"]
    assert truncated["max_length"] == 256 and 0 < truncated["sampled_docs_over"] <= 16
    assert "longer than 256 tokens" in truncated["note"]


def test_backfill_on_ray_refusals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`backfill --ray` refuses before it reaches anything: without state.url (actors on other
    machines can't share a SQLite file), and without Ray installed (naming the extra)."""
    import sys

    import yaml

    cfg = yaml.safe_load(Path("config/demo.yaml").read_text())
    cfg["data_dir"] = str(tmp_path / "data")
    path = tmp_path / "alone.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path), "backfill", "--ray", "127.0.0.1:1"]) == 2
    assert "state.url" in capsys.readouterr().err

    cfg["state"] = {"url": "postgresql://crossfade@127.0.0.1:1/none"}
    cfg["indexes"] = {  # a fleet's: a server (never reached here)
        side: {"backend": "chroma", "url": "http://127.0.0.1:1", "collection": side}
        for side in ("old", "new")
    }
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray: ImportError
    assert main(["--config", str(path), "backfill", "--ray", "127.0.0.1:1"]) == 2
    assert "pip install 'crossfade[ray]'" in capsys.readouterr().err
    assert main(["--config", str(path), "backfill"]) == 1
    assert "an action" in capsys.readouterr().err
