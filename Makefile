# Two commands on a fresh machine: `make demo` runs the main job on the embedded defaults,
# `make test` runs the tests. Both install what they need first (uv, then the locked environment).
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
SHARED ?= $(abspath ../shared/datasets)

.PHONY: install demo test test-slow bench lint

install:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen

# The whole pipeline on the embedded defaults, sized for a 2-core CPU machine (about 10 minutes):
# a 6,000-image synthetic-svhn, half-width nets, 2 epochs on 2 Ray workers, 2,000-image evaluation.
DEMO_SET := --set data.synthetic.train_size=6000 --set data.synthetic.test_size=2000 \
	--set model.g_features=32 --set model.d_features=32 --set train.epochs=2 \
	--set evaluate.num_real=2000 --set evaluate.num_generated=2000

demo: install
	$(UV) run ganops retrain --sample-out runs/champion.png $(DEMO_SET)

test: install
	GANOPS_SHARED_DATASETS=$(SHARED) $(UV) run pytest

test-slow: install
	$(UV) sync --frozen --extra postgres   # the PostgreSQL path of infra/ (runs where PostgreSQL is installed)
	GANOPS_SHARED_DATASETS=$(SHARED) $(UV) run --extra postgres pytest -m slow

bench: install
	GANOPS_SOURCE_ROOT=$(SHARED) $(UV) run python benchmarks/prepare_data.py

lint: install
	$(UV) run ruff check gan_models pipelines tests benchmarks
