# gguf-serve images. One runtime stage, two variants chosen by VARIANT:
#   docker build -t gguf-serve:0.1.0-cpu .                            # cpu backend, python:3.11-slim
#   docker build --build-arg VARIANT=cuda -t gguf-serve:0.1.0-cuda .  # CUDA backend, nvidia/cuda devel + nvcc
# Both run as uid 10001, keep the model cache on the /models volume, and exec the server as PID 1
# (exec-form ENTRYPOINT), so SIGTERM reaches it directly and it drains within GGUF_SERVE_SHUTDOWN_GRACE_S.
# A variant is two stages, <variant>-base (the runtime base) and <variant>-build (a venv at /opt/venv);
# BuildKit (Docker's default builder) builds only the chosen variant's stages.
#
# Base images are pinned by tag and by index digest (multi-arch manifest list). These two digests were not
# pulled here (no registry access from the dev machines); they were cross-checked against several
# unrelated public repositories that pin the same tag to the same digest. To bump one:
#   docker buildx imagetools inspect python:3.11.14-slim-bookworm   # prints the new Digest
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04@sha256:392c0df7b577ecae17a17f6ba7f2009c217bb4422f8431c053ae9af61a8c148a
ARG VARIANT=cpu

# ---------------------------------------------------------------------------------------------------
# cpu: the slim Python image. The native CPU kernels (cpu/*.c) are compiled in the build stage, with gcc,
# into the venv; the runtime needs only the OpenMP runtime they link (libgomp1). The kernels pick their
# SIMD path (scalar, AVX2, AVX-512, AVX-512 VNNI) at run time, so the image runs on any x86-64 host.
FROM ${PYTHON_IMAGE} AS cpu-base
ENV GGUF_SERVE_BACKEND=cpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

FROM cpu-base AS cpu-build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# the build context is .dockerignore's allow-list: exactly what `pip install .` needs
COPY . .
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check .

# ---------------------------------------------------------------------------------------------------
# cuda: the devel image at run time too, because pycuda's SourceModule runs nvcc (and the host compiler
# it calls) when the kernels are first compiled; the compile cache lives under /tmp.
FROM ${CUDA_IMAGE} AS cuda-base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive GGUF_SERVE_BACKEND=cuda
# Ubuntu drops superseded package versions from its -updates pocket, so exact apt pins stop resolving
# within weeks; the base image is pinned by digest instead and these are its distribution's packages.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 g++ \
    && rm -rf /var/lib/apt/lists/*

# pycuda compiles here against the toolkit's headers and the libcuda stub (LIBRARY_PATH is set by the base).
FROM cuda-base AS cuda-build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv python3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check ".[cuda]"

# ---------------------------------------------------------------------------------------------------
# The runtime, for either variant (last stage, so a plain `docker build .` gives the cpu image).
FROM ${VARIANT}-build AS build
FROM ${VARIANT}-base AS runtime
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home --shell /usr/sbin/nologin app \
    && mkdir -p /models \
    && chown app:app /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GGUF_SERVE_HOST=0.0.0.0 \
    GGUF_SERVE_PORT=8000 \
    GGUF_SERVE_CACHE_DIR=/models
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
