# make demo: install what is needed, then show a group scaling out and back in under load.
# make test: install what the tests need, then run ruff and the whole test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test setup venv lint clean bench images docker-image vm-image chaos

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

# Images the tier tests and demos run: each tier adds its own prerequisite.
images: docker-image vm-image

docker-image: setup venv
	$(PY) images/docker/build.py

# The demo VM image (kernel, initramfs, qcow2 golden image) from Debian packages; quick when up to date.
vm-image: setup
	bash images/workload/build.sh
	python3 images/vm/build.py

test: setup venv lint images
	$(VENV)/bin/pytest -q -ra $(PYTEST_ARGS)

demo: setup venv
	$(VENV)/bin/tierscale demo

# Faults injected under load on every tier (>= 50 in all); report in artifacts/chaos/. CHAOS_ARGS to vary.
CHAOS_ARGS ?=
chaos: setup venv images
	$(PY) tests/chaos/run.py --out artifacts/chaos $(CHAOS_ARGS)

bench: setup venv
	$(PY) bench/reaction.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
