# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install system-deps demo test test-fast bench flops clean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to 2.13.0 (on the development machine pip finds a local CPU build of it), so the package's
# range installs nothing more.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,tensorboard]"
	touch $(STAMP)

# Java runs the COCO caption metrics (PTB tokenizer, METEOR); installed with apt where it is missing.
# Chromium + chromedriver run the Space demo's browser test; where apt cannot install them, that test is skipped.
system-deps:
	@command -v java >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq default-jre-headless; }
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
		|| echo "system-deps: chromium / chromium-driver not installed: the Space browser test will be skipped"

demo: install
	$(PY) -m leanvision.demo

# Two pytest-xdist workers, one torch thread each (tests/conftest.py); a test file stays on one worker so its
# module fixtures (exported models, trained folders) are built once. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: install system-deps
	$(PYTEST)

test-fast: install system-deps
	$(PYTEST) -m "not slow"

flops: install
	$(VENV)/bin/leanvision flops

# One torch thread: on a shared 2-core machine a second thread adds a fixed wait per op (see benchmarks/README.md).
bench: install
	$(PY) benchmarks/bench_dtp_vit.py --threads 1
	$(PY) benchmarks/bench_qvision.py --threads 1
	$(PY) benchmarks/bench_gated_sparse_blip.py --preset base --threads 1
	$(PY) benchmarks/bench_dtp_llava.py --threads 1

clean:
	rm -rf $(VENV) outputs
