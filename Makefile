# promptserve: `make serve` runs the server on the demo backbone and tasks; `make test` runs the tests.
# Both create .venv on first use. Override TORCH_SPEC for another torch build (e.g. a CPU wheel).

PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1
HOST        ?= 127.0.0.1
PORT        ?= 8000
STORE       ?= ./registry
BACKBONE    ?= assets/backbones/vit_tiny_p4_32_distill_mnv1_mlp5.safetensors
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv serve-venv system-deps test typecheck test-fast lint serve docs-assets clean help

help:
	@echo "make serve   - set up .venv, seed $(STORE) from assets/tasks, serve on http://$(HOST):$(PORT)"
	@echo "make test    - set up .venv (+ redis-server), run the whole test suite"
	@echo "make test-fast - the unit tests alone (tests/unit)"
	@echo "make lint    - ruff"
	@echo "make typecheck - mypy on promptserve/, kernels/, prompt_store/ (part of make test)"
	@echo "make docs-assets - the README's curl answer and docs/img screenshots, from a live demo server"

venv: $(VENV)/.installed
serve-venv: $(VENV)/.serve-installed

# serving needs the package and torch only; the tests add the [dev] extra (Ray, Triton, browsers' drivers, ...)
$(VENV)/.serve-installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed: $(VENV)/.serve-installed
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

# redis-server for the Redis store tests; Fashion-MNIST for the trainer's dataset tests; chromium +
# chromium-driver for the web page's browser tests
system-deps:
	@if ! command -v redis-server >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq redis-server >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq redis-server)) \
	      || echo "could not install redis-server: Redis tests will skip"; \
	  else echo "redis-server missing: run 'sudo apt-get install -y redis-server' (Redis tests skip without it)"; fi; \
	fi
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || echo "dataset-fashion-mnist not installed: its tests skip"; \
	fi
	@if ! command -v chromedriver >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1)) || echo "could not install chromium: the web page's browser tests skip"; \
	  else echo "chromium missing: run 'sudo apt-get install -y chromium chromium-driver' (the web page's browser tests skip without it)"; fi; \
	fi

# every tier (tests/README.md): tests/unit, tests/integration, tests/e2e, then the two that run in processes of
# their own. tests/kernels run alone (not twice): import order inside one process once hid a kernels name clash
# that only a fresh `pytest tests/kernels` showed. Ray Serve runs alone too: its threads and the gevent that
# tritonclient.http imports (the protocol tests) once crashed one process together (a segfault inside Ray's
# handle, not reproduced alone)
test: venv system-deps typecheck
	$(PY) -m pytest -q -p no:cacheprovider --ignore=tests/kernels --ignore=tests/e2e/test_ray_serve.py
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e/test_ray_serve.py
	$(PY) -m pytest -q -p no:cacheprovider tests/kernels

# mypy on promptserve/, kernels/, prompt_store/ ([tool.mypy] in pyproject.toml says what is checked and why not more)
typecheck: venv
	$(VENV)/bin/mypy

# the unit tier alone: in one process, no servers, no training runs (under a minute on 2 busy cores)
test-fast: venv
	$(PY) -m pytest -q -p no:cacheprovider -x tests/unit

lint: venv
	$(VENV)/bin/ruff check .

serve: serve-venv
	@$(if $(wildcard $(BACKBONE)),,echo "$(BACKBONE) not built yet: serving the random-tiny test backbone")
	$(VENV)/bin/promptserve serve --backbone $(if $(wildcard $(BACKBONE)),$(BACKBONE),random-tiny) \
	  --store $(STORE) --seed-from assets/tasks --host $(HOST) --port $(PORT)

# the README's curl answer and the page screenshots come from a live demo server, never typed by hand
docs-assets: venv
	$(PY) tools/docs_assets.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
