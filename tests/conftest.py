"""Run-wide hooks. The run's main pytest process (pytest-xdist's controller, or the only process)
names the folder its workers share and, when the run ends, stops the servers they held
(tests/held.py); every process orders the tests longest file first (tests/suite_order.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from held import RUN_DIR, RUN_PID, stop_holders
from suite_order import rank


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        from xdist_schedule import Scheduling

        config.pluginmanager.register(Scheduling(), "edgeloop-xdist-schedule")
    if not hasattr(config, "workerinput"):  # the main process; workers inherit its environment
        os.environ[RUN_DIR] = tempfile.mkdtemp(prefix="edgeloop-test-run-")
        os.environ[RUN_PID] = str(os.getpid())


def pytest_unconfigure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput") and RUN_DIR in os.environ:
        root = Path(os.environ.pop(RUN_DIR))
        os.environ.pop(RUN_PID, None)
        stop_holders(root)
        shutil.rmtree(root, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first (tests/suite_order.py); a stable sort, so each file's tests, and
    the files not listed, keep their order. Every worker collects the same order."""
    items.sort(key=lambda item: rank(item.path))
