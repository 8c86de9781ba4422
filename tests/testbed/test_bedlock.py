"""The test-bed lock: a second holder waits, is told who holds it, and gets it once the first lets go; a
timeout names the holder."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mfl_testbed import TestbedError
from mfl_testbed.bedlock import bed_lock, holder


def test_a_second_run_waits_and_is_told_who_holds_the_bed(tmp_path: Path) -> None:
    lock, said, order = tmp_path / "bed.lock", [], []
    held = threading.Event()

    def first() -> None:
        with bed_lock(path=lock, poll=0.01):
            held.set()
            order.append("first in")
            time.sleep(0.3)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    held.wait(5)
    assert "pid" in holder(lock)
    with bed_lock(progress=said.append, path=lock, poll=0.01, timeout=10):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]
    assert said and "in use by pid" in said[0]
    assert holder(lock) == ""  # let go: nobody named


def test_a_bed_that_never_frees_names_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / "bed.lock"
    with bed_lock(path=lock, poll=0.01):
        errors: list[BaseException] = []

        def second() -> None:
            try:
                with bed_lock(path=lock, poll=0.01, timeout=0.1, progress=lambda line: None):
                    pass
            except TestbedError as error:
                errors.append(error)

        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "in use by pid" in str(errors[0])
    with pytest.raises(TestbedError, match="waited"):
        raise errors[0]
