"""The fusion fitted on this deployment's labelled queries, kept with the migration state.

A fit belongs to one model pair: it is stored with the old and new fingerprints and used only
while the configured models still have them (a fit for another pair is ignored, and status
says so). Without a usable fit the serving path uses the config's label-free rule."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from proxy.config import FusionConfig
from proxy.fusion import LISTS, Profile, default_profile, weights_at
from proxy.state import StateStore

KEY = "fusion_fit"


def profile_dict(profile: Profile) -> dict[str, Any]:
    return {
        "knots": [
            {"coverage": round(c, 4), "weights": {n: w.get(n, 0.0) for n in LISTS}}
            for c, w in profile.knots
        ],
        "impute_from": list(profile.impute_from),
        "source": profile.source,
    }


def profile_of(d: dict[str, Any]) -> Profile:
    return Profile(
        knots=tuple((float(k["coverage"]), dict(k["weights"])) for k in d["knots"]),
        impute_from=tuple(d["impute_from"]),
        source=str(d.get("source", "fitted")),
    )


def save_fit(
    state: StateStore, profile: Profile, models: dict[str, str], **about: Any
) -> dict[str, Any]:
    record = {
        **profile_dict(profile),
        "old_fingerprint": models["old"],
        "new_fingerprint": models["new"],
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **about,
    }
    state.set(KEY, record)
    return record


def load_fit(state: StateStore, models: dict[str, str]) -> Profile | None:
    """The stored fit if it was made for these models, else None."""
    record = state.get(KEY)
    if not record:
        return None
    if (record.get("old_fingerprint"), record.get("new_fingerprint")) != (
        models["old"],
        models["new"],
    ):
        return None
    return profile_of(record)


def fusion_status(
    state: StateStore, fusion: FusionConfig, fitted: Profile | None, coverage: float
) -> dict[str, Any]:
    """What fuses now: the profile in use, its weights at this coverage and, when a stored fit
    is ignored, why."""
    record = state.get(KEY)
    profile = fitted or default_profile(fusion)
    out: dict[str, Any] = {
        **profile_dict(profile),
        "weights_now": {n: round(w, 4) for n, w in weights_at(profile, coverage).items()},
        "k": fusion.k,
    }
    if record:
        out["fit"] = {
            key: record.get(key)
            for key in ("fitted_at", "how", "held_out", "old_fingerprint", "new_fingerprint")
        }
        if fitted is None:
            out["fit"]["ignored"] = "fitted for another model pair; refit with `crossfade tune`"
    return out
