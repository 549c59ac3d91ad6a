"""The fleet simulator: N simulated edge agents as asyncio tasks in one process, over real HTTP.

It exercises a real controller the way a fleet would (enrol, long-poll, download, verify, report),
while the expensive parts are shared: one onnxruntime session per variant file for every device, and
one HTTP connection pool. It is a test and demo harness, not the on-device agent: it may use pandas
and aiohttp, which the agent never installs.
"""

from typing import Any

from fleet.simulate.faults import FaultPlan, FaultWindow, assign_classes
from fleet.simulate.regress import make_regressed_variant
from fleet.simulate.sessions import SessionCache

_FLEET = ("DeviceResult", "Simulation", "SimulationResult", "main", "simulate")


def __getattr__(name: str) -> Any:
    # Lazy, so ``python -m fleet.simulate.fleet`` does not import the module twice.
    if name in _FLEET:
        from fleet.simulate import fleet

        return getattr(fleet, name)
    raise AttributeError(name)


__all__ = [
    "DeviceResult",
    "FaultPlan",
    "FaultWindow",
    "SessionCache",
    "Simulation",
    "SimulationResult",
    "assign_classes",
    "main",
    "make_regressed_variant",
    "simulate",
]
