# syntax=docker/dockerfile:1.7
# One small image for the gateway, the functions host and the event sources; the manifests pick
# the command (`surefoot gateway`, `surefoot functions`, `surefoot source gpu|pods`).
#
#   docker build -f docker/app.Dockerfile -t surefoot/app .
#
# None of these load a model, so the image leaves out the model stack that `make install` brings
# (torch, llama.cpp, the model packages): the project is installed without dependencies, then
# docker/app-requirements.txt (checked against pyproject.toml by the tests).

ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY events ./events
COPY checkpoint_store ./checkpoint_store
COPY knative ./knative
COPY functions ./functions
COPY surefoot ./surefoot
COPY docker/app-requirements.txt ./
RUN python -m venv /app/.venv \
 && /app/.venv/bin/pip install -r app-requirements.txt \
 && /app/.venv/bin/pip install --no-deps . \
 && /app/.venv/bin/surefoot --help >/dev/null \
 && find /app/.venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 PATH=/app/.venv/bin:$PATH SUREFOOT_PORT=8080
COPY --from=build /app/.venv /app/.venv
RUN useradd --uid 10001 --create-home surefoot
USER 10001
EXPOSE 8080
LABEL org.opencontainers.image.title="surefoot-app"
CMD ["surefoot", "--help"]
