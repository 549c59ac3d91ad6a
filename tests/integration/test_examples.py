"""The built-in example workloads as a user runs them: `edgeloop run --params
examples/<name>/params.yaml` to a `candidate` (data checks, training, compression, hardware
profiles, registration), then a simulated canary rollout of two of its variants (the regressor's
judged on the target values its devices send back)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fleet_builders import roll_out_workspace_variants, two_stage_policy

from flows.datasets import read_splits, xy

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project
REPO = Path(__file__).resolve().parents[2]


def run_example(project: Project, name: str) -> Path:
    """`edgeloop run --params examples/NAME/params.yaml` in ``project``; its work folder."""
    target = project.root / "examples" / name
    shutil.copytree(REPO / "examples" / name, target)
    result = project.edgeloop("run", "--params", f"examples/{name}/params.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    return (
        project.home
        / "work"
        / "models"
        / json.loads((project.home / "last-run.json").read_text())["model"]
    )


def test_the_image_cnn_example_reaches_candidate_with_a_channel_pruned_variant_and_rolls_out(
    project: Project, tmp_path: Path
) -> None:
    work = run_example(project, "digits-cnn")
    summary = json.loads((project.home / "last-run.json").read_text())
    assert summary["model"] == "digits-cnn" and summary["aliases"] == ["candidate"]
    variants = {v["name"]: v for v in summary["variants"]}
    assert set(variants) == {"fp32", "int8-dynamic", "int8-static", "pruned-int8"}
    assert variants["pruned-int8"]["size_bytes"] < 0.5 * variants["fp32"]["size_bytes"]
    card = json.loads((project.root / "model-cards" / "digits-cnn" / "v1.json").read_text())
    (image,) = card["contract"]["inputs"]
    assert (image["name"], image["dtype"], image["shape"]) == ("image", "uint8", [1, 8, 8])
    assert "inside the graph" in card["contract"]["preprocessing"]
    # The project's own model and its data are left alone.
    assert not (project.root / "data" / "splits").exists()
    _, splits = read_splits(work / "splits")
    assert xy(splits["field"])[0].max() == 240  # raw bytes, scaled by the graph
    roll_out_workspace_variants(tmp_path, "digits-cnn", work, "fp32", summary["chosen_variant"])


def test_the_regression_example_reaches_candidate_gated_on_mae_and_rolls_out_on_field_error(
    project: Project, tmp_path: Path
) -> None:
    work = run_example(project, "diabetes-regression")
    summary = json.loads((project.home / "last-run.json").read_text())
    assert summary["model"] == "diabetes-regression" and summary["aliases"] == ["candidate"]
    assert summary["metric"] == "mae" and summary["split_metric"]["test"] < 55
    gates = {g["name"]: g for g in summary["gates"]}
    assert gates["test_mae"]["passed"] and gates["variant_mae_increase"]["passed"]
    variants = {v["name"]: v for v in summary["variants"]}
    assert variants["int8-static"]["mae"] <= 1.02 * variants["fp32"]["mae"]
    assert all(v["accuracy"] is None for v in variants.values())
    card = (project.root / "model-cards" / "diabetes-regression" / "v1.md").read_text()
    assert "Task: regression." in card and "| split | MAE |" in card
    client = project.client()
    version = client.get_model_version_by_alias("diabetes-regression", "candidate")
    assert version.tags["edgeloop.hw.edge-small.status"] == "passed"
    plots = {a.path for a in client.list_artifacts(version.run_id, "plots")}
    assert "plots/predicted-vs-true.png" in plots
    _, splits = read_splits(work / "splits")
    assert splits["test"]["label"].dtype.kind == "f"  # continuous targets kept as they are
    # simulated devices send the field split's targets back: the MAE gate judges the canary
    policy = two_stage_policy({"host-cpu": 200})
    policy["cohorts"]["host-cpu"]["required"] = ["p95_latency", "error_rate", "mae"]
    policy["gates"]["mae"] = {"max_increase": 5.0, "alpha": 0.05, "min_samples": 20}
    detail = roll_out_workspace_variants(
        tmp_path, "diabetes-regression", work, "fp32", summary["chosen_variant"], policy
    )
    (cohort,) = detail["status"]["last_check"]["cohorts"]
    gates = {g["gate"]: g for g in cohort["gates"]}
    assert gates["mae"]["verdict"] == "pass" and gates["mae"]["samples"] >= 20, gates["mae"]
