# Set-up and everyday commands. Each target builds .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.geodetect-installed

.PHONY: setup demo test test-slow lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	# torch/torchvision pinned to the releases this project is tested with.
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -e '.[test,onnx]'
	$(BIN)/python -m ipykernel install --user --name geodetect --display-name "geodetect (.venv)"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/geodetect demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The slower checks (notebooks, training to accuracy, every runtime, GeoDeep): .ci/run
# runs them after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m slow

lint: $(STAMP)
	$(BIN)/ruff check geodetect tests benchmarks
	$(BIN)/ruff format --check geodetect tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
