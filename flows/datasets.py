"""Dataset loaders and the split into train / val / test / field.

A loader returns a :class:`Dataset`: a feature matrix with its schema (names, value range, classes).
The ``field`` split is held out for the fleet: it never trains, validates or tests a model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgeloop.core.errors import PluginError
from flows.plugins import resolve

LABEL = "label"
SPLITS = ("train", "val", "test", "field")


@dataclass(frozen=True)
class DatasetSchema:
    """What the data checks enforce and what a model's input and output must match."""

    name: str
    feature_names: tuple[str, ...]
    value_range: tuple[float, float]
    classes: tuple[int, ...]
    description: str = ""
    input_shape: tuple[int, ...] | None = None
    """One sample's shape as the model takes it (``(1, 8, 8)`` for a one-channel image, NCHW);
    None: a flat vector of the features. A row holds the sample's values in C order."""
    input_dtype: str = "float32"
    """What the model's input takes: ``float32``, or ``uint8`` for raw image bytes."""
    task: str = "classification"
    """``classification`` (labels are ``classes``) or ``regression`` (a continuous target)."""
    target_range: tuple[float, float] | None = None
    """A regression target's plausible range, which the data checks enforce."""

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample's shape: :attr:`input_shape`, or ``(n_features,)``."""
        return self.input_shape or (self.n_features,)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: Path) -> DatasetSchema:
        raw = json.loads(path.read_text())
        return cls(
            name=raw["name"],
            feature_names=tuple(raw["feature_names"]),
            value_range=(float(raw["value_range"][0]), float(raw["value_range"][1])),
            classes=tuple(int(c) for c in raw["classes"]),
            description=raw.get("description", ""),
            input_shape=tuple(int(d) for d in raw["input_shape"])
            if raw.get("input_shape")
            else None,
            input_dtype=str(raw.get("input_dtype", "float32")),
            task=str(raw.get("task", "classification")),
            target_range=(
                (float(raw["target_range"][0]), float(raw["target_range"][1]))
                if raw.get("target_range")
                else None
            ),
        )


@dataclass(frozen=True)
class Dataset:
    """Features and labels with their schema."""

    schema: DatasetSchema
    features: np.ndarray  # float32, shape (n, d)
    labels: np.ndarray  # int64 classes, or float32 regression targets; shape (n,)

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.features, columns=list(self.schema.feature_names))
        df[LABEL] = self.labels
        return df


def sklearn_digits() -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    schema = DatasetSchema(
        name="sklearn-digits",
        feature_names=tuple(f"px_{i}" for i in range(bunch.data.shape[1])),
        value_range=(0.0, 16.0),
        classes=tuple(range(10)),
        description="8x8 grey-level images of handwritten digits 0-9, pixel values 0-16 (UCI).",
    )
    return Dataset(schema, bunch.data.astype(np.float32), bunch.target.astype(np.int64))


def sklearn_digits_images(scale: int = 15, upsample: int = 1) -> Dataset:
    """The same digits as one-channel uint8 images (pixel values times ``scale``, 0-240), as a
    camera would deliver them, each pixel repeated ``upsample`` times along both axes (8x8, or
    16x16 with 2, ...); a model takes them as ``[N, 1, H, W]`` uint8."""
    digits = sklearn_digits()
    if not 1 <= scale <= 15:
        raise PluginError(
            f"sklearn-digits-images: scale {scale} is outside 1-15",
            hint="pixel values are 0-16, and 16 x scale must fit in a byte",
        )
    if not 1 <= upsample <= 8:
        raise PluginError(
            f"sklearn-digits-images: upsample {upsample} is outside 1-8",
            hint="1 keeps the 8x8 images; 4 makes them 32x32",
        )
    side = 8 * upsample
    images = digits.features.reshape(-1, 8, 8) * scale
    images = np.kron(images, np.ones((1, upsample, upsample), dtype=np.float32))
    schema = DatasetSchema(
        name="sklearn-digits-images",
        feature_names=tuple(f"px_{i}" for i in range(side * side)),
        value_range=(0.0, 255.0),
        classes=digits.schema.classes,
        description=f"{digits.schema.description} As 1x{side}x{side} uint8 images, pixel "
        f"values x{scale}.",
        input_shape=(1, side, side),
        input_dtype="uint8",
    )
    return Dataset(schema, images.reshape(len(images), -1), digits.labels)


def sklearn_diabetes() -> Dataset:
    """scikit-learn's bundled diabetes data (442 patients, no download): ten baseline variables,
    mean-centred and scaled, and a measure of disease progression one year later (25-346)."""
    from sklearn.datasets import load_diabetes

    bunch = load_diabetes()
    schema = DatasetSchema(
        name="sklearn-diabetes",
        feature_names=tuple(bunch.feature_names),
        value_range=(-0.2, 0.2),
        classes=(),
        description="Ten baseline variables of 442 diabetes patients (age, sex, BMI, blood "
        "pressure, six serum measurements), centred and scaled; target: disease progression "
        "one year later (Efron et al., 2004).",
        task="regression",
        target_range=(0.0, 400.0),
    )
    return Dataset(schema, bunch.data.astype(np.float32), bunch.target.astype(np.float32))


