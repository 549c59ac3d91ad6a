"""Output sanity: the model must emit one probability row per golden row before any budget matters.

A model that emits NaN, the wrong shape or unnormalised scores can still do well on latency and
size; these tests make such a variant fail on its own line rather than hide in an accuracy number.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from fleet.shared.profile import HardwareProfile

ROW_SUM_TOLERANCE = 1e-3


def test_output_shape(
    outputs: np.ndarray,
    golden: tuple[np.ndarray, np.ndarray],
    model_session: ort.InferenceSession,
    profile: HardwareProfile,
) -> None:
    n = len(golden[0])
    declared = model_session.get_outputs()[0].shape
    classes = declared[1] if len(declared) == 2 and isinstance(declared[1], int) else None
    if outputs.ndim != 2 or outputs.shape[0] != n or classes not in (None, outputs.shape[1]):
        expected = f"({n}, {classes if classes is not None else 'n_classes'})"
        pytest.fail(
            f"output shape {outputs.shape} is not {expected} on profile {profile.name}",
            pytrace=False,
        )
    labels = int(golden[1].max()) + 1
    if outputs.shape[1] < labels:
        pytest.fail(
            f"output has {outputs.shape[1]} classes but the golden set has labels up to "
            f"{labels - 1} on profile {profile.name}",
            pytrace=False,
        )


def test_outputs_finite(outputs: np.ndarray, profile: HardwareProfile) -> None:
    bad = int(np.size(outputs) - np.count_nonzero(np.isfinite(outputs)))
    if bad:
        pytest.fail(
            f"{bad} of {outputs.size} output values are NaN or Inf on profile {profile.name}",
            pytrace=False,
        )


def test_outputs_are_probabilities(outputs: np.ndarray, profile: HardwareProfile) -> None:
    probs = np.asarray(outputs, dtype=np.float64)
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
