"""Output sanity: the model must emit one row of scores per golden row before any budget matters.

A model that emits NaN, the wrong shape or unnormalised scores can still do well on latency and
size; these tests make such a variant fail on its own line rather than hide in an accuracy number.
"""

from __future__ import annotations

import numpy as np
import pytest

from fleet.shared.modelspec import ModelSpec
from fleet.shared.profile import HardwareProfile

ROW_SUM_TOLERANCE = 1e-3


def test_output_shape(
    outputs: np.ndarray,
    golden: tuple[np.ndarray, np.ndarray],
    spec: ModelSpec,
    profile: HardwareProfile,
) -> None:
    n = len(golden[0])
    expected = (n, spec.scored.width)
    if outputs.shape != expected:
        pytest.fail(
            f"output {spec.scored.name!r} has shape {outputs.shape}, not {expected} on profile "
            f"{profile.name}",
            pytrace=False,
        )
    if spec.task != "classification":
        return
    labels = int(golden[1].max()) + 1
    if outputs.shape[1] < labels:
        pytest.fail(
            f"output has {outputs.shape[1]} classes but the golden set has labels up to "
            f"{labels - 1} on profile {profile.name}",
            pytrace=False,
        )


def test_outputs_finite(raw_outputs: np.ndarray, profile: HardwareProfile) -> None:
    bad = int(np.size(raw_outputs) - np.count_nonzero(np.isfinite(raw_outputs)))
    if bad:
        pytest.fail(
            f"{bad} of {raw_outputs.size} output values are NaN or Inf on profile {profile.name}",
            pytrace=False,
        )


def test_outputs_are_probabilities(
    raw_outputs: np.ndarray, spec: ModelSpec, profile: HardwareProfile
) -> None:
    """Only an output the contract calls probabilities must be one; logits and regression values
    are checked for being finite alone."""
    if spec.scored.kind != "probabilities":
        pytest.skip(f"output {spec.scored.name!r} holds {spec.scored.kind}, not probabilities")
    probs = np.asarray(raw_outputs, dtype=np.float64)
    # Written as "not within" so that NaN counts as out of range.
    out_of_range = int(np.count_nonzero(~((probs >= 0.0) & (probs <= 1.0))))
    if out_of_range:
        pytest.fail(
            f"{out_of_range} output values are outside [0, 1] on profile {profile.name}",
            pytrace=False,
        )
    sums = probs.reshape(len(probs), -1).sum(axis=1)
    off = ~(np.abs(sums - 1.0) <= ROW_SUM_TOLERANCE)
    if off.any():
        worst = float(np.nanmax(np.abs(sums - 1.0))) if not np.isnan(sums).all() else float("nan")
        pytest.fail(
            f"{int(off.sum())} of {len(sums)} output rows do not sum to 1 within "
            f"{ROW_SUM_TOLERANCE:g} (worst off by {worst:.3g}) on profile {profile.name}",
            pytrace=False,
        )