LOADERS: dict[str, Callable[..., Dataset]] = {
    "sklearn-diabetes": sklearn_diabetes,
    "sklearn-digits": sklearn_digits,
    "sklearn-digits-images": sklearn_digits_images,
}


def load_dataset(name: str, **kwargs: Any) -> Dataset:
    loader = resolve("dataset loader", name, LOADERS)
    dataset = loader(**kwargs)
    if not isinstance(dataset, Dataset):
        raise PluginError(
            f"dataset loader {name!r} returned {type(dataset).__name__}, not a Dataset",
            hint="return flows.datasets.Dataset from your loader",
        )
    problem = _shape_problem(dataset)
    if problem:
        raise PluginError(
            f"dataset loader {name!r}: {problem}",
            hint="return features as one float row per sample (an image flattened in C order, "
            "its shape in DatasetSchema.input_shape) and one label per row",
        )
    return dataset


def _shape_problem(dataset: Dataset) -> str:
    """What is wrong with the arrays of ``dataset`` ('' when nothing is)."""
    schema = dataset.schema
    try:
        features = np.asarray(dataset.features, dtype=np.float32)
    except (ValueError, TypeError):
        return "its features are ragged or not numbers (rows of different lengths?)"
    labels = np.asarray(dataset.labels)
    if features.ndim != 2:
        return f"its features have shape {list(features.shape)}, not [rows, values]"
    if labels.ndim != 1 or len(labels) != len(features):
        return f"{len(features)} feature rows but labels of shape {list(labels.shape)}"
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        bad = np.flatnonzero(~np.isfinite(labels))
        rows = ", ".join(str(i) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
        return f"{len(bad)} target(s) are NaN or infinite (rows {rows})"
    if features.shape[1] != schema.n_features:
        return f"rows of {features.shape[1]} values but {schema.n_features} feature names"
    if schema.input_shape is not None and int(np.prod(schema.input_shape)) != schema.n_features:
        return (
            f"input_shape {list(schema.input_shape)} holds {int(np.prod(schema.input_shape))} "
            f"values, the rows {schema.n_features}"
        )
    if schema.input_dtype not in ("float32", "uint8"):
        return f"input_dtype {schema.input_dtype!r} is not float32 or uint8"
    if schema.task not in ("classification", "regression"):
        return f"task {schema.task!r} is not classification or regression"
    if schema.task == "regression" and (schema.classes or schema.target_range is None):
        return "a regression dataset has no classes and needs a target_range"
    if schema.task == "classification" and not schema.classes:
        return "a classification dataset needs its classes"
    return ""


def split_dataset(
    dataset: Dataset, fractions: dict[str, float], seed: int
) -> dict[str, pd.DataFrame]:
    """Drop exact duplicate rows, then split stratified by class so no row lands in two splits."""
    from sklearn.model_selection import train_test_split

    df = dataset.frame()
    df = df.drop_duplicates(subset=list(dataset.schema.feature_names)).reset_index(drop=True)
    remaining = df
    remaining_share = 1.0
    out: dict[str, pd.DataFrame] = {}
    for name in SPLITS[:-1]:
        share = fractions[name] / remaining_share
        strata = remaining[LABEL]
        if dataset.schema.task == "regression":  # by target quintile, so every split spans it
            strata = pd.qcut(remaining[LABEL], q=5, labels=False, duplicates="drop")
        taken, remaining = train_test_split(
            remaining, train_size=share, random_state=seed, stratify=strata
        )
        out[name] = taken.reset_index(drop=True)
        remaining_share -= fractions[name]
    out[SPLITS[-1]] = remaining.reset_index(drop=True)
    return out


def write_splits(schema: DatasetSchema, splits: dict[str, pd.DataFrame], directory: Path) -> None:
    """Replace the folder's content with the splits and ``schema.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.parquet"):
        stale.unlink()
    for name, frame in splits.items():
        frame.to_parquet(directory / f"{name}.parquet", index=False)
    schema.save(directory / "schema.json")


def read_splits(directory: Path) -> tuple[DatasetSchema, dict[str, pd.DataFrame]]:
    schema = DatasetSchema.load(directory / "schema.json")
    return schema, {name: pd.read_parquet(directory / f"{name}.parquet") for name in SPLITS}


def xy(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Features as float32 and labels as int64 (classes) or float32 (regression targets, stored
    as floats), in column order."""
    features = frame.drop(columns=[LABEL]).to_numpy(dtype=np.float32, copy=True)
    continuous = pd.api.types.is_float_dtype(frame[LABEL])
    return features, frame[LABEL].to_numpy(dtype=np.float32 if continuous else np.int64, copy=True)
