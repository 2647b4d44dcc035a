"""The canary of a hosted model: has the provider changed the model under the same name?

A hosted model's fingerprint (provider URL, model name, dimensions) says what was asked for,
not what answers: a provider may ship new weights under an old name, and every vector written
from then on lands in another space beside the old ones (the bilingual index, silently). So at
migration start crossfade embeds a few fixed texts with each hosted model and stores the
vectors; at start-up and every `canary_interval_s` it embeds them again. Vectors that differ
(cosine below `canary_min_cosine` for any text) are drift: an alarm in status, metrics and the
dashboard, and the bilingual-write guard refuses every vector write naming that model, from
any process, until an operator decides: `crossfade canary accept` (the change is harmless:
the canary is recorded afresh) or a new migration to a fresh index.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from proxy.clock import now_iso
from proxy.model import ModelUnavailable
from proxy.runtime import SIDES, Runtime
from proxy.store import FingerprintMismatch

log = logging.getLogger("crossfade")
CANARY = "canary"
DRIFT = "model_drift"
TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "How do I reset my password if I no longer have access to my email?",
    "Der Vertrag tritt am ersten Tag des folgenden Monats in Kraft.",
    "def fibonacci(n): return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
)


class ModelDrift(FingerprintMismatch):
    """A vector write naming a model whose canary drifted (the bilingual-write guard)."""


def _hosted(rt: Runtime) -> list[str]:
    return [s for s in SIDES if getattr(rt.settings.models, s).kind == "openai"]


def _describe(rt: Runtime, side: str) -> dict[str, Any]:
    model = rt.model(side)
    return {"fingerprint": model.fingerprint.id, **getattr(model, "describe", dict)()}


def record_canaries(rt: Runtime, sides: list[str] | None = None) -> dict[str, Any]:
    """Embed the canary texts with each hosted model and store them (migration start)."""
    stored = dict(rt.state.get(CANARY) or {})
    for side in _hosted(rt) if sides is None else sides:
        vecs = rt.model(side).embed_documents(list(TEXTS))
        stored[side] = {**_describe(rt, side), "recorded_at": now_iso(), "vectors": vecs.tolist()}
    rt.state.set(CANARY, stored)
    return stored


def check_canaries(rt: Runtime) -> dict[str, Any]:
    """Re-embed the canary of each hosted model; record drift (blocking). A model without a
    canary for its current fingerprint gets one now; one that can't be reached is reported and
    checked again next time."""
    out: dict[str, Any] = {}
    stored = rt.state.get(CANARY) or {}
    for side in _hosted(rt):
        cfg = getattr(rt.settings.models, side)
        try:
            model = rt.model(side)
            have = stored.get(side)
            if not have or have.get("fingerprint") != model.fingerprint.id:
                record_canaries(rt, [side])
                out[side] = {"recorded": True}
                continue
            now = model.embed_documents(list(TEXTS))
        except (ModelUnavailable, RuntimeError) as e:
            out[side] = {"error": str(e)}
            continue
        before = np.asarray(have["vectors"], dtype=np.float32)
        cos = np.sum(before * now, axis=1) / np.maximum(
            np.linalg.norm(before, axis=1) * np.linalg.norm(now, axis=1), 1e-12
        )
        min_cos = float(cos.min())
        drifted = min_cos < cfg.canary_min_cosine
        out[side] = {"min_cosine": round(min_cos, 6), "drift": drifted}
        if drifted and side not in drift_alarms(rt):
            alarm = {
                **_describe(rt, side),
                "min_cosine": round(min_cos, 6),
                "threshold": cfg.canary_min_cosine,
                "detected_at": now_iso(),
            }
            rt.state.set(DRIFT, {**drift_alarms(rt), side: alarm})
            rt.drift_changed()
            log.error("%s", drift_message(side, alarm))
    return out


def drift_alarms(rt: Runtime) -> dict[str, Any]:
    return dict(rt.state.get(DRIFT) or {})


def drift_message(side: str, alarm: dict[str, Any]) -> str:
    return (
        f"model drift: the {side} model {alarm.get('model')} at {alarm.get('base_url')} "
        f"({alarm['fingerprint']}) answers other vectors for the canary texts than at "
        f"migration start (min cosine {alarm['min_cosine']} < {alarm['threshold']}); vector "
        "writes naming it are refused until an operator decides (`crossfade canary accept`, "
        "or a new migration)"
    )


def refuse_drifted(rt: Runtime, side: str) -> None:
    """The bilingual-write guard's drift check: raise ModelDrift if `side`'s model drifted."""
    alarm = rt.model_drift().get(side)
    if alarm:
        raise ModelDrift(drift_message(side, alarm))


def accept_drift(rt: Runtime, sides: list[str] | None = None) -> dict[str, Any]:
    """The operator's decision that the change is harmless: record the canary afresh and
    lift the refusal. Returns the alarms lifted."""
    alarms = drift_alarms(rt)
    lifted = {s: a for s, a in alarms.items() if sides is None or s in sides}
    if lifted:
        record_canaries(rt, [s for s in lifted if s in _hosted(rt)])
    rt.state.set(DRIFT, {s: a for s, a in alarms.items() if s not in lifted})
    rt.drift_changed()
    return lifted
