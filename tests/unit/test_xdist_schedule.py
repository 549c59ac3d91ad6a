"""tests/xdist_schedule.py: whole files in collection order, a worker topped up at its last test
with the longest file left, and a one-test first file paired with the shortest file left."""

from __future__ import annotations

from typing import Any

import pytest
from _pytest.config import get_config
from xdist_schedule import LongestFileFirst

FILES = {"long1.py": 1, "long2.py": 2, "long3.py": 3, "mid.py": 4, "short1.py": 6, "short2.py": 6}
COLLECTION = [f"{name}::test_{i}" for name, count in FILES.items() for i in range(count)]


class Node:
    """What the scheduler sees of a worker: the tests it was sent, and whether it was stopped."""

    def __init__(self, name: str) -> None:
        self.gateway = type("Gateway", (), {"id": name})()
        self.sent: list[str] = []
        self.shutting_down = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(COLLECTION[i] for i in indices)

    def shutdown(self) -> None:
        self.shutting_down = True

    def files(self) -> list[str]:
        return list(dict.fromkeys(nodeid.split("::")[0] for nodeid in self.sent))


@pytest.fixture
def scheduler() -> tuple[LongestFileFirst, Node, Node]:
    config = get_config(["-p", "xdist"])
    args = ["-p", "xdist", "--tx=2*popen", "--dist=loadfile", "-p", "no:cacheprovider"]
    config = config.pluginmanager.hook.pytest_cmdline_parse(
        pluginmanager=config.pluginmanager, args=args
    )
    sched = LongestFileFirst(config)
    a, b = Node("gw0"), Node("gw1")
    for node in (a, b):
        sched.add_node(node)  # type: ignore[arg-type]
        sched.add_node_collection(node, COLLECTION)  # type: ignore[arg-type]
    sched.schedule()
    return sched, a, b


def complete(sched: Any, node: Node, nodeid: str) -> None:
    sched.mark_test_complete(node, COLLECTION.index(nodeid))


def test_files_go_out_in_collection_order_and_a_one_test_file_gets_the_shortest(
    scheduler: tuple[LongestFileFirst, Node, Node],
) -> None:
    _, a, b = scheduler
    assert a.files() == ["long1.py", "short2.py"]  # xdist's own would start with the 6-test files
    assert b.files() == ["long2.py"]  # two tests: it can start, nothing rides behind it yet


def test_a_worker_is_topped_up_at_its_last_test_with_the_longest_file_left(
    scheduler: tuple[LongestFileFirst, Node, Node],
) -> None:
    sched, _, b = scheduler
    complete(sched, b, "long2.py::test_0")
    assert b.files() == ["long2.py", "long3.py"]
    complete(sched, b, "long2.py::test_1")
    complete(sched, b, "long3.py::test_0")
    assert b.files() == ["long2.py", "long3.py"]  # two of long3 to go: not yet
    complete(sched, b, "long3.py::test_1")
    assert b.files() == ["long2.py", "long3.py", "mid.py"]
