# Two commands on a fresh machine: `make demo` runs the main job on the embedded defaults,
# `make test` runs the tests. Both install what they need first (uv, then the locked environment).
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
SHARED ?= $(abspath ../shared/datasets)

.PHONY: install demo test test-slow test-gpu gpu-check bench lint

install:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --extra auth --compile-bytecode   # every process (each Ray worker too) then skips compiling its imports

# The whole pipeline on the embedded defaults, sized for a 2-core CPU machine (README: figures and time;
# benchmarks/demo_recipe.py measures the recipe against its alternatives): synthetic-svhn rendered at
# difficulty 0.5 (the full setting needs thousands of steps more than the demo has), 21,000 train
# images (1,000 carved out for validation; 1,000 labels) and 2,000 test; quarter-width nets without
# dropout; the DCGAN generator on N(0, I) with the K+1 non-saturating loss (feature matching and
# improved-gan's generator learn the classifier and the samples more slowly in 1,000 steps); the
# unsupervised weight ramped up over the first 400 steps; lr 1e-3, 5 epochs on 2 Ray workers of
# 50 images (1,000 steps), the best validation epoch published, a 2,000-image evaluation.
DEMO_SET := --set data.synthetic.train_size=21000 --set data.synthetic.test_size=2000 --set data.val_size=1000 \
	--set data.synthetic.difficulty=0.5 \
	--set model.g_features=16 --set model.d_features=16 --set model.d_input_dropout=0 --set model.d_dropout=0 \
	--set model.generator=dcgan --set model.latent=normal --set train.feature_matching=false \
	--set train.batch_size=50 --set train.epochs=5 --set train.lr_decay_start=3 --set train.lr_d=1e-3 --set train.lr_g=1e-3 \
	--set train.unlabeled_rampup=400 --set train.eval_every=1 \
	--set evaluate.num_real=2000 --set evaluate.num_generated=2000 --set evaluate.domain_classifier_steps=500

demo: install
	$(UV) run ganops retrain --sample-out runs/champion.png $(DEMO_SET)

test: install
	GANOPS_SHARED_DATASETS=$(SHARED) $(UV) run pytest

test-slow: install
	$(UV) sync --frozen --extra postgres --extra auth   # the PostgreSQL path of infra/ (where PostgreSQL is installed)
	GANOPS_SHARED_DATASETS=$(SHARED) $(UV) run --extra postgres pytest -m slow

# On a machine with CUDA: the `gpu` tests (skipped elsewhere), and the GPU benchmark's one table.
test-gpu: install
	GANOPS_SHARED_DATASETS=$(SHARED) $(UV) run pytest -m gpu -rs

gpu-check: install
	$(UV) run python benchmarks/gpu_check.py

bench: install
	GANOPS_SOURCE_ROOT=$(SHARED) $(UV) run python benchmarks/prepare_data.py

lint: install
	$(UV) run ruff check gan_models pipelines tests benchmarks
