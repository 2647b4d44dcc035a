"""fp32 ONNX export of a sentence-transformers model, once per weights, checked against torch.

Runtime `onnx` serves the same model as torch, so it must give the same vectors: the graph is
exported from the directory (transformer + the model's mean pooling, eager attention so ONNX
Runtime's BERT optimizer can fuse it), optimised, and then both runtimes embed the probe texts;
below cosine `MIN_COSINE` the export is refused. The result and its check are cached under
`<cache>/<weights sha256[:16]>/`, so a changed directory exports afresh. Needs the `onnx`
package at export time only (the `export` extra); serving needs onnxruntime alone.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("crossfade")

MIN_COSINE = 0.9999
RECIPE = 1  # bump when the export changes, so cached graphs are made again
GRAPH, CHECK = "model.onnx", "export.json"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "sentence_embedding"

# Short and long (truncated at max_length), several languages and code: padding, truncation
# and the tokenizer's normaliser are all exercised by the check.
PROBE_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "How do I reset my password if I no longer have access to my email?",
    "Der Vertrag tritt am ersten Tag des folgenden Monats in Kraft.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "what causes cancer?",
    "Vitamin D deficiency is associated with an increased risk of respiratory infections in "
    "children, according to a randomized controlled trial of 744 participants. " * 12,
    "Should governments ban smoking in public places? Passive smoking harms bystanders, and "
    "the right to clean air outweighs the freedom to smoke wherever one likes. " * 6,
)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two equally shaped batches of vectors."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)  # type: ignore[no-any-return]


def exported_graph(
    st_dir: Path, weights: str, cache: Path, check: Any, texts: Sequence[str] = PROBE_TEXTS
) -> tuple[Path, dict[str, Any]]:
    """The cached fp32 graph for the model at `st_dir` (exported now if missing) and its
    check record. `check(graph_path, texts)` returns the exported graph's cosines to torch."""
    where = cache / f"{weights[:16]}-r{RECIPE}"
    graph, record_path = where / GRAPH, where / CHECK
    if graph.exists() and record_path.exists():
        record = json.loads(record_path.read_text())
        if record.get("weights_sha256") == weights and record["min_cosine"] >= MIN_COSINE:
            return graph, record
    where.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    tmp = where / f"{GRAPH}.{os.getpid()}.tmp"
    _export(st_dir, tmp)
    cos = check(tmp, texts)
    record = {
        "weights_sha256": weights,
        "min_cosine": round(float(np.min(cos)), 7),
        "mean_cosine": round(float(np.mean(cos)), 7),
        "probe_texts": len(texts),
        "export_s": round(time.monotonic() - t0, 1),
        "recipe": RECIPE,
    }
    if record["min_cosine"] < MIN_COSINE:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(
            f"the ONNX export of {st_dir} gives vectors at cosine {record['min_cosine']} to "
            f"torch's (< {MIN_COSINE}): not the same model; use runtime torch"
        )
    # Rename last: another process sees either no graph or a checked one.
    os.replace(tmp, graph)
    record_path.write_text(json.dumps(record, indent=2))
    log.info("exported %s to ONNX: %s", st_dir, record)
    return graph, record


def _export(st_dir: Path, out: Path) -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError as e:
        raise RuntimeError(
            "runtime 'onnx' exports the model once and needs the 'onnx' package for that: "
            "pip install 'crossfade[export]'"
        ) from e
    import torch
    from onnxruntime.transformers import optimizer
    from transformers import AutoModel

    # Eager attention: the graph then has the pattern ONNX Runtime fuses into one Attention op.
    model = AutoModel.from_pretrained(str(st_dir), attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        """Transformer + mean pooling over real tokens (all-MiniLM's pooling layer)."""

        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, ids: Any, mask: Any, types: Any) -> Any:
            hidden = self.inner(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)

    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 7592, 2088, 2182, 102]])
    raw = out.with_suffix(".raw")
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUTS}
    # The tracer warns about shapes it records as constants; the cosine check below is
    # what decides whether the graph is right, on padded and truncated batches alike.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pooled(model),
            (ids, (ids > 0).long(), torch.zeros_like(ids)),
            str(raw),
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes={**dynamic, OUTPUT: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    cfg = model.config
    opt = optimizer.optimize_model(
        str(raw),
        model_type="bert",
        num_heads=cfg.num_attention_heads,
        hidden_size=cfg.hidden_size,
        opt_level=1,
    )
    opt.save_model_to_file(str(out))
    raw.unlink(missing_ok=True)
