"""Hardware profiles for the integration tests: the project's, with room for a loaded machine."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
LATENCY_SLACK = 20
"""How much more latency the test profiles allow than the project's own."""


@functools.cache
def load_tolerant_profiles() -> Path:
    """The project's hardware profiles with every p95 latency budget ``LATENCY_SLACK`` times wider.

    The integration tests check what edgeloop does with a measurement, not how fast this machine
    runs a model while the suite loads both its cores (a 5 ms budget measured 7 ms under that
    load). Tests of the latency gates themselves write their own profiles with budgets no machine
    can meet."""
    folder = Path(tempfile.mkdtemp(prefix="edgeloop-test-profiles-"))
    atexit.register(shutil.rmtree, folder, True)
    for source in sorted((REPO / "hardware-tests" / "profiles").glob("*.yaml")):
        profile = yaml.safe_load(source.read_text())
        budgets = profile.get("budgets") or {}
        if budgets.get("p95_latency_ms"):
            budgets["p95_latency_ms"] = budgets["p95_latency_ms"] * LATENCY_SLACK
        (folder / source.name).write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder
