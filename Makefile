# Two commands on a fresh machine: `make up` runs Surefoot, `make test` runs the tests.
PY := .venv/bin/python
PIP := $(PY) -m pip
# CPU torch by default; on a GPU node: make install TORCH_SPEC="torch" LLAMA_CMAKE_ARGS="-DGGML_CUDA=ON"
TORCH_SPEC ?= torch==2.13.0
export LLAMA_CMAKE_ARGS
PORT ?= 8080

.PHONY: install up test bench lint typecheck clean

.venv/.created:
	python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	touch $@

.venv/.torch: .venv/.created
	$(PIP) install --quiet "$(TORCH_SPEC)"
	touch $@

.venv/.project: .venv/.torch pyproject.toml
	$(PIP) install --quiet -e '.[test,bench]'
	touch $@

install: .venv/.project
	PY=$(PY) scripts/install-llama.sh

up: install
	.venv/bin/surefoot up --port $(PORT)

test: install
	$(PY) -m ruff check envreader events checkpoint_store knative functions surefoot tests bench
	$(PY) -m mypy
	$(PY) -m pytest -q

bench: install
	@for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf .venv
