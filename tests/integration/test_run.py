"""`edgeloop run` end to end on the embedded defaults: ephemeral Prefect, SQLite MLflow, onnxruntime."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
import yaml
from training_params import FAST_PARAMS, TRAINED_PARAMS

from fleet.shared.signature import ReleaseClaim, verify_variant

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project
REPO = Path(__file__).resolve().parents[2]
Trained = tuple[Any, subprocess.CompletedProcess[str]]


def test_run_exits_zero_with_stage_table_and_no_error_lines(trained: Trained) -> None:
    _, result = trained
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for stage in ("ingest", "validate", "train", "compress", "evaluate", "hardware", "register"):
        assert re.search(rf"│ {stage}\s+│ ok", output), f"{stage} missing from the stage table"
    assert not [line for line in output.splitlines() if "ERROR" in line or "Traceback" in line]


def test_last_run_summary_names_version_aliases_variants_and_card(trained: Trained) -> None:
    proj, _ = trained
    summary = json.loads((proj.home / "last-run.json").read_text())
    assert summary["model"] == "digits-classifier"
    assert summary["version"] == "1"
    assert summary["aliases"] == ["candidate"]
    assert {v["name"] for v in summary["variants"]} == {
        "fp32",
        "int8-dynamic",
        "int8-static",
        "pruned-int8",
    }
    for v in summary["variants"]:
        assert v["size_bytes"] > 0 and 0.9 <= v["accuracy"] <= 1 and 0 < v["p50_ms"] <= v["p95_ms"]
    assert all(g["passed"] for g in summary["gates"])
    assert {g["name"] for g in summary["gates"]} >= {"data_checks", "test_accuracy", "hw.host-cpu"}
    assert (proj.root / summary["model_card"]["markdown"]).is_file()


def test_version_carries_lineage_tags_and_candidate_alias(trained: Trained) -> None:
    proj, _ = trained
    client = proj.client()
    version = client.get_model_version_by_alias("digits-classifier", "candidate")
    assert str(version.version) == "1"
    tags = version.tags
    for key in (
        "edgeloop.git_commit",
        "edgeloop.git_dirty",
        "edgeloop.params_hash",
        "edgeloop.variant",
    ):
        assert tags[key], key
    assert tags["edgeloop.data.hash"].endswith(".dir")
    assert tags["edgeloop.hw.host-cpu.status"] == "passed"
    assert tags["edgeloop.gates"] == "passed"
    assert float(tags["edgeloop.hw.host-cpu.p95_ms"]) > 0


def test_variants_are_logged_hashed_and_signed(trained: Trained, tmp_path: Path) -> None:
    proj, _ = trained
    client = proj.client()
    version = client.get_model_version("digits-classifier", "1")
    mlflow.set_tracking_uri(proj.tracking_uri)
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=version.run_id, artifact_path="variants", dst_path=str(tmp_path)
        )
    )
    manifest = json.loads((local / "manifest.json").read_text())
    public_key = manifest["public_key"].encode()
    assert (proj.home / "keys" / "signing-ed25519.pem").stat().st_mode & 0o777 == 0o600
    assert (manifest["model"], manifest["version"], manifest["release"]) == (
        "digits-classifier",
        "1",
        1,
    )
    for entry in manifest["variants"]:
        path = local / entry["file"]
        claim = ReleaseClaim("digits-classifier", "1", entry["name"], entry["sha256"], 1)
        recorded = version.tags[f"edgeloop.variant.{entry['name']}.signature"]
        assert recorded == entry["signature"]  # the version's tag is the registry's record
        assert verify_variant(public_key, claim, path, recorded)
        assert version.tags[f"edgeloop.variant.{entry['name']}.sha256"] == entry["sha256"]
        forged = base64.b64encode(b"\0" * 64).decode()
        assert not verify_variant(public_key, claim, path, forged)
        as_v2 = ReleaseClaim("digits-classifier", "2", entry["name"], entry["sha256"], 2)
        assert not verify_variant(public_key, as_v2, path, recorded)


def test_model_card_is_written_and_logged(trained: Trained) -> None:
    proj, _ = trained
    card_md = proj.root / "model-cards" / "digits-classifier" / "v1.md"
    card = json.loads(card_md.with_suffix(".json").read_text())
    text = card_md.read_text()
    for section in (
        "Intended use",
        "Data",
        "Metrics per split",
        "Variants",
        "Compression",
        "Limitations",
        "Lineage",
    ):
        assert f"## {section}" in text
    assert card["lineage"]["edgeloop.data.hash"].endswith(".dir")
    assert set(card["metrics"]) == {"train", "val", "test"}
    client = proj.client()
    run_id = client.get_model_version("digits-classifier", "1").run_id
    logged = {a.path for a in client.list_artifacts(run_id, "model-card")}
    assert logged == {"model-card/v1.md", "model-card/v1.json"}


def test_run_logs_params_metrics_and_plots(trained: Trained) -> None:
    proj, _ = trained
    client = proj.client()
    run = client.get_run(client.get_model_version("digits-classifier", "1").run_id)
    epochs = TRAINED_PARAMS["training"]["epochs"]  # what the session's run trained
    assert run.data.params["training.epochs"] == str(epochs)
    assert run.data.metrics["test_accuracy"] >= 0.9
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == epochs
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/loss.png", "plots/confusion.png", "plots/pareto.png"} <= plots


def test_models_command_lists_the_version(trained: Trained) -> None:
    proj, _ = trained
    result = proj.edgeloop("models")
    assert result.returncode == 0, result.stderr
    assert "digits-classifier" in result.stdout and "candidate" in result.stdout


def test_register_takes_an_external_onnx_through_the_same_gates(trained: Trained) -> None:
    proj, _ = trained
    onnx_file = proj.home / "work" / "variants" / "fp32.onnx"
    external = proj.root / "external.onnx"
    external.write_bytes(onnx_file.read_bytes())
    result = proj.edgeloop(
        "register", str(external), "--name", "imported-digits", "--dataset", "sklearn-digits"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    version = proj.client().get_model_version_by_alias("imported-digits", "candidate")
    assert version.tags["edgeloop.source"] == "imported"
    assert version.tags["edgeloop.hw.host-cpu.status"] == "passed"
    assert (proj.root / "model-cards" / "imported-digits" / "v1.md").is_file()


def test_a_failed_gate_registers_without_candidate(project: Project) -> None:
    project.set_params(
        training={"epochs": 1},
        compress=FAST_PARAMS["compress"],
        gates={"min_test_accuracy": 0.999, "profiles": ["host-cpu"]},
    )
    result = project.edgeloop("run")
    assert result.returncode == 3, result.stdout + result.stderr
    client = project.client()
    version = client.get_model_version("digits-classifier", "1")
    assert version.tags["edgeloop.gates"] == "failed"
    assert version.tags["edgeloop.gate.test_accuracy"] == "failed"
    assert client.get_registered_model("digits-classifier").aliases == {}


def test_both_profiles_recorded_with_their_variant(trained: Trained) -> None:
    proj, _ = trained
    version = proj.client().get_model_version("digits-classifier", "1")
    for profile in ("host-cpu", "edge-small"):
        assert version.tags[f"edgeloop.hw.{profile}.status"] == "passed"
        assert version.tags[f"edgeloop.hw.{profile}.variant"] in {
            "pruned-int8",
            "int8-static",
            "int8-dynamic",
        }
    card = (proj.root / "model-cards" / "digits-classifier" / "v1.md").read_text()
    assert "| edge-small | passed |" in card and "## Pareto front" in card
    plots = {a.path for a in proj.client().list_artifacts(version.run_id, "plots")}
    assert "plots/pareto.png" in plots


def test_validate_command_records_a_profile_on_the_registered_version(trained: Trained) -> None:
    proj, _ = trained
    result = proj.edgeloop(
        "validate", "models:/digits-classifier@candidate", "--profile", "edge-small"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "edge-small: passed" in result.stdout
    client = proj.client()
    runs = client.search_runs(
        [client.get_experiment_by_name("digits-classifier").experiment_id],
        filter_string="tags.`edgeloop.profile` = 'edge-small'",
    )
    assert len(runs) == 1 and runs[0].data.tags["edgeloop.model_version"] == "1"
    assert runs[0].data.metrics["runs"] >= 1000


def test_suite_runs_against_a_model_uri_like_a_ci_runner(trained: Trained, tmp_path: Path) -> None:
    proj, _ = trained
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", str(REPO / "hardware-tests"), "-p", "no:cacheprovider", "-q",
            "--model-uri", "models:/digits-classifier@candidate", "--profile", "host-cpu",
            "--tracking-uri", proj.tracking_uri, "--report", str(report),
            "--junitxml", str(tmp_path / "junit.xml"),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(report.read_text())
    assert data["status"] == "passed" and data["profile"] == "host-cpu"
    assert data["metrics"]["runs"] >= 1000 and (tmp_path / "junit.xml").is_file()


def test_a_budget_breach_on_one_profile_keeps_candidate_and_says_why(
    project: Project, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles"
    shutil.copytree(REPO / "hardware-tests" / "profiles", profiles)
    edge = yaml.safe_load((profiles / "edge-small.yaml").read_text())
    edge["budgets"]["p95_latency_ms"] = 0.0001
    (profiles / "edge-small.yaml").write_text(yaml.safe_dump(edge))
    project.extra_env["EDGELOOP_PROFILES_DIR"] = str(profiles)
    project.set_params(training={"epochs": 5}, compress=FAST_PARAMS["compress"])
    result = project.edgeloop("run")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "gate(s) failed: hw.edge-small" in result.stderr
    version = project.client().get_model_version("digits-classifier", "1")
    assert version.tags["edgeloop.hw.host-cpu.status"] == "passed"
    assert version.tags["edgeloop.hw.edge-small.status"] == "failed"
    assert (
        "exceeds budget 0.0001 ms on profile edge-small"
        in version.tags["edgeloop.hw.edge-small.reason"]
    )
    assert project.client().get_registered_model("digits-classifier").aliases == {}
