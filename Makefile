# make demo: install what is needed, then show a group scaling out and back in under load.
# make test: install what the tests need, then run ruff and the whole test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test setup venv lint clean bench

setup:
	bash scripts/setup-host.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check src tests bench

test: setup venv lint
	$(VENV)/bin/pytest -q -ra $(PYTEST_ARGS)

demo: setup venv
	$(VENV)/bin/tierscale demo

bench: setup venv
	$(PY) bench/reaction.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
