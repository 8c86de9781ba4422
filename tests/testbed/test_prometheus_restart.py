"""A Prometheus restarted (as tests/e2e/test_outage.py does) is a new process: its owner hears of every start, so
the test bed's state file names the process `mfl testbed down` must stop."""

from __future__ import annotations

import shutil
from pathlib import Path

from mfl_testbed.prometheus import Prometheus
from mfl_testbed.pytest_plugin import unavailable


def test_every_start_is_reported_with_its_process(tmp_path: Path) -> None:
    if shutil.which("prometheus") is None:
        unavailable("prometheus is not installed (apt-get install prometheus)")
    server, started = Prometheus(tmp_path), []
    server.on_start = started.append
    try:
        server.start()
        first = server.pid
        server.stop()
        server.start()
        assert started == [first, server.pid] and first != server.pid
    finally:
        server.stop()
