# syntax=docker/dockerfile:1.7
# The inference replica (`surefoot serve`), in a CPU and a CUDA variant.
#
#   CPU:  docker build -f docker/replica.Dockerfile -t surefoot/replica:cpu .
#   CUDA: docker build -f docker/replica.Dockerfile -t surefoot/replica:cuda \
#           --build-arg VARIANT=cuda \
#           --build-arg BUILDER_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#           --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 .
#
# The install is `make install`, the same target CI runs: it builds llama-cpp-python with the
# flags below and proves the wheel with a smoke generation before the image is kept. Builder
# and runtime share the interpreter path (/usr/bin/python3 of the same distribution), so the
# virtual environment copies across unchanged.

ARG VARIANT=cpu
ARG BUILDER_IMAGE=python:3.11-slim-bookworm
ARG RUNTIME_IMAGE=python:3.11-slim-bookworm

FROM ${BUILDER_IMAGE} AS build
ARG VARIANT
# GPU architectures the CUDA kernels are built for: no GPU is visible while building, so they
# cannot be detected (Ampere, Ada, Hopper by default).
ARG CUDA_ARCHITECTURES="80;86;89;90"
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# python:* images bring their own interpreter; CUDA (Ubuntu) images need the distribution's.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake make git ca-certificates \
 && if ! command -v python3 >/dev/null; then \
      apt-get install -y --no-install-recommends python3 python3-venv python3-dev; fi \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml Makefile README.md ./
COPY scripts ./scripts
COPY events ./events
COPY checkpoint_store ./checkpoint_store
COPY knative ./knative
COPY functions ./functions
COPY surefoot ./surefoot
# CPU: the CPU build of torch and llama.cpp with portable x86-64 flags (GGML_NATIVE=ON crashes
# on some CPUs, see DESIGN.md). CUDA: torch from PyPI (CUDA wheels) and llama.cpp with
# GGML_CUDA; the smoke generation runs on the CPU against the driver stub, as no GPU is present.
RUN set -eux; \
    CPU_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"; \
    case "$VARIANT" in \
      cpu)  export PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu; \
            make install TORCH_SPEC="torch==2.13.0+cpu" LLAMA_CMAKE_ARGS="$CPU_FLAGS" ;; \
      cuda) ln -sf /usr/local/cuda/lib64/stubs/libcuda.so /usr/local/cuda/lib64/stubs/libcuda.so.1; \
            LD_LIBRARY_PATH=/usr/local/cuda/lib64/stubs:${LD_LIBRARY_PATH:-} \
            make install TORCH_SPEC="torch==2.13.0" \
              LLAMA_CMAKE_ARGS="$CPU_FLAGS -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHITECTURES" ;; \
      *)    echo "VARIANT must be cpu or cuda, got $VARIANT" >&2; exit 2 ;; \
    esac; \
    rm -rf /root/.cache; \
    find /app/.venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${RUNTIME_IMAGE}
ARG VARIANT
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PATH=/app/.venv/bin:$PATH \
    SUREFOOT_PORT=8080 SUREFOOT_CHECKPOINT_DIR=/var/lib/surefoot/checkpoints
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 ca-certificates \
 && if ! command -v python3 >/dev/null; then apt-get install -y --no-install-recommends python3; fi \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --create-home surefoot \
 && mkdir -p /var/lib/surefoot/checkpoints && chown surefoot /var/lib/surefoot/checkpoints
COPY --from=build /app /app
WORKDIR /app
USER 10001
EXPOSE 8080
LABEL org.opencontainers.image.title="surefoot-replica" dev.surefoot.variant="${VARIANT}"
ENTRYPOINT []
CMD ["surefoot", "serve"]
