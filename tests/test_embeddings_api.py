"""crossfade as an app's embeddings endpoint (`/v1/embeddings`, OpenAI's API), real models,
real HTTP: the official openai client, LangChain's OpenAIEmbeddings and LlamaIndex's
OpenAIEmbedding get the configured models' own vectors; errors in OpenAI's shape; every
returned vector remembered with its text (and found again after a trip through JSON floats or
base64), bounded by count, age and length, never logged."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import orjson
import pydantic_core
import pytest

from proxy.app import create_app
from proxy.demo import python_reference
from proxy.ingest import ingest
from proxy.migration.start import start_migration
from proxy.model import Embedder
from proxy.remembered import Remembered, RememberedTexts
from proxy.runtime import Runtime
from tests.helpers import RW_KEY, LiveServer, ProxyProcess, demo_settings

RO_KEY = "test-read-only-key-0123456789"
TEXTS = [
    "How do I catch an exception in Python?",
    "The with statement wraps a block in a context manager.",
    "Lambda expressions create anonymous functions.",
]
MAX_INPUTS, MAX_CHARS, MAX_REMEMBERED_CHARS = 16, 4000, 500


@dataclass
class Live:
    url: str
    rt: Runtime
    remembered: RememberedTexts  # the app's own (it runs in this process)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, models: dict) -> Iterator[Live]:
    """The app on a live port, reads needing a key (as off loopback), tight request bounds."""
    settings = demo_settings(
        tmp_path_factory.mktemp("embeddings"),
        server={"reads_require_key": True, "read_only_api_keys": [RO_KEY]},
        vector_clients={
            "embeddings_max_inputs": MAX_INPUTS,
            "embeddings_max_chars": MAX_CHARS,
            "remember_max_chars": MAX_REMEMBERED_CHARS,
        },
    )
    rt = Runtime(settings, models)
    app = create_app(rt)
    with LiveServer(app) as server:
        yield Live(server.url, rt, app.state.services.remembered)


def client(url: str, key: str = RW_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def name(models: dict[str, Embedder], side: str) -> str:
    return models[side].fingerprint.name


def cosines(a: Any, b: Any) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def sent_back(vector: list[float]) -> list[list[float]]:
    """The vector as a client sends it back (JSON floats) and as three JSON parsers read it:
    the standard library's, orjson's and pydantic's."""
    wire = json.dumps({"vector": vector})
    return [
        json.loads(wire)["vector"],
        orjson.loads(wire)["vector"],
        pydantic_core.from_json(wire)["vector"],
    ]


# -- the official openai client ---------------------------------------------------------------


