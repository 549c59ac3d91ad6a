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

from edgeloop.errors import HardwareCheckError
from edgeloop.params import Params
from edgeloop.settings import Settings
from fleet.agent.profile import ProfileError, load_profile
from flows.hardware import ProfileResult, run_profile
from flows.plots import variants_chart
from flows.workspace import Workspace
from registry.lineage import dvc_dir_hash, git_state
from registry.publish import GateResult, Published, Release, VariantRecord, publish

COMPRESSION = {
    "fp32": "ONNX export of the trained model (opset {opset}), raw features in, probabilities out.",
    "int8-dynamic": "weights int8 per tensor; activations quantised at run time "
    "(onnxruntime quantize_dynamic).",
    "int8-static": "QDQ, weights int8, activations uint8 calibrated (MinMax) on {n} training rows "
    "(onnxruntime quantize_static).",
}


def hardware_check(
    settings: Settings, params: Params, ws: Workspace, evaluation: dict[str, Any]
) -> dict[str, ProfileResult]:
    """Run the suite on every required profile, with the variant each profile takes."""
    results = {}
    for profile in params.gates.profiles:
        try:
            wanted = load_profile(profile, settings.profiles_dir).variant
        except ProfileError as exc:
            raise HardwareCheckError(
                str(exc), hint="fix gates.profiles or the profile file"
            ) from exc
        variant = evaluation["chosen"] if wanted == "chosen" else wanted
        path = ws.variants_dir / f"{variant}.onnx"
        if not path.is_file():
            raise HardwareCheckError(
                f"hardware profile {profile!r} asks for variant {variant!r}, which this run did not build",
                hint=f"use one of {[v['name'] for v in evaluation['variants']]} or 'chosen'",
            )
        results[profile] = run_profile(
            path,
            profile,
            ws.golden,
            ws.hardware_dir,
            reference=ws.fp32,
            suite_dir=settings.hardware_tests_dir,
            profiles_dir=settings.profiles_dir,
        )
    return results


def gates(
    params: Params, evaluation: dict[str, Any], hardware: dict[str, ProfileResult]
) -> list[GateResult]:
    """Every gate a version must pass to become ``candidate``, with measured value and threshold."""
    by_name = {r["name"]: r for r in evaluation["variants"]}
    chosen = by_name[evaluation["chosen"]]
    test_accuracy = evaluation["split_accuracy"]["test"]
    drop = by_name["fp32"]["accuracy"] - chosen["accuracy"]
    result = [
        GateResult("data_checks", True, "passed", "passed"),
        GateResult(
            "test_accuracy",
            test_accuracy >= params.gates.min_test_accuracy,
            round(test_accuracy, 4),
            params.gates.min_test_accuracy,
        ),
        GateResult(
            "variant_accuracy_drop",
            drop <= params.compress.max_accuracy_drop,
            round(drop, 4),
            params.compress.max_accuracy_drop,
        ),
    ]
    for profile, outcome in hardware.items():
        detail = "; ".join(outcome.failures) or outcome.status
        result.append(GateResult(f"hw.{profile}", outcome.passed, detail[:500], "all budgets"))
    return result


def log_evaluation(evaluation: dict[str, Any], ws: Workspace) -> None:
    for split, value in evaluation["split_accuracy"].items():
        mlflow.log_metric(f"{split}_accuracy", value)
    for r in evaluation["variants"]:
        for key in ("size_bytes", "accuracy", "p50_ms", "p95_ms"):
            mlflow.log_metric(f"variant.{r['name']}.{key}", float(r[key]))
    mlflow.log_artifact(str(ws.evaluation), artifact_path="evaluation")
    mlflow.log_artifact(
        str(variants_chart(evaluation["variants"], ws.work_dir / "variants.png")),
        artifact_path="plots",
    )


def log_hardware(hardware: dict[str, ProfileResult]) -> None:
    for profile, outcome in hardware.items():
        for key, value in outcome.metrics.items():
            mlflow.log_metric(f"hw.{profile}.{key}", float(value))
        mlflow.log_artifact(str(outcome.junit_path), artifact_path=f"hardware/{profile}")
        mlflow.log_artifact(str(outcome.report_path), artifact_path=f"hardware/{profile}")


def lineage_tags(settings: Settings, params: Params, ws: Workspace, source: str) -> dict[str, str]:
    state = git_state(Path())
    return {
        "edgeloop.git_commit": state.commit,
        "edgeloop.git_dirty": str(state.dirty).lower(),
        "edgeloop.data.hash": dvc_dir_hash(ws.splits_dir),
        "edgeloop.params_hash": params.digest(),
        "edgeloop.dataset": params.data.loader,
        "edgeloop.source": source,
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
    hardware: dict[str, ProfileResult],
    gate_results: list[GateResult],
    source: str,
) -> Published:
    import numpy as np

    schema = json.loads((ws.splits_dir / "schema.json").read_text())
    data_report = json.loads(ws.data_report.read_text())
    tags = lineage_tags(settings, params, ws, source)
    variants = [
        VariantRecord(
            name=r["name"],
            path=ws.variants_dir / f"{r['name']}.onnx",
            sha256=r["sha256"],
            size_bytes=r["size_bytes"],
            accuracy=r["accuracy"],
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
            "hash": tags["edgeloop.data.hash"],
            "rows": data_report.get("rows", {}),
            "checks": f"{data_report.get('expectations_evaluated', 0)} expectations passed",
        },
        "metrics": evaluation["split_accuracy"],
        "compression": {
            name: text.format(opset=params.compress.opset, n=params.compress.calibration_samples)
            for name, text in COMPRESSION.items()
        },
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
        hardware={
            p: {
                "status": o.status,
                **{k: o.metrics.get(k) for k in ("p95_ms", "accuracy", "p50_ms")},
            }
            for p, o in hardware.items()
        },
    )
    return publish(client, release, keys_dir=settings.keys_dir, cards_dir=settings.model_cards_dir)
