"""`crossfade eval` end to end on a fixed SciFact subset (every judged doc of the chosen
queries plus a seeded sample of the rest), through the CLI, real models, the embedded engine."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from proxy.beir import load_beir
from proxy.cli import main
from proxy.config import load_settings
from proxy.evaluation import parse_qrels
from proxy.experiment import (
    SYSTEMS,
    TUNED,
    VECTOR,
    evaluate,
    score_systems,
    scratch_settings,
    simulation,
)
from proxy.tuning import query_hash_half
from tests.helpers import ROOT, SCIFACT

pytestmark = pytest.mark.skipif(not SCIFACT.exists(), reason="../shared/data/scifact not present")


def make_subset(dst: Path, n_queries: int = 15, n_extra: int = 200, n_train: int = 0) -> Path:
    """The first `n_queries` test queries (and `n_train` train queries, as `qrels-train.tsv`),
    every document they judge and a seeded sample of the rest."""
    splits = {"": parse_qrels((SCIFACT / "qrels.tsv").read_text().splitlines())}
    if n_train:
        splits["-train"] = parse_qrels((SCIFACT / "qrels-train.tsv").read_text().splitlines())
    picked = {
        "": sorted(splits[""])[:n_queries],
        "-train": sorted(splits.get("-train", {}))[:n_train],
    }
    qids = {q for ids in picked.values() for q in ids}
    judged = {d for name, ids in picked.items() for q in ids for d in splits[name][q]}
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
    for name, chosen in picked.items():
        if chosen:
            (dst / f"qrels{name}.tsv").write_text(
                "query-id\tcorpus-id\tscore\n"
                + "".join(f"{q}\t{d}\t{g}\n" for q in chosen for d, g in splits[name][q].items())
            )
    return dst


def eval_config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "eval.yaml"
    cfg.write_text(
        (ROOT / "config" / "scifact.yaml")
        .read_text()
        .replace("data_dir: .crossfade/scifact", f"data_dir: {tmp_path / 'data'}")
        + extra
    )
    return cfg


# A subset's few hundred pairs are fewer than a map is served from by default (twice the
# dimension) and measure its fidelity on a few dozen: served anyway, to run the vector path.
SERVE_ANY_MAP = "vector_clients: {adapter_min_pairs: 50, adapter_min_fidelity: -1}\n"


def test_eval_json_over_simulated_coverage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    beir = make_subset(tmp_path / "beir", n_extra=100)
    cfg = eval_config(tmp_path, SERVE_ANY_MAP)
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
    assert list(out) == ["coverage", "adapter"] and list(out["coverage"]) == ["0", "50", "100"]
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
    # the vector client: with no migrated pair there is no map, and its lists are the old
    # index's own (the same search as the text path's old list); then a map fitted on the
    # migrated documents, its fidelity measured on pairs held out of the fit
    adapter = out["adapter"]
    assert adapter["0"] == {"pairs": 0, "used": False}
    assert cov["0"][VECTOR] == cov["0"]["old"]
    docs = len((beir / "corpus.jsonl").read_text().splitlines())
    assert adapter["100"]["pairs"] == docs and adapter["50"]["pairs"] == round(docs / 2)
    for a in (adapter["50"], adapter["100"]):
        assert a["used"] and 0 < a["held_out"] < a["pairs"]
        assert a["fidelity"] == pytest.approx(a["agreement"] - a["old_agreement"], abs=1e-5)
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


def test_tune_never_scores_the_queries_it_fits(tmp_path: Path, models: dict) -> None:
    """Without a train split the labelled queries are halved by a hash of their id: the fit
    sees one half, every reported figure (all systems, `crossfade-tuned` too) the other. With a
    train split, the fit sees only the train queries."""
    settings = load_settings(eval_config(tmp_path))
    # Which queries are fitted and which scored does not depend on the corpus: a small one.
    beir = make_subset(tmp_path / "beir", n_queries=24, n_extra=40)
    qrels = parse_qrels((beir / "qrels.tsv").read_text().splitlines())
    ev = evaluate(settings, beir, "test", [0, 100], progress=False, tune=True)
    assert ev.tuned is not None and ev.tuned.source == "default rule"  # too few to fit
    assert "fewer than 50: rule kept" in ev.how
    ev = evaluate(settings, beir, "test", [0, 100], progress=False, tune=True, min_fit_queries=1)
    assert ev.tuned is not None and ev.tuned.source.startswith("fitted on")
    assert set(ev.scored) == {q for q in qrels if query_hash_half(q) == 1}
    assert set(ev.fitted_on) == set(qrels) - set(ev.scored) and ev.fitted_on
    assert "no train split" in ev.how
    for systems in ev.result.values():
        assert set(systems) == {*SYSTEMS, TUNED}
    # the same figures as an evaluation restricted to the scored queries: nothing else counted
    sim = simulation(scratch_settings(settings, beir), load_beir(beir), [0, 100], progress=False)
    plain = score_systems(
        sim.steps, {q: qrels[q] for q in ev.scored}, settings.fusion, vector=sim.vector
    )
    assert {p: {s: m for s, m in r.items() if s != TUNED} for p, r in ev.result.items()} == plain

    trained = make_subset(tmp_path / "trained", n_queries=10, n_extra=40, n_train=12)
    train = parse_qrels((trained / "qrels-train.tsv").read_text().splitlines())
    ev = evaluate(settings, trained, "test", [0, 100], progress=False, tune=True, min_fit_queries=1)
    assert set(ev.fitted_on) == set(train) and not set(ev.scored) & set(train)
    assert len(ev.scored) == 10 and "train split" in ev.how


def test_tune_stores_the_fit_and_status_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = eval_config(tmp_path)
    beir = make_subset(tmp_path / "beir", n_queries=16, n_extra=40)
    # 8 fitting queries: refused (a fit on so few follows noise), nothing stored
    with pytest.raises(SystemExit, match="nothing stored: .*fewer than 50"):
        main(["--config", str(cfg), "tune", "--beir", str(beir)])
    assert main(["--config", str(cfg), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fusion"]["source"] == "default rule"
    assert main(["--config", str(cfg), "tune", "--beir", str(beir), "--min-queries", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [k["coverage"] for k in out["fusion"]["knots"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(TUNED in systems for systems in out["held_out"].values())
    assert main(["--config", str(cfg), "status", "--json"]) == 0
    fusion = json.loads(capsys.readouterr().out)["fusion"]
    assert fusion["source"] == out["fusion"]["source"] and fusion["source"].startswith("fitted on")
    assert fusion["knots"] == out["fusion"]["knots"] and "ignored" not in fusion["fit"]
