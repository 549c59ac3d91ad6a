"""The target itself: the model must run on the profile's execution providers and within its memory.

These come before any budget: a model that cannot be loaded under the profile's limits has no
latency or accuracy to speak of. Each fails on its own line naming the profile and the limit, while
the measurements that needed the model skip with the same reason, so a report shows one cause.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from fleet.shared.profile import HardwareProfile

if TYPE_CHECKING:  # conftest is not importable under every pytest import mode
    from conftest import Loaded


def test_execution_providers(loaded: Loaded, profile: HardwareProfile) -> None:
    if loaded.kind == "provider":
        pytest.fail(loaded.problem, pytrace=False)
    if loaded.session is None:
        pytest.skip(f"not measured: {loaded.problem}")
    # onnxruntime falls back to the next provider when one fails to initialise (a CUDA library
    # missing at run time), so a session that looks fine may not run where the profile says.
    wanted = profile.execution_providers[0]
    used = loaded.session.get_providers()
    if wanted not in used:
        pytest.fail(
            f"profile {profile.name} asks for {wanted} first, but the session runs on {used}",
            pytrace=False,
        )


def test_fits_memory_cap(loaded: Loaded, profile: HardwareProfile) -> None:
    if loaded.kind == "memory":
        pytest.fail(loaded.problem, pytrace=False)
    if loaded.session is None:
        pytest.skip(f"not measured: {loaded.problem}")
    if profile.memory_cap_mb is None:
        pytest.skip(f"profile {profile.name} sets no memory_cap_mb")
