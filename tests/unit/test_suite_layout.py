"""The test tree itself: module basenames are unique across tests/ and hardware-tests/.

pytest imports test modules by basename (the folders have no ``__init__.py``), so two files named
alike fail collection, but only when one process collects both: under ``-n 4 --dist loadfile`` that
depends on how files fall to workers, and a clash passed here and failed in CI. This fails always.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_no_two_python_modules_of_the_tests_share_a_basename() -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    for root in ("tests", "hardware-tests"):
        for path in sorted((REPO / root).rglob("*.py")):
            if path.name not in ("__init__.py", "conftest.py") and "__pycache__" not in path.parts:
                seen[path.stem].append(str(path.relative_to(REPO)))
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, f"rename one of each: {clashes}"
