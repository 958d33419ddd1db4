# gguf-serve images. Two targets, one server:
#   docker build --target cpu  -t gguf-serve:0.1.0-cpu  .   # NumPy backend, python:3.11-slim (the default target)
#   docker build --target cuda -t gguf-serve:0.1.0-cuda .   # CUDA backend, nvidia/cuda devel (nvcc for pycuda)
# Both run as uid 10001, keep the model cache on the /models volume, and exec the server as PID 1
# (exec-form ENTRYPOINT), so SIGTERM reaches it directly and it drains within GGUF_SERVE_SHUTDOWN_GRACE_S.
#
# Base images are pinned by tag and by index digest (multi-arch manifest list). To bump one:
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm   # prints the new Digest
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04@sha256:392c0df7b577ecae17a17f6ba7f2009c217bb4422f8431c053ae9af61a8c148a

# ---------------------------------------------------------------------------------------------------
# cuda-build: a venv with gguf-serve[cuda]; pycuda compiles here against the toolkit's headers and the
# libcuda stub (LIBRARY_PATH=/usr/local/cuda/lib64/stubs is set by the base image).
FROM ${CUDA_IMAGE} AS cuda-build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Ubuntu drops superseded package versions from its -updates pocket, so exact apt pins stop resolving
# within weeks; the base image is pinned by digest instead and these are its distribution's packages.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY inference ./inference
COPY config ./config
COPY cuda ./cuda
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ".[cuda]"

# ---------------------------------------------------------------------------------------------------
# cuda: the GPU runtime. It keeps the devel base because pycuda's SourceModule runs nvcc (and the host
# compiler it calls) when the kernels are first compiled; the compile cache lives under /tmp.
FROM ${CUDA_IMAGE} AS cuda
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 g++ \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /models \
    && chown app:app /models
COPY --from=cuda-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GGUF_SERVE_HOST=0.0.0.0 \
    GGUF_SERVE_PORT=8000 \
    GGUF_SERVE_CACHE_DIR=/models \
    GGUF_SERVE_BACKEND=cuda
VOLUME ["/models"]
USER 10001:10001
WORKDIR /home/app
EXPOSE 8000
# /health is 503 while the model loads: the start period covers a first-run download + load.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GGUF_SERVE_PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["gguf-serve"]
CMD ["serve"]

# ---------------------------------------------------------------------------------------------------
# cpu-build: a venv with gguf-serve (NumPy backend), no compiler needed: every dependency has a wheel.
FROM ${PYTHON_IMAGE} AS cpu-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY inference ./inference
COPY config ./config
COPY cuda ./cuda
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir .

# ---------------------------------------------------------------------------------------------------
# cpu: the slim runtime (last stage, so a plain `docker build .` gives this one).
FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /models \
    && chown app:app /models
COPY --from=cpu-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GGUF_SERVE_HOST=0.0.0.0 \
    GGUF_SERVE_PORT=8000 \
    GGUF_SERVE_CACHE_DIR=/models \
    GGUF_SERVE_BACKEND=numpy
VOLUME ["/models"]
USER 10001:10001
WORKDIR /home/app
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GGUF_SERVE_PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["gguf-serve"]
CMD ["serve"]
