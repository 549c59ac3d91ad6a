"""How `make test` hands whole test files to its pytest-xdist workers (``--dist loadfile``).

xdist's file scheduler sorts files by their number of tests and tops a worker up with another file
while it still has two tests to go, so a long file of one or two tests carries the next long file
behind it on the same worker. This one keeps the collection order (tests/suite_order.py puts the
longest files first) and tops a worker up only when it is down to its last test, with the longest
file left. A worker starts its last test only once it knows the next one, so at the start a worker
whose first file holds a single test is given the shortest file left as well.
"""

from __future__ import annotations

from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling
from xdist.workermanage import WorkerController


class LongestFileFirst(LoadFileScheduling):
    def __init__(self, config: pytest.Config, log: Any = None) -> None:
        super().__init__(config, log)
        config.option.loadscopereorder = False  # keep tests/suite_order.py's order
        self._starting = False

    def schedule(self) -> None:
        self._starting = True
        try:
            super().schedule()
        finally:
            self._starting = False

    def _reschedule(self, node: WorkerController) -> None:
        if node.shutting_down or not self.workqueue:
            super()._reschedule(node)
        elif self._pending_of(self.assigned_work[node]) <= 1:
            self._assign_work_unit(node)

    def _assign_work_unit(self, node: WorkerController) -> None:
        if self._starting and self.assigned_work.get(node):  # a companion for a one-test file
            self.workqueue.move_to_end(next(reversed(self.workqueue)), last=False)
        super()._assign_work_unit(node)


class Scheduling:
    """The plugin tests/conftest.py registers where pytest-xdist is installed."""

    @staticmethod
    @pytest.hookimpl(tryfirst=True)  # before xdist's own scheduler
    def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LongestFileFirst | None:
        return LongestFileFirst(config, log) if config.getvalue("dist") == "loadfile" else None
