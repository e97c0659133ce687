# Two commands on a fresh machine: `make demo` runs the main job on the embedded defaults,
# `make test` runs the tests. Both install what they need first (uv, then the locked environment).
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
SHARED ?= $(abspath ../shared/datasets)

.PHONY: install demo test test-slow bench lint

install:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen

demo: install
	$(UV) run ganops data prepare

test: install
	GANOPS_SHARED_DATASETS=$(SHARED) $(UV) run pytest

test-slow: install
	GANOPS_SHARED_DATASETS=$(SHARED) $(UV) run pytest -m slow

bench: install
	GANOPS_SOURCE_ROOT=$(SHARED) $(UV) run python benchmarks/prepare_data.py

lint: install
	$(UV) run ruff check gan_models pipelines tests benchmarks
