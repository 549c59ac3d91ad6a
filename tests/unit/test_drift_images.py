"""Input drift on image inputs: the reference and the device's detector compare each image's
per-channel mean and spread, not one histogram per pixel."""

from __future__ import annotations

import numpy as np
import pytest

from fleet.shared.drift import (
    DetectorPolicy,
    DeviceDetector,
    DriftReference,
    build_reference,
    channel_stats,
)
from flows.datasets import sklearn_digits_images

IMAGE = (1, 32, 32)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return sklearn_digits_images(upsample=4).features  # 1,797 flat 32x32 images


def test_channel_stats_are_a_mean_and_a_spread_per_channel() -> None:
    rows = np.stack([np.full(2 * 4 * 4, 3.0), np.r_[np.zeros(16), np.full(16, 2.0)]])
    assert channel_stats(rows, (2, 4, 4)).tolist() == [[3.0, 3.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]]


def test_an_image_reference_holds_two_features_per_channel_and_survives_json(
    images: np.ndarray, tmp_path: object
) -> None:
    reference = build_reference(images, image=IMAGE)
    assert reference.features == 2 and reference.feature_names == ("c0.mean", "c0.std")
    assert DriftReference.from_dict(reference.to_dict()) == reference


def run(reference: DriftReference, rows: np.ndarray) -> list[str]:
    detector = DeviceDetector(reference, DetectorPolicy(min_rows=400))
    detector.observe_inputs(rows)
    return [f"{e.kind}:{e.feature}" for e in detector.take_events()]


def test_clean_images_raise_nothing_and_a_darker_camera_is_caught(images: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    reference = build_reference(images[:1200], image=IMAGE)
    assert run(reference, images[1200:]) == []
    darker = np.clip(images[rng.permutation(len(images))[:500]] * 0.5, 0, 255)
    assert "input_drift:c0.mean" in run(reference, darker)


def test_rows_of_another_size_are_ignored(images: np.ndarray) -> None:
    assert run(build_reference(images, image=IMAGE), np.zeros((500, 64))) == []
