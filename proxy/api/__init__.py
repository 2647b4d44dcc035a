"""The HTTP layer: one router module per concern, composed by `proxy.app.create_app`.

services    what every route shares (runtime, control plane, health, metrics), on app.state
errors      crossfade's error shape and the exception handlers
middleware  body limit, admin guard, JSON bodies, the route template of a request
lifecycle   start-up, shut-down and the background loops
search      POST /search
documents   PUT /documents, DELETE /documents/{doc_id}
migration   the migration's status, history, drift and backfill control
admin       the operator's switches (mode, split, cutover, rollback, finish, canary, plan)
operations  health, readiness, Prometheus metrics, the dashboard
    qdrant      Qdrant's REST query API, taking text (for unmodified qdrant-client apps)
"""
