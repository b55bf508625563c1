# Two set-up commands, each from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test lint data headline clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch/torchvision pinned to the releases this CPU machine serves from local files.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

# Fashion-MNIST from Debian's package when we can install it; otherwise torchvision downloads it.
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ] && [ -z "$$WIDTHSEARCH_DATA" ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
		else \
			echo "Fashion-MNIST not in $(FMNIST): torchvision will try to download it"; \
		fi; \
	fi

demo: $(VENV)/.installed data
	$(BIN)/widthsearch run --out runs/demo
	@echo "Report: runs/demo/report.md (plot: runs/demo/pareto.png)"

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# The README's headline figures (about an hour on 2 CPU cores; reruns skip finished cells).
headline: $(VENV)/.installed data
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/headline.py

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs
