# Quick start: `make demo` and `make test` (`make test-fast` for the inner loop). All create .venv and install on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR := outputs/demo

.PHONY: demo test test-fast lint install bench clean pools deploy serve

$(BIN)/av2av: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# CPU torch pinned first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0 > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	$(BIN)/pip install --quiet -e '.[dev]' >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	$(BIN)/pip install --quiet --no-deps ltx-core==1.0.0 >> $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)  # parity tests' reference; its deps would pull a CUDA torchaudio
	$(BIN)/python -c "import torch, diffusers, prefect, av"  # fail here, not later, if the install broke
	touch $@

install: $(BIN)/av2av

demo: install
	rm -rf $(DEMO_DIR)
	$(BIN)/av2av sample $(DEMO_DIR)
	@echo "--- 1/2 dataset check (no GPU involved) ---"
	$(BIN)/av2av check $(DEMO_DIR)/sample_dataset.zip --frames 17 --resolution low --aspect-ratio 16:9 \
		--report $(DEMO_DIR)/check/report.json
	@echo "--- 2/2 check -> encode -> train -> validate -> upload (tiny model, CPU) ---"
	$(BIN)/av2av train --config $(DEMO_DIR)/request.json
	@echo "Outputs: $(abspath $(DEMO_DIR))/run/ (lora.safetensors, config.json, validation.mp4, loss.png, report.json, debug_dataset.zip, result.json)"

test: install   # everything CI runs: lint, then every test tier
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

test-fast: install   # unit tests only (no e2e stack, no slow real-width or training-run tests): under 2 min
	$(BIN)/python -m pytest -m "not e2e and not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/check_startup.py

# --- Prefect server, pools, deployments, workers (see README "Running with a Prefect server") ---
PREFECT := $(BIN)/prefect
# Only these targets talk to a server: `make test` and `make demo` must not inherit its URL.
pools deploy serve: export PREFECT_API_URL ?= http://127.0.0.1:4200/api
pools deploy serve: export AV2AV_PROJECT_DIR ?= $(abspath .)

pools: install
	$(PREFECT) work-pool create cpu --type process --overwrite
	$(PREFECT) work-pool create gpu --type process --overwrite

deploy: pools
	$(PREFECT) --no-prompt deploy --all

serve: install
	$(BIN)/python -m flows.serve   # server, pools, deployments, two workers; Ctrl-C stops them all

clean:
	rm -rf outputs .pytest_cache
