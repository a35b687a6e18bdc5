"""What the tests share, imported as `helpers.<module>` (tests/conftest.py puts tests/ on sys.path).

- `ci`: the CI policy (`require`: skip on a developer machine, fail with CI=true) and the nginx lookup;
- `e2e`: group configs with unique ports, waiting (`wait_for`), the scenarios every tier runs, leak checks;
- `api`: talking to a running controller's HTTP API, and cheap configs for one;
- `hostile`: hostile values and where they go in a config (the fuzz and dangerous-name tests);
- `libvirt`: the libvirt tier's helpers (the fixtures themselves are in tests/e2e/conftest.py);
- `daemons`: stopping and starting dockerd and libvirtd;
- `openstack_testcloud`: the OpenStack cloud the tests run against.

Test modules never import from other test modules: what two of them need lives here, and shared
fixtures live in the conftest.py of the level that uses them.
"""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
DATA = TESTS / "data"  # files the tests read (tests/data/conformance: a copy of ../shared/conformance)
