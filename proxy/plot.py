"""The quality-during-migration chart: nDCG@10 against coverage, one line per system.

Drawn from `simulate`'s result (real eval runs), with matplotlib's Agg backend (no display)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

LINES = {  # system -> (label, style); old/BM25/new are the references crossfade must beat
    "crossfade": (
        "crossfade (coverage-aware fusion)",
        {"color": "#2e5bff", "lw": 2.6, "marker": "o"},
    ),
    "crossfade-tuned": (
        "crossfade, fitted on held-out-safe queries (--tune)",
        {"color": "#7a2eff", "lw": 2.0, "ls": "-.", "marker": "D"},
    ),
    "vector": (
        "old-model query vectors, through the query map",
        {"color": "#0e9384", "lw": 1.8, "ls": "-.", "marker": "v"},
    ),
    "rrf": ("plain RRF (old + new + BM25)", {"color": "#b54708", "lw": 1.8, "marker": "s"}),
    "old": ("old model only", {"color": "#667085", "lw": 1.8, "marker": "^"}),
    "new": ("new model only", {"color": "#12805c", "lw": 1.2, "ls": "--", "marker": "."}),
    "bm25": ("BM25 only", {"color": "#c01048", "lw": 1.2, "ls": ":"}),
}


def plot_quality(
    result: Mapping[str, Mapping[str, Mapping[str, float]]],
    path: str | Path,
    metric: str = "ndcg@10",
    title: str = "Search quality during a migration",
) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # an optional extra: say how to get it
        raise RuntimeError("--plot needs matplotlib: pip install 'crossfade[plot]'") from e
    xs = sorted(result, key=float)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for system, (label, style) in LINES.items():
        if system not in result[xs[0]]:
            continue
        ys = [result[x][system][metric] for x in xs]
        ax.plot([float(x) for x in xs], ys, label=label, **style)
    ax.set_xlabel("coverage: share of documents with a new-model vector (%)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.set_xticks([float(x) for x in xs])
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
