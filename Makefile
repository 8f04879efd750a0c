# A fresh machine needs only Python 3.10+; `make demo` and `make test` set everything else up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

.PHONY: setup demo test lint docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The CPU torch pin goes first, so the `torch>=` requirement below installs nothing more.
$(VENV)/.installed: pyproject.toml setup.py | $(BIN)/python
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

# The documentation site (docs/, mkdocs.yml) into site/; --strict: any warning (a broken link or
# anchor, a page missing from the nav, a docstring the API pages cannot parse) fails the build.
# NO_MKDOCS_2_WARNING silences Material's banner about its end of life (not a build warning).
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf runs site .pytest_cache
