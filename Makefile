# Two commands on a fresh machine: `make demo` runs the main job on the embedded defaults,
# `make test` runs the tests. Both install what they need first (uv, then the locked environment).
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
SHARED ?= $(abspath ../shared/datasets)

.PHONY: install demo test test-slow bench lint

install:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen

# The whole pipeline on the embedded defaults, sized for a 2-core CPU machine (README: figures and time):
# a 7,000-image synthetic-svhn (1,000 of them carved out for validation; 1,000 labels), quarter-width
# nets without dropout, lr 1e-3 and the unlabelled loss at 0.3 (the K+1 loss otherwise holds the
# classifier at chance for the first few hundred steps: benchmarks/RESULTS.md), 8 epochs on 2 Ray
# workers of 50 images, the best validation epoch published, a 2,000-image evaluation.
DEMO_SET := --set data.synthetic.train_size=7000 --set data.synthetic.test_size=2000 --set data.val_size=1000 \
	--set model.g_features=16 --set model.d_features=16 --set model.d_input_dropout=0 --set model.d_dropout=0 \
	--set train.batch_size=50 --set train.epochs=8 --set train.lr_d=1e-3 --set train.lr_g=1e-3 \
	--set train.unlabeled_weight=0.3 --set train.eval_every=2 \
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
