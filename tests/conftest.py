"""The project's test session: the test bed's fixtures come from its pytest plugin (mfl_testbed).

Markers: everything under tests/e2e is `e2e` (the real one-node cluster, the images, Prometheus);
tests that start processes of their own (servers, scripts, Prometheus) are `integration`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["mfl_testbed.pytest_plugin"]

E2E_DIR = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under tests/e2e is an e2e test, marked or not (`-m "not e2e"` skips it)."""
    for item in items:
        if E2E_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)
    # `mfl demo` brings up its own cluster and there is one node per machine: it runs before the
    # session's cluster starts (and the images' own checks before both).
    first = {"test_images.py": 1, "test_demo.py": 2}
    items.sort(key=lambda item: 0 if E2E_DIR not in Path(item.path).parents else first.get(Path(item.path).name, 3))
