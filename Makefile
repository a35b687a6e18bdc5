# make demo: install what is needed, then show a group scaling out and back in under load.
# make test: install what the tests need, then run ruff and the whole test suite.
# make unit: ruff and the fast tier (tests/unit: no Docker, libvirt, nginx, cloud, browser); only the venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test unit setup setup-base venv venv-libvirt lint clean bench images docker-image vm-image chaos

setup:
	bash scripts/setup-host.sh

# What the suite needs before its first test; the test cloud (minutes to come up, only the cloud group
# uses it) starts in the background at the beginning of `test` and the cloud group waits for it.
setup-base:
	bash scripts/setup-host.sh base docker libvirt browser etcd prometheus queues haproxy packaging

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# libvirt-python compiles against the host's libvirt, which `setup` installs: only the full suite needs it.
venv-libvirt: $(VENV)/.libvirt

$(VENV)/.libvirt: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[test,libvirt]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check src tests bench

# Images the tier tests and demos run: each tier adds its own prerequisite.
images: docker-image vm-image

docker-image: setup-base venv
	$(PY) images/docker/build.py

# The demo VM image (kernel, initramfs, qcow2 golden image) from Debian packages; quick when up to date.
vm-image: setup-base
	bash images/workload/build.sh
	python3 images/vm/build.py

# The whole suite: the unit tier on both cores, then tests/e2e and tests/chaos/test_chaos.py in four
# groups side by side (VMs, the cloud, containers, local processes: tests/helpers/groups.py), one
# test at a time within a group, since each group restarts or reconfigures daemons only its own tests
# use. Most of an e2e test's time is waiting for boots and windows, not CPU.
test: setup-base venv venv-libvirt lint images
	bash scripts/setup/background.sh openstack
	$(VENV)/bin/pytest -q -ra -n 2 tests/unit $(PYTEST_ARGS)
	$(PY) tests/run_e2e.py $(PYTEST_ARGS)

# No setup, no images: what a change to the policy, the config or the simulator needs, in under a minute.
unit: lint
	$(VENV)/bin/pytest -q -ra -n 2 tests/unit $(PYTEST_ARGS)

demo: setup venv
	$(VENV)/bin/tierscale demo

# Faults injected under load on every tier (>= 50 in all), then 20 on two ha controllers (tests/chaos/ha.py);
# reports in artifacts/chaos/. CHAOS_ARGS / CHAOS_HA_ARGS to vary.
CHAOS_ARGS ?=
CHAOS_HA_ARGS ?=
chaos: setup venv venv-libvirt images
	@# Both parts run even when the first finds something; either one failing fails the target.
	$(PY) tests/chaos/run.py --out artifacts/chaos $(CHAOS_ARGS); a=$$?; \
	$(PY) tests/chaos/ha.py --out artifacts/chaos $(CHAOS_HA_ARGS); b=$$?; \
	exit $$(( a > b ? a : b ))

bench: setup venv
	$(PY) bench/reaction.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
