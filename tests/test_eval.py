"""`crossfade eval` end to end on a fixed SciFact subset (every judged doc of the chosen
queries plus a seeded sample of the rest), through the CLI, real models, the embedded engine."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.evaluation import parse_qrels
from proxy.experiment import SYSTEMS
from tests.conftest import ROOT, SCIFACT

pytestmark = pytest.mark.skipif(not SCIFACT.exists(), reason="../shared/data/scifact not present")


def make_subset(dst: Path, n_queries: int = 15, n_extra: int = 200) -> Path:
    qrels = parse_qrels((SCIFACT / "qrels.tsv").read_text().splitlines())
    qids = sorted(qrels)[:n_queries]
    judged = {d for q in qids for d in qrels[q]}
    lines = (SCIFACT / "corpus.jsonl").read_text().splitlines()
    ids = [json.loads(line)["_id"] for line in lines]
    others = [i for i in ids if i not in judged]
    keep = judged | set(random.Random(0).sample(others, n_extra))
    dst.mkdir()
    (dst / "corpus.jsonl").write_text(
        "\n".join(line for line, i in zip(lines, ids, strict=True) if i in keep) + "\n"
    )
    queries = [
        q
        for q in (SCIFACT / "queries.jsonl").read_text().splitlines()
        if json.loads(q)["_id"] in qids
    ]
    (dst / "queries.jsonl").write_text("\n".join(queries) + "\n")
    (dst / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n"
        + "".join(f"{q}\t{d}\t{g}\n" for q in qids for d, g in qrels[q].items())
    )
    return dst


def test_eval_json_over_simulated_coverage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    beir = make_subset(tmp_path / "beir")
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        (ROOT / "config" / "scifact.yaml")
        .read_text()
        .replace("data_dir: .crossfade/scifact", f"data_dir: {tmp_path / 'data'}")
    )
    argv = [
        "--config",
        str(cfg),
        "eval",
        "--beir",
        str(beir),
        "--simulate-coverage",
        "0,50,100",
        "--json",
    ]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["coverage"] and list(out["coverage"]) == ["0", "50", "100"]
    for systems in out["coverage"].values():
        assert set(systems) == set(SYSTEMS)
        for metrics in systems.values():
            assert set(metrics) == {"ndcg@10", "recall@10", "recall@100", "mrr@10"}
            assert all(0.0 <= v <= 1.0 for v in metrics.values())
    cov = out["coverage"]
    assert cov["0"]["new"]["ndcg@10"] == 0.0  # no new vectors yet
    assert cov["100"]["new"]["ndcg@10"] > cov["50"]["new"]["ndcg@10"] > 0
    # old-only and BM25 do not depend on coverage
    assert cov["0"]["old"] == cov["100"]["old"] and cov["0"]["bm25"] == cov["100"]["bm25"]
    # a second run reuses the cached embeddings and the built old index: same figures,
    # and draws them as the quality-during-migration chart
    chart = tmp_path / "chart" / "quality.png"
    assert main([*argv, "--plot", str(chart)]) == 0
    assert json.loads(capsys.readouterr().out) == out
    import matplotlib.image

    pixels = matplotlib.image.imread(chart)
    assert pixels.shape[:2] == (540, 900)
    # the crossfade line's colour (#2e5bff) is drawn
    blue = (abs(pixels[..., 0] - 0x2E / 255) < 0.02) & (abs(pixels[..., 2] - 1.0) < 0.02)
    assert blue.sum() > 500
