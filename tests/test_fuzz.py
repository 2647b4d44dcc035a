"""Bad input over real HTTP: hypothesis property tests and a bounded schemathesis run against
the OpenAPI schema. Every answer is a documented status (never a 500; a 503 only where the
route documents it), every error is JSON with an "error" field, and a refused write leaves
both indexes, the write journal, the routing and the migration controls exactly as they were.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from proxy.app import DocumentsIn, SearchRequest, create_app
from proxy.config import Mode
from proxy.demo import python_reference
from proxy.filters import MAX_CONDITIONS, MAX_VALUES
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.migration.worker import control_state
from proxy.runtime import Runtime
from tests.helpers import RW, LiveServer, demo_settings

N = 24
KEY = "fuzz-admin-key"
ADMIN = {"Authorization": f"Bearer {KEY}"}
FUZZ = settings(
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
)
ADMIN_ROUTES = [
    ("POST", "/migration/backfill"),
    ("POST", "/admin/mode"),
    ("POST", "/admin/split"),
    ("POST", "/admin/cutover"),
    ("POST", "/admin/rollback"),
    ("GET", "/admin/routing"),
    ("GET", "/admin/plan"),
    ("GET", "/admin/audit"),
]


@dataclass
class Proxy:
    url: str
    rt: Runtime
    client: httpx.Client
    documented: dict[tuple[str, str], set[int]] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        """Everything a refused request must leave alone."""
        out: dict[str, Any] = {}
        for side in ("old", "new"):
            store = self.rt.store(side)
            points = sorted((p for b in store.scroll() for p in b), key=lambda p: p["doc_id"])
            digest = hashlib.sha256(orjson.dumps(points, option=orjson.OPT_SORT_KEYS))
            out[side] = (store.count(), store.count(dense_only=True), digest.hexdigest())
        out["journal"] = len(self.rt.journal.pending())
        out["control"] = control_state(self.rt.state, self.rt.settings.migration)
        out["routing"] = self.client.get("/admin/routing", headers=ADMIN).json()
        return out

    def send(self, method: str, path: str, route: str | None = None, **kw: Any) -> httpx.Response:
        """One request; asserts the answer is documented for the route and well formed."""
        r = self.client.request(method, path, **kw)
        allowed = self.documented[(method, route or path)]
        assert r.status_code in allowed, (method, path, r.status_code, r.text[:300])
        if r.status_code >= 400:
            body = r.json()
            assert isinstance(body, dict) and isinstance(body.get("error"), str), r.text[:300]
        return r


@contextmanager
def live_proxy(tmp: Path, models: dict) -> Iterator[Proxy]:
    settings = demo_settings(tmp, server={"admin_key": KEY})
    rt = Runtime(settings, dict(models))
    ingest(rt, "old", python_reference()[:N], progress=False)
    start_migration(rt, progress=False)
    rt.state.set("paused", True)  # the store changes only by the writes sent here
    # Bodies are declared JSON (anything else is a 415 before any route: tests/test_gate.py).
    json_bodies = {"content-type": "application/json"}
    with (
        LiveServer(create_app(rt)) as live,
        httpx.Client(base_url=live.url, timeout=60, headers=json_bodies) as c,
    ):
        proxy = Proxy(live.url, rt, c)
        spec = c.get("/openapi.json").json()
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                proxy.documented[(method.upper(), path)] = {int(s) for s in op["responses"]}
        yield proxy


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, models: dict) -> Iterator[Proxy]:
    with live_proxy(tmp_path_factory.mktemp("fuzz"), models) as p:
        yield p


def encode(body: Any) -> bytes:
    """JSON as a careless client writes it: NaN/Infinity literals, \\ud800 escapes."""
    return json.dumps(body, ensure_ascii=True, allow_nan=True).encode()


def valid(model: type, body: Any) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


# --- strategies ---------------------------------------------------------------------------

NAMES = [
    *("query", "k", "filter", "with_text", "mode", "reembed"),
    *("documents", "id", "text", "metadata", "title"),
    *("must", "should", "must_not", "key", "match", "range", "value", "any", "except"),
    *("gt", "gte", "lt", "lte"),
    *("action", "backfill", "until", "percent", "actor", "force", "beir", "split"),
]
any_char = st.characters(exclude_categories=())  # lone surrogates too
edge_ints = st.sampled_from([0, -1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30])
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | edge_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.text(any_char, max_size=4)
)
keys = st.sampled_from(NAMES) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=16,
)
# A long run of one character (hypothesis is slow to draw long random text).
long_text = st.builds(operator.mul, st.characters(), st.integers(1, 5000))
filter_keys = st.sampled_from(["topic", "year", "a.b", "_x", "1bad", "", "x" * 200, "$where"])
matches = st.fixed_dictionaries(
    {},
    optional={
        "value": scalars,
        "any": st.lists(scalars, max_size=4),
        "except": st.lists(scalars, max_size=4),
        "extra": scalars,
    },
)
ranges = st.fixed_dictionaries(
    {}, optional={op: scalars for op in ("gt", "gte", "lt", "lte", "eq")}
)
conditions = st.fixed_dictionaries(
    {"key": filter_keys | st.text(max_size=6)},
    optional={"match": matches | json_values, "range": ranges | json_values},
)
filters = st.recursive(
    st.fixed_dictionaries(
        {},
        optional={
            c: st.lists(conditions, max_size=3) | st.lists(conditions, min_size=33, max_size=40)
            for c in ("must", "should", "must_not")
        },
    ),
    lambda inner: st.fixed_dictionaries({"must": st.lists(inner | conditions, max_size=2)}),
    max_leaves=4,
)
search_bodies = st.fixed_dictionaries(
    {"query": st.text(max_size=30) | st.text(any_char, max_size=5) | long_text | scalars},
    optional={
        "k": st.integers(-3, 104) | scalars,
        "filter": filters | json_values,
        "with_text": st.booleans() | scalars,
        "mode": st.sampled_from(["old", "shadow", "fused", "new", "NEW", ""]) | scalars,
        "reembed": st.booleans() | scalars,
        "extra": scalars,
    },
)
good_text = st.text(min_size=1, max_size=40).filter(str.strip)
good_docs = st.lists(
    st.fixed_dictionaries(
        {"id": st.text(min_size=1, max_size=10).map("fz-".__add__), "text": good_text},
        optional={"metadata": st.dictionaries(st.text(max_size=5), st.integers(0, 9), max_size=2)},
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda d: d["id"],
)
# Each breaks one document of an otherwise valid batch: the whole batch must be refused.
bad_fields = st.sampled_from(
    [
        ("text", ""),
        ("text", "   \n"),
        ("text", None),
        ("text", 7),
        ("text", ["a"]),
        ("id", None),
        ("id", ""),
        ("id", 1.5),
        ("id", True),
        ("id", ["a"]),
        ("id", "\ud800"),
        ("metadata", "no"),
        ("metadata", [1]),
        ("metadata", {"n": float("nan")}),
        ("metadata", {"n": float("inf")}),
        ("metadata", {"n": -float("inf")}),
        ("metadata", {"n": 2**64}),
        ("metadata", {"n": [10**400]}),
        ("metadata", {"\ud800": 1}),
        ("metadata", {"s": "x\udfff"}),
        ("metadata", {"deep": json.loads("[" * 40 + "]" * 40)}),
        ("extra", 1),
        ("title", 5),
    ]
)


@st.composite
def broken_batches(draw: st.DrawFn) -> Any:
    docs = draw(good_docs)
    how = draw(st.sampled_from(["field", "duplicate", "empty", "too_many", "not_a_list"]))
    if how == "field":
        name, value = draw(bad_fields)
        docs[draw(st.integers(0, len(docs) - 1))][name] = value
    elif how == "duplicate":
        docs.append(dict(docs[0], text="again"))
    elif how == "empty":
        docs = []
    elif how == "too_many":
        docs = [{"id": f"fz-{i}", "text": "t"} for i in range(257)]
    else:
        return {"documents": docs[0]}
    return {"documents": docs}


# --- property tests -----------------------------------------------------------------------


@settings(FUZZ, max_examples=60)
@given(body=search_bodies | json_values)
def test_search_accepts_exactly_the_valid_requests(proxy: Proxy, body: Any) -> None:
    """200 for what SearchRequest (and the blank/length checks) accept, 4xx for the rest."""
    r = proxy.send("POST", "/search", content=encode(body))
    ok = (
        valid(SearchRequest, body)
        and bool(body["query"].strip())
        and len(body["query"]) <= proxy.rt.settings.server.max_query_chars
    )
    if ok:
        req = SearchRequest.model_validate(body)
        if req.mode is Mode.NEW and not req.force:  # coverage 0 here: refused unless forced
            assert r.status_code == 409, (body, r.text[:300])
            return
        assert r.status_code == 200, (body, r.text[:300])
        assert len(r.json()["results"]) <= req.k
    else:
        assert r.status_code in (400, 413, 422), (body, r.status_code, r.text[:300])


@settings(FUZZ, max_examples=60)
@given(body=broken_batches() | json_values)
def test_refused_document_writes_change_nothing(proxy: Proxy, body: Any) -> None:
    before = proxy.snapshot()
    r = proxy.send("PUT", "/documents", content=encode(body), headers=RW)
    if r.status_code == 200:  # arbitrary JSON that happens to be a valid batch
        assert valid(DocumentsIn, body) and r.json()["upserted"] == len(body["documents"])
        return
    assert r.status_code in (400, 413, 422)
    assert proxy.snapshot() == before


@settings(FUZZ, max_examples=40)
@given(
    body=st.binary(max_size=64)
    | st.text(any_char, max_size=20).map(lambda s: s.encode("utf-8", "surrogatepass"))
)
def test_bytes_that_are_not_json(proxy: Proxy, body: bytes) -> None:
    before = proxy.snapshot()
    for method, path in [("POST", "/search"), ("PUT", "/documents"), ("POST", "/admin/mode")]:
        r = proxy.send(method, path, content=body, headers=ADMIN)
        assert r.status_code in (400, 422)
    # Without the key the body is never read: 401 whatever it holds.
    r = proxy.send("POST", "/admin/rollback", content=body)
    assert r.status_code == 401
    assert proxy.snapshot() == before


@settings(FUZZ, max_examples=30)
@given(
    doc_id=(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30))
    .filter(lambda s: "/" not in s and s not in (".", ".."))
    .map(lambda s: "fz-" + s)
)
@example(doc_id="fz-\n")  # the path convertor's `.*` stopped before it: "fz-" was deleted
def test_deleting_unknown_ids_changes_nothing(proxy: Proxy, doc_id: str) -> None:
    before = proxy.snapshot()
    path = "/documents/" + quote(doc_id, safe="")
    r = proxy.send("DELETE", path, route="/documents/{doc_id}", headers=RW)
    assert r.json() == {"deleted": doc_id, "existed": {"old": 0, "new": 0}}
    assert proxy.snapshot() == before


@settings(FUZZ, max_examples=60)
@given(
    route=st.sampled_from(ADMIN_ROUTES),
    auth=st.sampled_from(
        [None, "Bearer nope", f"Bearer {KEY}x", KEY, f"Basic {KEY}", "Bearer", "bearer x"]
    ),
    body=json_values,
)
def test_admin_routes_without_the_key_change_nothing(
    proxy: Proxy, route: tuple[str, str], auth: str | None, body: Any
) -> None:
    before = proxy.snapshot()
    headers = {"Authorization": auth} if auth is not None else {}
    r = proxy.send(*route, content=encode(body), headers=headers)
    assert r.status_code == 401
    assert proxy.snapshot() == before


@settings(FUZZ, max_examples=60)
@given(route=st.sampled_from([r for r in ADMIN_ROUTES if r[0] == "POST"]), body=json_values)
def test_admin_bodies_refused_change_nothing(
    proxy: Proxy, route: tuple[str, str], body: Any
) -> None:
    before = proxy.snapshot()
    r = proxy.send(*route, content=encode(body), headers=ADMIN)
    if r.status_code < 400:
        # A valid body ({} or null for some) acts; each example snapshots afresh, but the
        # worker must stay paused for the ones after.
        proxy.rt.state.set("paused", True)
        return
    assert proxy.snapshot() == before


# --- explicit limits ----------------------------------------------------------------------


def test_body_over_the_limit_is_413_with_or_without_content_length(proxy: Proxy) -> None:
    limit = proxy.rt.settings.server.max_body_bytes
    doc = {"documents": [{"id": "fz-big", "text": "word " * (limit // 5)}]}
    body = encode(doc)
    assert len(body) > limit
    before = proxy.snapshot()

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(body), 64 * 1024):
            yield body[i : i + 64 * 1024]

    for kw in ({"content": body}, {"content": chunks()}):
        r = proxy.send("PUT", "/documents", **kw, headers=RW)
        assert r.status_code == 413 and str(limit) in r.json()["error"]
    search = encode({"query": "x" * (limit + 1)})
    assert proxy.send("POST", "/search", content=search).status_code == 413
    assert proxy.send("POST", "/search", content=iter([search])).status_code == 413
    assert proxy.snapshot() == before
    # A streamed body under the limit still goes through.
    r = proxy.send("POST", "/search", content=iter([b'{"query": "assign', b'ment", "k": 2}']))
    assert r.status_code == 200 and len(r.json()["results"]) == 2


def test_query_length_and_k_bounds(proxy: Proxy) -> None:
    top = proxy.rt.settings.server.max_query_chars

    def status(**body: Any) -> int:
        return proxy.send("POST", "/search", json=body).status_code

    assert status(query="q" * top, k=1) == 200
    assert status(query="q" * (top + 1)) == 422
    assert status(query="  \n\t ") == 422
    assert status(query="") == 422
    assert status(query="for loop", k=100) == 200
    for k in (0, -1, 101, 2**63, 1.5, "ten", None):
        assert status(query="for loop", k=k) == 422, k


def test_filter_bounds(proxy: Proxy) -> None:
    def cond(i: int) -> dict[str, Any]:
        return {"key": f"k{i}", "match": {"value": i}}

    def status(flt: Any) -> int:
        r = proxy.send("POST", "/search", content=encode({"query": "for loop", "filter": flt}))
        return r.status_code

    assert status({"must": [cond(i) for i in range(MAX_CONDITIONS)]}) == 200
    assert status({"should": [cond(i) for i in range(MAX_CONDITIONS + 1)]}) == 422
    assert status({"must": [{"must": [cond(1)]}]}) == 422  # no nesting
    assert status({"must": [dict(cond(1), filter={"must": [cond(2)]})]}) == 422
    assert status({"must": [{"key": "a", "match": {"any": list(range(MAX_VALUES + 1))}}]}) == 422
    assert status({"must": [{"key": "a", "match": {"any": list(range(MAX_VALUES))}}]}) == 200
    for value in (2**63, -(2**63) - 1, 10**30):
        assert status({"must": [{"key": "a", "match": {"value": value}}]}) == 422, value
    for bound in (float("nan"), float("inf"), -float("inf"), 10**400):
        assert status({"must": [{"key": "a", "range": {"gte": bound}}]}) == 422, bound
    assert status({"must": [{"key": "a", "range": {"gte": 2**63}}]}) == 200


def test_metadata_an_index_cannot_hold_is_refused_and_writes_go_on(proxy: Proxy) -> None:
    """NaN, Infinity, >64-bit integers, lone surrogates or deep nesting in metadata used to
    fail inside the index write (500) and stay in the write journal, so that every later
    write failed too."""
    before = proxy.snapshot()
    for meta in (
        '{"n": NaN}',
        '{"n": Infinity}',
        '{"n": 1e400}',
        '{"n": 18446744073709551616}',
        '{"\\ud800": 1}',
        '{"n": ' + "[" * 900 + "]" * 900 + "}",
    ):
        body = b'{"documents": [{"id": "fz-meta", "text": "t", "metadata": ' + meta.encode()
        r = proxy.send("PUT", "/documents", content=body + b"}]}", headers=RW)
        assert r.status_code in (400, 422), meta
    assert proxy.snapshot() == before
    doc = {"id": "fz-ok", "text": "a later write", "metadata": {"n": 2**63 - 1, "x": [1.5]}}
    assert proxy.send("PUT", "/documents", json={"documents": [doc]}, headers=RW).status_code == 200
    stored = proxy.rt.store("new").retrieve(["fz-ok"], ["metadata"])["fz-ok"]
    assert stored["metadata"] == doc["metadata"]
    r = proxy.send("DELETE", "/documents/fz-ok", route="/documents/{doc_id}", headers=RW)
    assert r.json()["existed"] == {"old": 1, "new": 1}
    assert proxy.snapshot() == before


def test_unknown_routes_and_methods_answer_json_errors(proxy: Proxy) -> None:
    proxy.documented[("GET", "/nope")] = {404}
    proxy.documented[("GET", "/search")] = {405}
    assert proxy.send("GET", "/nope").json() == {"error": "Not Found"}
    r = proxy.send("GET", "/search")
    assert r.headers["allow"] == "POST"


# --- schemathesis -------------------------------------------------------------------------

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def fuzz_operation(op: schemathesis.APIOperation, url: str) -> int:
    """Positive and negative cases for one operation, with and without the admin key;
    returns how many ran (a failing check raises)."""
    ran = 0
    cases = st.one_of(op.as_strategy(generation_mode=m) for m in schemathesis.GenerationMode)

    @settings(FUZZ, max_examples=25, phases=[Phase.explicit, Phase.generate])
    @given(case=cases, admin=st.booleans())
    def run(case: schemathesis.Case, admin: bool) -> None:
        nonlocal ran
        ran += 1
        # 60 s, as the suite's other clients: schemathesis' default (10 s) timed out on a
        # loaded box, where GET /admin/plan embeds a sample beside the resumed worker.
        case.call_and_validate(
            base_url=url, headers=ADMIN if admin else None, checks=CHECKS, timeout=60
        )

    run()
    return ran


def test_schemathesis_against_the_openapi_schema(tmp_path: Path, models: dict) -> None:
    """Every operation of /openapi.json. Its own server: valid admin calls resume the
    worker and switch modes, which the property tests above must not see."""
    with live_proxy(tmp_path, models) as proxy:
        schema = schemathesis.openapi.from_url(proxy.url + "/openapi.json")
        ran: dict[str, int] = {}
        failures: list[str] = []
        for result in schema.get_all_operations():
            op = result.ok()
            try:
                ran[op.label] = fuzz_operation(op, proxy.url)
            except (Exception, BaseExceptionGroup) as e:  # all operations run and report
                failures.append(f"{op.label}: {e}")
        assert not failures, "\n\n".join(failures)
        assert len(ran) == len(proxy.documented) and all(n > 0 for n in ran.values()), ran


# --- Qdrant's REST API (proxy/api/qdrant.py) ------------------------------------------------

COLLECTION = "/collections/crossfade"  # the demo's old index: what a Qdrant app names
q_keys = filter_keys.map("metadata.".__add__) | filter_keys | st.sampled_from(["text", "doc_id"])
q_conditions = (
    st.fixed_dictionaries({"key": q_keys}, optional={"match": matches, "range": ranges})
    | st.fixed_dictionaries({"is_empty": st.fixed_dictionaries({"key": q_keys})})
    | st.fixed_dictionaries({"has_id": st.lists(scalars, max_size=3)})
    | st.fixed_dictionaries({"nested": st.fixed_dictionaries({"key": q_keys})})
    | st.fixed_dictionaries({"key": q_keys, "geo_radius": json_values})
    | json_values
)
q_filters = st.recursive(
    st.fixed_dictionaries(
        {}, optional={c: st.lists(q_conditions, max_size=3) for c in ("must", "should", "must_not")}
    ),
    lambda inner: st.fixed_dictionaries({"must": st.lists(inner | q_conditions, max_size=2)}),
    max_leaves=4,
)
documents = st.fixed_dictionaries(
    {"text": st.text(max_size=20) | st.text(any_char, max_size=4) | scalars, "model": st.just("m")}
)
q_queries = (
    documents
    | st.fixed_dictionaries({"nearest": documents | st.lists(st.floats(), max_size=4)})
    | st.lists(st.floats(-1, 1), min_size=384, max_size=384)
    | st.fixed_dictionaries({"fusion": st.sampled_from(["rrf", "dbsf", "x"])})
    | json_values
)
q_optional = {
    "filter": q_filters | json_values,
    "limit": st.integers(-2, 2000) | scalars,
    "offset": st.integers(-2, 50) | scalars,
    "with_payload": st.booleans() | st.lists(q_keys, max_size=2) | scalars,
    "with_vector": st.booleans(),
    "score_threshold": scalars,
    "prefetch": st.lists(st.fixed_dictionaries({"query": q_queries}), max_size=2),
    "extra": scalars,
}
query_bodies = st.fixed_dictionaries({"query": q_queries}, optional=q_optional)
points_in = st.lists(
    st.fixed_dictionaries(
        {"id": st.text(min_size=1, max_size=8).map("fz-".__add__) | scalars, "vector": q_queries},
        optional={"payload": st.fixed_dictionaries({}, optional={"text": scalars,
                                                                  "metadata": json_values})},
    ),
    max_size=3,
)  # fmt: skip
# Requests a working app sends (the strategies above are mostly refused): the answers
# to valid queries and writes are checked too.
valid_conditions = st.fixed_dictionaries(
    {"key": st.sampled_from(["metadata.topic", "metadata.part"])},
    optional={"match": st.fixed_dictionaries({"value": st.integers(0, 3) | st.text(max_size=6)})},
).filter(lambda c: "match" in c) | st.fixed_dictionaries(
    {"key": st.just("metadata.part"), "range": st.fixed_dictionaries({"gte": st.integers(0, 3)})}
)
valid_filters = st.fixed_dictionaries(
    {}, optional={c: st.lists(valid_conditions, max_size=2) for c in ("must", "should", "must_not")}
)
valid_queries = st.fixed_dictionaries(
    {"query": st.fixed_dictionaries({"text": good_text, "model": st.just("m")})},
    optional={
        "filter": valid_filters,
        "limit": st.integers(1, 20),
        "offset": st.integers(0, 5),
        "with_payload": st.booleans(),
        "score_threshold": st.floats(0, 0.05),
    },
)
valid_points = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.text(st.characters(codec="ascii"), min_size=1, max_size=8).map("fz-".__add__),
            "vector": st.fixed_dictionaries({"text": good_text, "model": st.just("m")}),
        },
        optional={
            "payload": st.fixed_dictionaries(
                {
                    "metadata": st.dictionaries(
                        st.sampled_from(["topic", "n"]), st.integers(0, 9), max_size=2
                    )
                }
            )
        },
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda p: p["id"],
)
QDRANT_CALLS = [
    ("POST", "/points/query", valid_queries),
    ("POST", "/points/query/batch", st.fixed_dictionaries({"searches": st.lists(valid_queries,
                                                                                 max_size=3)})),
    ("POST", "/points/scroll", st.fixed_dictionaries({}, optional={"filter": valid_filters,
                                                                   "limit": st.integers(1, 30)})),
    ("PUT", "/points", st.fixed_dictionaries({"points": valid_points})),
    ("POST", "/points/query", query_bodies | json_values),
    ("POST", "/points/query/batch", st.fixed_dictionaries({"searches": st.lists(query_bodies,
                                                                                 max_size=2)})),
    ("POST", "/points/scroll", st.fixed_dictionaries({}, optional={**q_optional,
                                                                   "offset": scalars})),
    ("POST", "/points/count", st.fixed_dictionaries({}, optional={"filter": q_filters})),
    ("POST", "/points", st.fixed_dictionaries({"ids": st.lists(scalars, max_size=3)})),
    ("PUT", "/points", st.fixed_dictionaries({"points": points_in}) | json_values),
    ("POST", "/points/delete", st.fixed_dictionaries({"points": st.lists(scalars, max_size=3)})
     | st.fixed_dictionaries({"filter": q_filters}) | json_values),
]  # fmt: skip
WRITES = {"PUT /points", "POST /points/delete"}


@settings(FUZZ, max_examples=150)
@given(call=st.sampled_from(range(len(QDRANT_CALLS))), data=st.data())
def test_qdrant_routes_answer_documented_statuses(
    proxy: Proxy, call: int, data: st.DataObject
) -> None:
    """Never a 500, every status documented, every error Qdrant-shaped (qdrant-client raises
    UnexpectedResponse on it), and a refused write changes nothing."""
    method, path, bodies = QDRANT_CALLS[call]
    body = data.draw(bodies)
    write = f"{method} {path}" in WRITES
    before = proxy.snapshot() if write else None
    headers = RW if write else {}
    r = proxy.client.request(method, COLLECTION + path, content=encode(body), headers=headers)
    allowed = proxy.documented[(method, "/collections/{collection_name}" + path)]
    assert r.status_code in allowed, (method, path, body, r.status_code, r.text[:300])
    out = r.json()
    if r.status_code == 200:
        assert out["status"] == "ok" and "result" in out
    elif r.status_code != 413:  # the body limit answers before any route, in crossfade's shape
        assert set(out) == {"status", "time"} and isinstance(out["status"]["error"], str), out
        if write:
            assert proxy.snapshot() == before


def test_qdrant_refused_and_served_writes(proxy: Proxy) -> None:
    before = proxy.snapshot()
    doc = {"text": "a note about loops", "model": "m"}
    bad = [
        {"points": [{"id": "fz-q1", "vector": [0.1] * 384}]},  # a raw vector: no text
        {"points": [{"id": "fz-q1", "vector": doc, "payload": {"other": 1}}]},  # not the layout
        {"points": [{"id": "fz-q1", "vector": doc, "payload": {"metadata": {"n": 2**64}}}]},
        {"points": [{"id": "fz-q1", "vector": {"text": " ", "model": "m"}}]},
    ]
    for body in bad:
        r = proxy.client.put(COLLECTION + "/points", json=body, headers=RW)
        assert r.status_code in (400, 422), (body, r.text)
        assert "error" in r.json()["status"]
    assert proxy.snapshot() == before
    ok = {"points": [{"id": "fz-q1", "vector": doc, "payload": {"metadata": {"topic": "q"}}}]}
    assert proxy.client.put(COLLECTION + "/points", json=ok, headers=RW).status_code == 200
    got = proxy.client.post(COLLECTION + "/points", json={"ids": ["fz-q1"]}).json()["result"]
    assert got == [{"id": "fz-q1", "payload": {"doc_id": "fz-q1", "text": doc["text"],
                                               "metadata": {"topic": "q"}}}]  # fmt: skip
    r = proxy.client.post(COLLECTION + "/points/delete", json={"points": ["fz-q1"]}, headers=RW)
    assert r.status_code == 200
    assert proxy.snapshot() == before
