# Two set-up commands, each from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint data headline mutants clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch/torchvision pinned to the releases this CPU machine serves from local files.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# Fashion-MNIST from Debian's package when we can install it; otherwise torchvision downloads
# it here, in one process (the demo's torchrun processes would race for the same files).
data: $(VENV)/.installed
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ] && [ -z "$$WIDTHSEARCH_DATA" ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
		else \
			echo "Fashion-MNIST not in $(FMNIST): downloading it with torchvision"; \
			$(BIN)/python -c "from widthsearch.supernet.data import get_data; get_data()" \
				2>/dev/null || echo "Fashion-MNIST could not be downloaded"; \
		fi; \
	fi

# One process per core (torchrun, gloo): data-parallel training, subnets fine-tuned side by side.
CORES ?= $(shell nproc 2>/dev/null || echo 1)
demo: $(VENV)/.installed data
	$(BIN)/torchrun --standalone --nproc_per_node $(CORES) -m widthsearch.recipes.cli run --out runs/demo
	@echo "Report: runs/demo/report.md (plot: runs/demo/pareto.png)"

# Lint and the import contracts (pyproject.toml), then the suite with the real data in place
# (`data`, as for `make demo`); in CI (CI set) a missing dataset fails its tests instead of
# skipping them. One pytest-xdist worker per core (a test file stays on one worker, so its
# module fixtures are built once). Under 10 minutes.
test: $(VENV)/.installed data
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -n $(CORES) --dist loadfile --durations 15

# Mutation testing of the cost model, samplers, width space, budgets and inheritance
# (not part of `make test`; about an hour on one core). Results: build/mutants/*/.
mutants: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[test,mutation]"
	.ci/mutants

# The README's headline figures (benchmarks/warmstart.py: all of Fashion-MNIST, 2 seeds, every
# row and control; many hours on a CPU, one process per part and core; reruns skip finished
# cells and resume trainings per epoch). The first edition: benchmarks/headline.py.
headline: $(VENV)/.installed data
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/warmstart.py --part pipeline & pid=$$!; \
		$(BIN)/python benchmarks/warmstart.py --part scratch; rc=$$?; wait $$pid && [ $$rc = 0 ]
	$(BIN)/python benchmarks/warmstart.py --part control & pid=$$!; \
		$(BIN)/python benchmarks/warmstart.py --part random; rc=$$?; wait $$pid && [ $$rc = 0 ]
	$(BIN)/python benchmarks/warmstart.py --part latency

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs
