#!/usr/bin/env bash
# Installs llama-cpp-python into the project venv from a wheel built from its source release with
# CPU flags that run on every x86-64 machine we use (a GGML_NATIVE build crashes in ggml's AMX
# kernels) and with the patches in scripts/llama-patches/ applied to its vendored llama.cpp, and
# proves the install with a smoke generation. A wheel that fails the smoke test is deleted and
# rebuilt once, so a crashing build is never reused from a cache. The patches are part of the
# cache key: a wheel built without them is never installed.
set -euo pipefail

PY=${PY:-.venv/bin/python}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
CMAKE_ARGS=${LLAMA_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"}
PATCHES=$(cd "$(dirname "$0")/llama-patches" && pwd)
PATCH_SUM=$(cat "$PATCHES"/*.patch | sha256sum | cut -c1-16)
KEY=$(printf '%s|%s|%s|%s' "$VERSION" "$CMAKE_ARGS" "$($PY -c 'import sys;print(sys.version_info[:2])')" "$PATCH_SUM" | sha256sum | cut -c1-16)
CACHE=${SUREFOOT_WHEEL_CACHE:-$HOME/.cache/surefoot/wheels}/llama-$KEY
STAMP=.venv/.llama-$KEY.ok

if [ -f "$STAMP" ]; then
  exit 0
fi

build() {
  rm -rf "$CACHE" && mkdir -p "$CACHE"
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  echo "building llama-cpp-python $VERSION (CMAKE_ARGS=$CMAKE_ARGS); this takes several minutes"
  $PY -m pip download --quiet --no-cache-dir --no-deps --no-binary :all: \
    "llama-cpp-python==$VERSION" -d "$src"
  tar -xzf "$src"/llama_cpp_python-"$VERSION".tar.gz -C "$src"
  for p in "$PATCHES"/*.patch; do
    patch --quiet --forward -p1 -d "$src/llama_cpp_python-$VERSION" < "$p"
  done
  CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    $PY -m pip wheel --quiet --no-cache-dir --no-deps "$src/llama_cpp_python-$VERSION" -w "$CACHE"
}

install_and_smoke() {
  local wheel
  wheel=$(ls "$CACHE"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
  [ -n "$wheel" ] || return 1
  $PY -m pip install --quiet --force-reinstall --no-cache-dir "$wheel" || return 1
  $PY -m pip install --quiet --no-cache-dir "diskcache>=5.6" "jinja2>=3" || return 1
  $PY scripts/llama_smoke.py
}

if ! install_and_smoke; then
  echo "no working llama-cpp-python wheel in $CACHE: building one"
  build
  install_and_smoke || { echo "llama-cpp-python smoke generation failed after a clean build" >&2; rm -rf "$CACHE"; exit 1; }
fi
touch "$STAMP"
