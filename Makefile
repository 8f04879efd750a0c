# A fresh machine needs only Python 3.10+; `make demo` and `make test` set everything else up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

.PHONY: setup demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The CPU torch pin goes first, so the `torch>=` requirement below installs nothing more.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(VENV)/.installed
	$(BIN)/peftrec fetch ml-100k
	$(BIN)/peftrec fetch ml-100k-kg
	$(BIN)/peftrec fetch book-crossing
	$(BIN)/peftrec fetch ml-1m

# Train MiniLM + LoRA on MovieLens-100K (protocol P1), then query the saved model as an app.
demo: setup
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/train_rating.py --config recipes/configs/minilm_lora_rating.yaml
	$(BIN)/peftrec recommend runs/minilm_lora_rating/model --user 196 -k 5

test: setup
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff format --check peftrec recipes tests benchmarks
	$(BIN)/ruff check peftrec recipes tests benchmarks

clean:
	rm -rf runs .pytest_cache