def decoded(embedding: Any) -> list[float]:
    """A vector as the app holds it: a base64 string asked for explicitly, decoded as OpenAI
    documents it (little-endian float32), else the list the client returns."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4").tolist()  # type: ignore[no-any-return]
    return embedding  # type: ignore[no-any-return]


# "default": the openai client asks for base64 and decodes it itself (its default).
@pytest.mark.parametrize("encoding", ["default", "float", "base64"])
@pytest.mark.parametrize("side", ["old", "new"])
def test_openai_client_gets_the_models_own_vectors(
    live: Live, models: dict, side: str, encoding: str
) -> None:
    texts = [f"{t} ({side}, {encoding})" for t in TEXTS]
    fmt: Any = {} if encoding == "default" else {"encoding_format": encoding}
    got = client(live.url).embeddings.create(model=name(models, side), input=texts, **fmt)
    assert got.model == name(models, side) and [d.index for d in got.data] == [0, 1, 2]
    vectors = [decoded(d.embedding) for d in got.data]
    assert all(isinstance(v, list) for v in vectors)
    assert all(len(v) == models[side].fingerprint.dim for v in vectors)
    assert cosines(vectors, models[side].embed_documents(texts)).min() > 0.9999
    assert got.usage.prompt_tokens == got.usage.total_tokens > len(texts)
    # Each vector came back through JSON floats or base64 and is found again, with its text.
    fp = models[side].fingerprint.id
    for text, vector in zip(texts, vectors, strict=True):
        for parsed in sent_back(vector):
            assert live.remembered.recall(parsed) == Remembered(text, side, fp)
    # The other model's vectors of the same texts are another space: not these.
    other = "new" if side == "old" else "old"
    assert cosines(vectors, models[other].embed_documents(texts)).max() < 0.99


def test_one_text_a_fingerprint_id_and_the_model_list(live: Live, models: dict) -> None:
    c = client(live.url)
    fp = models["new"].fingerprint
    one = c.embeddings.create(model=fp.id, input="a single text", encoding_format="float")
    assert len(one.data) == 1 and one.model == fp.name
    assert cosines([one.data[0].embedding], models["new"].embed_documents(["a single text"])) > (
        0.9999
    )
    listed = {m.id: m for m in c.models.list().data}
    assert set(listed) == {name(models, "old"), name(models, "new")}
    assert listed[fp.name].owned_by == "crossfade"
    assert listed[fp.name].model_extra == {"side": "new", "fingerprint": fp.id, "dimensions": 384}
    assert c.models.retrieve(name(models, "old")).id == name(models, "old")
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("text-embedding-3-small")


# -- the frameworks, unchanged ----------------------------------------------------------------


def got_right(
    live: Live, models: dict, side: str, texts: list[str], vectors: list[list[float]]
) -> None:
    """`vectors` are `side`'s model's own for `texts`, and each is remembered with its text
    after a trip through JSON."""
    assert cosines(vectors, models[side].embed_documents(texts)).min() > 0.9999
    fp = models[side].fingerprint.id
    for text, vector in zip(texts, vectors, strict=True):
        assert live.remembered.recall(sent_back(vector)[0]) == Remembered(text, side, fp)


def test_langchain_openai_embeddings_work_unchanged(live: Live, models: dict) -> None:
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(
        model=name(models, "old"),
        base_url=live.url + "/v1",
        api_key=RW_KEY,  # type: ignore[arg-type]
        check_embedding_ctx_length=False,
        max_retries=0,
    )
    query = "what does yield do?"
    got_right(live, models, "old", [query], [emb.embed_query(query)])
    got_right(live, models, "old", TEXTS, emb.embed_documents(TEXTS))


def test_llamaindex_openai_embedding_with_a_model_name_of_ours(live: Live, models: dict) -> None:
    """LlamaIndex's OpenAIEmbedding checks `model` against OpenAI's names, but `model_name`
    (a keyword it passes through) names any model."""
    from llama_index.embeddings.openai import OpenAIEmbedding

    emb = OpenAIEmbedding(
        model_name=name(models, "new"), api_base=live.url + "/v1", api_key=RW_KEY, max_retries=0
    )
    query = "how do I open a file?"
    got_right(live, models, "new", [query], [emb.get_query_embedding(query)])
    got_right(live, models, "new", TEXTS, emb.get_text_embedding_batch(TEXTS))


# -- refusals, in OpenAI's shape --------------------------------------------------------------


def openai_shaped(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
    assert err["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    if code is not None:
        assert err["code"] == code, err
    return err  # type: ignore[no-any-return]


def test_refusals_are_openai_shaped(live: Live, models: dict) -> None:
    url, old = live.url, name(models, "old")
    auth = {"Authorization": f"Bearer {RW_KEY}"}

    def post(body: Any, headers: dict[str, str] = auth) -> httpx.Response:
        return httpx.post(url + "/v1/embeddings", json=body, headers=headers, timeout=60)

    # An unknown model: 404, as OpenAI answers it (the openai client raises NotFoundError).
    err = openai_shaped(post({"model": "text-embedding-3-small", "input": "x"}), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model" and old in err["message"]
    with pytest.raises(openai.NotFoundError):
        client(url).embeddings.create(model="text-embedding-ada-002", input="x")
    # Token ids (LangChain's default, tiktoken-tokenised): 400 naming the way out.
    for tokens in ([1, 2, 3], [[1, 2], [3]]):
        err = openai_shaped(post({"model": old, "input": tokens}), 400, "token_ids_not_supported")
        assert "check_embedding_ctx_length=False" in err["message"] and err["param"] == "input"
    # Keys: reads need one here; none or an unknown one is a 401, a read-only key reads.
    openai_shaped(post({"model": old, "input": "x"}, headers={}), 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        client(url, key="not-a-key").embeddings.create(model=old, input="x")
    assert client(url, key=RO_KEY).embeddings.create(model=old, input="x").data
    assert httpx.get(url + "/v1/models").status_code == 401
    # The bounds: inputs per request (400), characters per request (413), dimensions.
    err = openai_shaped(post({"model": old, "input": ["x"] * (MAX_INPUTS + 1)}), 400)
    assert "embeddings_max_inputs" in err["message"]
    err = openai_shaped(post({"model": old, "input": ["y" * 1000] * 5}), 413)
    assert "embeddings_max_chars" in err["message"]
    err = openai_shaped(post({"model": old, "input": "x", "dimensions": 128}), 400)
    assert err["param"] == "dimensions"
    assert post({"model": old, "input": "x", "dimensions": 384}).status_code == 200
    # Malformed requests: OpenAI's 400, naming the field.
    assert openai_shaped(post({"model": old, "input": []}), 400)["param"] == "input"
    bad = {"model": old, "input": "x", "encoding_format": "int8"}
    assert openai_shaped(post(bad), 400)["param"] == "encoding_format"
    assert openai_shaped(post({"input": "x"}), 400)["param"] == "model"
    r = httpx.post(
        url + "/v1/embeddings",
        content=b"{not json",
        headers={**auth, "content-type": "application/json"},
    )
    openai_shaped(r, 400)
    r = httpx.post(
        url + "/v1/embeddings", content=b"{}", headers={**auth, "content-type": "text/plain"}
    )
    openai_shaped(r, 415)


# -- the remembered texts ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_remembered_is_bounded_lru() -> None:
    store = RememberedTexts(max_entries=3, ttl_s=60, max_chars=100)
    v = vectors(5)
    store.remember("old", "fp", ["a", "b", "c"], v[:3])
    assert store.recall(v[0]) == Remembered("a", "old", "fp")  # a is now the most recent
    store.remember("new", "fp2", ["d"], v[3:4])  # over the bound: b, the least recent, goes
    assert store.recall(v[1]) is None
    assert [store.recall(v[i]).text for i in (0, 2, 3)] == ["a", "c", "d"]  # type: ignore[union-attr]
    assert len(store) == 3
    assert store.recall(v[4]) is None  # never remembered
    stats = store.stats()
    assert stats["entries"] == 3 and stats["capacity"] == 3
    assert (stats["hits"], stats["misses"]) == (4, 2)
    assert stats["approx_bytes"] > 0
    # A float64 copy of a float32 vector is the same vector; another value is not.
    assert store.recall(v[0].astype(np.float64)) is not None
    assert store.recall(v[0] + np.float32(1e-3)) is None


def test_remembered_forgets_after_the_ttl_and_skips_long_texts() -> None:
    clock = Clock()
    store = RememberedTexts(max_entries=100, ttl_s=10, max_chars=5, clock=clock)
    v = vectors(4)
    store.remember("old", "fp", ["short", "too long"], v[:2])
    assert store.recall(v[1]) is None and len(store) == 1  # over max_chars: not remembered
    clock.now += 6
    store.remember("old", "fp", ["later"], v[2:3])
    assert store.recall(v[0]) is not None  # a recall does not extend its time
    clock.now += 5  # 11 s after the first, 5 after the second
    assert store.recall(v[0]) is None and store.recall(v[2]) is not None
    assert len(store) == 1
    store.remember("old", "fp", ["later"], v[2:3])  # remembered again: its time restarts
    clock.now += 9
    assert store.recall(v[2]) is not None
    clock.now += 2
    assert len(store) == 0 and store.stats()["approx_bytes"] == 0
    nothing = RememberedTexts(max_entries=0, ttl_s=10, max_chars=5)
    nothing.remember("old", "fp", ["a"], v[:1])
    assert len(nothing) == 0 and nothing.recall(v[0]) is None


def test_remembered_holds_its_bound_under_threads() -> None:
    store = RememberedTexts(max_entries=500, ttl_s=60, max_chars=100)
    v = vectors(4000, seed=1)

    def work(part: int) -> None:
        for i in range(part, 4000, 40):
            store.remember("new", "fp", [f"t{j}" for j in range(i, i + 10)], v[i : i + 10])
            store.recall(v[i])

    threads = [threading.Thread(target=work, args=(p,)) for p in range(0, 40, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store) == 500
    # The expiry queue stays within its bound too (keys remembered again leave stale items).
    assert len(store._expiry) <= 2 * 500 + 1024
    assert store.stats()["hits"] + store.stats()["misses"] == 400


def test_remembered_counts_reach_the_metrics(live: Live, models: dict) -> None:
    client(live.url).embeddings.create(model=name(models, "old"), input="counted")
    auth = {"Authorization": f"Bearer {RW_KEY}"}
    text = httpx.get(live.url + "/metrics", headers=auth, timeout=60).text
    stats = live.remembered.stats()
    assert f"crossfade_remembered_texts {float(stats['entries'])}" in text
    assert f"crossfade_remembered_bytes {float(stats['approx_bytes'])}" in text
    assert 'crossfade_remembered_recalls_total{result="hit"}' in text
    # Texts over remember_max_chars are embedded, not remembered.
    long = "z" * (MAX_REMEMBERED_CHARS + 1)
    got = client(live.url).embeddings.create(model=name(models, "old"), input=long)
    assert live.remembered.recall(got.data[0].embedding) is None


# -- a real `crossfade serve`: texts never logged ------------------------------------------------


def test_texts_never_reach_the_logs_even_at_debug(tmp_path: Path, models: dict) -> None:
    proxy = ProxyProcess(tmp_path, {"lazy": False, "backfill": False})
    with Runtime(proxy.settings(), dict(models)) as rt:
        ingest(rt, "old", python_reference()[:4], progress=False)
        start_migration(rt, progress=False)
    marker = "zebra-quartz-marmalade"
    texts = [f"{marker} {i}: a private sentence of the app" for i in range(4)]
    try:
        proxy.start(env={"CROSSFADE_SERVER__LOG_LEVEL": "debug"})
        from langchain_openai import OpenAIEmbeddings

        emb = OpenAIEmbeddings(
            model=name(models, "new"),
            base_url=proxy.url + "/v1",
            api_key=RW_KEY,  # type: ignore[arg-type]
            check_embedding_ctx_length=False,
        )
        got = emb.embed_documents(texts)
        assert cosines(got, models["new"].embed_documents(texts)).min() > 0.9999
        r = httpx.post(
            proxy.url + "/v1/embeddings",
            json={"model": "unknown-" + marker, "input": texts},
            headers={"api-key": RW_KEY},
        )
        assert r.status_code == 404
    finally:
        proxy.stop()
    log = proxy.log.read_text()
    assert "/v1/embeddings: 4 texts, new model" in log  # the route's own debug line
    assert "private sentence" not in log
