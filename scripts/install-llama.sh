#!/usr/bin/env bash
# Installs llama-cpp-python into the project venv from a wheel built with CPU flags that run on
# every x86-64 machine we use (a GGML_NATIVE build crashes in ggml's AMX kernels), and proves the
# install with a smoke generation. A wheel that fails the smoke test is deleted and rebuilt once,
# so a crashing build is never reused from a cache.
set -euo pipefail

PY=${PY:-.venv/bin/python}
VERSION=${LLAMA_CPP_VERSION:-0.3.36}
CMAKE_ARGS=${LLAMA_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"}
KEY=$(printf '%s|%s|%s' "$VERSION" "$CMAKE_ARGS" "$($PY -c 'import sys;print(sys.version_info[:2])')" | sha256sum | cut -c1-16)
CACHE=${SUREFOOT_WHEEL_CACHE:-$HOME/.cache/surefoot/wheels}/llama-$KEY
STAMP=.venv/.llama-$KEY.ok

if [ -f "$STAMP" ]; then
  exit 0
fi

build() {
  rm -rf "$CACHE" && mkdir -p "$CACHE"
  echo "building llama-cpp-python $VERSION (CMAKE_ARGS=$CMAKE_ARGS); this takes several minutes"
  CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    $PY -m pip wheel --quiet --no-cache-dir --no-deps "llama-cpp-python==$VERSION" -w "$CACHE"
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
