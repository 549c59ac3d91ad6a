"""The stages of the offline loop as plain functions over a :class:`Workspace`.

Both drivers call these: ``dvc repro`` through :mod:`flows.dvc_stage` and the Prefect flow through
:mod:`flows.retrain`. Each stage reads its inputs from files and writes its outputs to files, so a
retried or re-run stage is idempotent and DVC can cache it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeloop.core.params import Params
from fleet.shared.runtime import open_session, predict, session_latency
from flows.compress import VARIANTS, describe, export_onnx, quantise, quantise_static
from flows.datacheck import check_splits
from flows.datasets import (
    DatasetSchema,
    load_dataset,
    read_splits,
    split_dataset,
    write_splits,
    xy,
)
from flows.field_data import merge_field, read_field_rows
from flows.hardware import write_golden
from flows.model_contract import read_file_spec
from flows.models import Classifier, build_model
from flows.prune import NotPrunable, prune_and_finetune
from flows.quality import ACCURACY, QualityMetric, metric_for
from flows.train import train
from flows.workspace import Workspace


def ingest(params: Params, ws: Workspace) -> dict[str, int]:
    """Load the dataset by name, drop duplicate rows and write the four splits (with
    ``data.include_field``, the pulled field samples join train: ``flows.field_data``)."""
    dataset = load_dataset(params.data.loader, **params.data.loader_args)
    splits = split_dataset(dataset, params.data.splits, params.seed)
    if params.data.include_field:
        rows = read_field_rows(Path(params.data.field_dir), dataset.schema)
        splits, _ = merge_field(splits, rows, dataset.schema)
    write_splits(dataset.schema, splits, ws.splits_dir)
    return {name: len(frame) for name, frame in splits.items()}


def validate(params: Params, ws: Workspace) -> dict[str, Any]:
    """Run the data checks; the report is written whether they pass or fail."""
    from edgeloop.core.errors import DataCheckError

    schema, splits = read_splits(ws.splits_dir)
    ws.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = check_splits(schema, splits, params.data)
    except DataCheckError as exc:
        ws.data_report.write_text(json.dumps(exc.report, indent=2))
        raise
    ws.data_report.write_text(json.dumps(report, indent=2))
    return report


def _model(params: Params, schema: DatasetSchema) -> Classifier:
    return build_model(
        params.training.builder,
        schema.n_features,
        len(schema.classes) if schema.task == "classification" else 1,
        schema.value_range,
        schema.input_shape,
        **params.training.builder_args,
    )


def train_model(params: Params, ws: Workspace) -> list[dict[str, float]]:
    schema, splits = read_splits(ws.splits_dir)
    torch.manual_seed(params.seed)  # the initial weights too, so a re-run trains the same model
    model = _model(params, schema)
    result = train(
        model, xy(splits["train"]), xy(splits["val"]), params.training, params.seed, schema.task
    )
    ws.work_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), ws.model_state)
    ws.history.write_text(json.dumps(result.history, indent=2))
    return result.history


def load_trained(params: Params, ws: Workspace) -> Classifier:
    schema, _ = read_splits(ws.splits_dir)
    model = _model(params, schema)
    model.load_state_dict(torch.load(ws.model_state, weights_only=True))
    return model.eval()


def compress(params: Params, ws: Workspace) -> dict[str, str]:
    """Export the trained model to ONNX fp32, build the int8 variants and the pruned int8 one."""
    schema, splits = read_splits(ws.splits_dir)
    if ws.variants_dir.exists():
        shutil.rmtree(ws.variants_dir)
    model = load_trained(params, ws)
    spec = export_onnx(model, schema, ws.fp32, params.compress.opset)
    paths = quantise_variants(params, ws)
    torch.manual_seed(params.seed)
    try:
        pruned = prune_and_finetune(
            model,
            params.compress.prune_keep,
            params.compress.prune_finetune_epochs,
            xy(splits["train"]),
            xy(splits["val"]),
            params.training,
            params.seed,
            schema.task,
        )
    except NotPrunable as exc:  # a user's architecture we cannot prune structurally
        skip_variant(ws, "pruned-int8", str(exc))
        return paths
    with tempfile.TemporaryDirectory() as tmp:
        pruned_fp32 = Path(tmp) / "pruned.onnx"
        export_onnx(pruned, schema, pruned_fp32, params.compress.opset)
        target = ws.variants_dir / "pruned-int8.onnx"
        paths["pruned-int8"] = str(
            quantise_static(pruned_fp32, target, _calibration_rows(params, ws), spec)
        )
    return paths


def skipped_variants(ws: Workspace) -> dict[str, str]:
    """The variants not built in ``ws``, each with why."""
    if not ws.skipped_variants.exists():
        return {}
    return dict(json.loads(ws.skipped_variants.read_text()))


def skip_variant(ws: Workspace, name: str, reason: str) -> None:
    """Record that variant ``name`` was not built, and why (the evaluation and card say so)."""
    ws.variants_dir.mkdir(parents=True, exist_ok=True)
    skipped = skipped_variants(ws)
    skipped[name] = reason
    ws.skipped_variants.write_text(json.dumps(skipped, indent=2))


def _calibration_rows(params: Params, ws: Workspace) -> np.ndarray:
    _, splits = read_splits(ws.splits_dir)
    x_train, _ = xy(splits["train"])
    rng = np.random.default_rng(params.seed)
    return x_train[rng.permutation(len(x_train))[: params.compress.calibration_samples]]


def quantise_variants(params: Params, ws: Workspace) -> dict[str, str]:
    """Build the int8 variants from ``ws.fp32`` (which holds its contract), calibrated on training
    rows."""
    spec = read_file_spec(ws.fp32)
    paths, skipped = quantise(ws.fp32, ws.variants_dir, _calibration_rows(params, ws), spec)
    for name, reason in skipped.items():
        skip_variant(ws, name, reason)
    return {name: str(path) for name, path in paths.items()}


def choose_variant(
    records: list[dict[str, Any]], max_loss: float, metric: QualityMetric = ACCURACY
) -> str:
    """The smallest variant within ``max_loss`` of fp32 on ``metric`` (accuracy points, or the
    relative MAE increase), then the fastest."""
    fp32 = next((r for r in records if r["name"] == "fp32"), None)
    if fp32 is None:
        raise ValueError("choose_variant needs the fp32 variant as the quality baseline")
    eligible = [
        r for r in records if metric.loss(fp32[metric.key], r[metric.key]) <= max_loss + 1e-9
    ]
    return str(min(eligible, key=lambda r: (r["size_bytes"], r["p50_ms"]))["name"])


def allowed_loss(params: Params, metric: QualityMetric) -> float:
    """How much worse than fp32 a variant may be: ``compress.max_accuracy_drop`` (points) or
    ``compress.max_mae_increase`` (relative)."""
    if metric is ACCURACY:
        return params.compress.max_accuracy_drop
    return params.compress.max_mae_increase


def evaluate(params: Params, ws: Workspace) -> dict[str, Any]:
    """Size, test quality (accuracy, or MAE for a regressor) and single-thread batch-1 latency of
    every variant; pick one."""
    schema, splits = read_splits(ws.splits_dir)
    metric = metric_for(schema.task)
    x_test, y_test = xy(splits["test"])
    records = []
    for name in VARIANTS:
        if not (ws.variants_dir / f"{name}.onnx").is_file():
            continue
        variant = describe(name, ws.variants_dir / f"{name}.onnx")
        session = open_session(str(variant.path), threads=1)
        stats = session_latency(
            session, x_test, warmup=params.compress.warmup_runs, runs=params.compress.latency_runs
        )
        records.append(
            {
                "name": name,
                "sha256": variant.sha256,
                "size_bytes": variant.size_bytes,
                metric.key: metric.of(predict(session, x_test), y_test),
                "p50_ms": stats.p50_ms,
                "p95_ms": stats.p95_ms,
            }
        )
    fp32 = open_session(str(ws.fp32), threads=1)
    per_split = {
        split: metric.of(predict(fp32, x), y)
        for split, (x, y) in ((s, xy(splits[s])) for s in ("train", "val", "test"))
    }
    skipped = skipped_variants(ws)
    loss = allowed_loss(params, metric)
    evaluation = {
        "task": schema.task,
        "metric": metric.key,
        f"split_{metric.key}": per_split,
        "variants": records,
        "skipped": skipped,
        "chosen": choose_variant(records, loss, metric),
        "max_accuracy_drop" if metric is ACCURACY else "max_mae_increase": loss,
    }
    ws.evaluation.write_text(json.dumps(evaluation, indent=2))
    write_golden(x_test, y_test, ws.golden)
    return evaluation
