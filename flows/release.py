"""From an evaluated workspace to a registered version: hardware checks, gates, registration.

Shared by the retrain flow (a model trained here) and the register flow (a model trained elsewhere),
so both take exactly the same way into the registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from edgeloop.core.params import Params
from edgeloop.core.settings import Settings
from fleet.shared.drift import DriftReference, build_reference
from flows.datasets import read_splits, xy
from flows.pareto import pareto_table
from flows.plots import pareto_chart
from flows.quality import ACCURACY, metric_of
from flows.validation import ProfileChoice, report_paths
from flows.workspace import Workspace
from registry import tags as tag
from registry.lineage import dvc_dir_hash, git_state
from registry.publish import Published, Release, ReleaseGateResult, VariantRecord, publish

COMPRESSION = {
    "fp32": "ONNX export of the model (opset {opset}), raw input in, as its contract says.",
    "int8-dynamic": "weights int8 per tensor; activations quantised at run time "
    "(onnxruntime quantize_dynamic).",
    "int8-static": "QDQ, weights int8, activations uint8 calibrated (MinMax) on {n} training rows "
    "(onnxruntime quantize_static).",
    "pruned-int8": "structured pruning keeping {keep:.0%} of each hidden layer's units or each "
    "convolution's channels (L1 norm), "
    "{epochs} fine-tuning epochs, then int8 static as above.",
}


def gates(
    params: Params, evaluation: dict[str, Any], hardware: dict[str, ProfileChoice]
) -> list[ReleaseGateResult]:
    """Every gate a version must pass to become ``candidate``, with measured value and threshold."""
    by_name = {r["name"]: r for r in evaluation["variants"]}
    chosen = by_name[evaluation["chosen"]]
    metric = metric_of(evaluation)
    test = evaluation[f"split_{metric.key}"]["test"]
    loss = metric.loss(by_name["fp32"][metric.key], chosen[metric.key])
    if metric is ACCURACY:
        quality = ReleaseGateResult(
            "test_accuracy",
            test >= params.gates.min_test_accuracy,
            round(test, 4),
            params.gates.min_test_accuracy,
        )
        compression = ReleaseGateResult(
            "variant_accuracy_drop",
            loss <= params.compress.max_accuracy_drop,
            round(loss, 4),
            params.compress.max_accuracy_drop,
        )
    else:
        limit = params.gates.max_test_mae
        quality = ReleaseGateResult(
            "test_mae",
            limit is not None and test <= limit,
            round(test, 4),
            limit if limit is not None else "not set: set gates.max_test_mae",
        )
        compression = ReleaseGateResult(
            "variant_mae_increase",
            loss <= params.compress.max_mae_increase,
            round(loss, 4),
            params.compress.max_mae_increase,
        )
    result = [ReleaseGateResult("data_checks", True, "passed", "passed"), quality, compression]
    for profile, choice in hardware.items():
        measured = f"{choice.status}: {choice.reason}"
        result.append(
            ReleaseGateResult(f"hw.{profile}", choice.passed, measured[:500], "all budgets")
        )
    return result


def log_evaluation(evaluation: dict[str, Any], ws: Workspace) -> None:
    """Metrics per split and variant, the Pareto table and its plot."""
    metric = metric_of(evaluation)
    for split, value in evaluation[f"split_{metric.key}"].items():
        mlflow.log_metric(f"{split}_{metric.key}", value)
    for r in evaluation["variants"]:
        for key in ("size_bytes", metric.key, "p50_ms", "p95_ms"):
            mlflow.log_metric(f"variant.{r['name']}.{key}", float(r[key]))
    mlflow.log_artifact(str(ws.evaluation), artifact_path="evaluation")
    pareto = pareto_table(evaluation["variants"], metric)
    mlflow.log_table(
        {k: [r[k] for r in pareto] for k in ("name", "size_bytes", metric.key, "p95_ms", "pareto")},
        artifact_file="evaluation/pareto.json",
    )
    mlflow.log_artifact(
        str(pareto_chart(pareto, ws.work_dir / "pareto.png", metric)), artifact_path="plots"
    )


def log_hardware(hardware: dict[str, ProfileChoice]) -> None:
    """Each profile's chosen result as metrics; every attempt's JUnit and JSON as artifacts."""
    for profile, choice in hardware.items():
        if choice.passed and choice.result is not None:
            for key, value in choice.result.metrics.items():
                mlflow.log_metric(f"hw.{profile}.{key}", float(value))
        mlflow.log_dict(choice.summary().model_dump(mode="json"), f"hardware/{profile}/choice.json")
    for path in {p for c in hardware.values() for p in _attempt_files(c)}:
        variant, profile = path.parent.parent.name, path.parent.name
        mlflow.log_artifact(str(path), artifact_path=f"hardware/{profile}/{variant}")


def _attempt_files(choice: ProfileChoice) -> list[Path]:
    return [p for p in report_paths(choice) if p.is_file()]


def drift_reference(ws: Workspace) -> DriftReference:
    """The on-device detectors' reference: per-feature decile edges and shares of the training
    split, and its label shares (which an accurate model's predictions follow)."""
    schema, splits = read_splits(ws.splits_dir)
    x, y = xy(splits["train"])
    classes = max(schema.classes, default=-1) + 1
    image = schema.input_shape if schema.input_shape and len(schema.input_shape) == 3 else None
    return build_reference(
        x, predictions=y, classes=classes, feature_names=schema.feature_names, image=image
    )


def lineage_tags(settings: Settings, params: Params, ws: Workspace, source: str) -> dict[str, str]:
    state = git_state(Path())
    return {
        tag.GIT_COMMIT: state.commit,
        tag.GIT_DIRTY: str(state.dirty).lower(),
        tag.DATA_HASH: dvc_dir_hash(ws.splits_dir),
        tag.PARAMS_HASH: params.digest(),
        tag.DATASET: params.data.loader,
        tag.SOURCE: source,
    }


def register(
    client: MlflowClient,
    settings: Settings,
    params: Params,
    ws: Workspace,
    *,
    model_name: str,
    run_id: str,
    evaluation: dict[str, Any],
    hardware: dict[str, ProfileChoice],
    gate_results: list[ReleaseGateResult],
    source: str,
    lineage: dict[str, str] | None = None,
) -> Published:
    import numpy as np

    schema = json.loads((ws.splits_dir / "schema.json").read_text())
    data_report = json.loads(ws.data_report.read_text())
    tags = {**lineage_tags(settings, params, ws, source), **(lineage or {})}
    variants = [
        VariantRecord(
            name=r["name"],
            path=ws.variants_dir / f"{r['name']}.onnx",
            sha256=r["sha256"],
            size_bytes=r["size_bytes"],
            accuracy=r.get("accuracy"),
            mae=r.get("mae"),
            p50_ms=r["p50_ms"],
            p95_ms=r["p95_ms"],
        )
        for r in evaluation["variants"]
    ]
    card = {
        "intended_use": params.card.intended_use,
        "limitations": list(params.card.limitations),
        "data": {
            "dataset": schema["name"],
            "description": schema.get("description", ""),
            "hash": tags[tag.DATA_HASH],
            "rows": data_report.get("rows", {}),
            "checks": f"{data_report.get('expectations_evaluated', 0)} expectations passed",
        },
        "metric": metric_of(evaluation).key,
        "metrics": evaluation[f"split_{metric_of(evaluation).key}"],
        "compression": {
            name: text.format(
                opset=params.compress.opset,
                n=params.compress.calibration_samples,
                keep=params.compress.prune_keep,
                epochs=params.compress.prune_finetune_epochs,
            )
            for name, text in COMPRESSION.items()
            if name in {r["name"] for r in evaluation["variants"]}
        }
        | {name: f"not built: {reason}" for name, reason in evaluation.get("skipped", {}).items()},
        "pareto": pareto_table(evaluation["variants"], metric_of(evaluation)),
        "lineage": {**tags, "params_file": str(settings.params_file)},
    }
    release = Release(
        model_name=model_name,
        run_id=run_id,
        variants=variants,
        chosen=evaluation["chosen"],
        example_input=np.load(ws.golden)["x"][:1],
        tags=tags,
        gates=gate_results,
        card=card,
        hardware={p: c.summary().model_dump(mode="json") for p, c in hardware.items()},
        golden=ws.golden,
        drift_reference=drift_reference(ws),
    )
    return publish(client, release, keys_dir=settings.keys_dir, cards_dir=settings.model_cards_dir)
