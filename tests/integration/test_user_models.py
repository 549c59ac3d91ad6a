"""A user's own model through the whole loop: a small CNN trained here with torch, exported by
plain ``torch.onnx.export`` with an image input named ``input`` ([N, 1, 8, 8], raw pixel values,
the normalisation inside the graph) and logits out, taken in by `edgeloop register` (contract
derived from the graph, int8 calibration fed by name, hardware profiles checked by output kind),
then rolled out as two versions to simulated devices by a real controller."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fleet_builders import register as register_signed
from fleet_builders import target_all
from servers import ADMIN, ADMIN_HEADERS, uvicorn_controller, write_public_key
from training_params import FAST_PARAMS

from flows.datasets import read_splits, xy

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project
MODEL = "digits-cnn"
POLICY = {
    "cohorts": {"host-cpu": {"p95_latency_ms": 200}},
    "stages": [
        {
            "fraction": f,
            "bake_s": 1.0,
            "deadline_s": 40,
            "min_confirmed_fraction": 0.8,
            "min_inferences": 40,
            "min_feedback": 20,
        }
        for f in (0.5, 1.0)
    ],
    "gates": {"max_error_rate": 0.05, "accuracy": {"delta": 0.1, "alpha": 0.05, "min_samples": 20}},
    "rollback_timeout_s": 30,
}


# A user's own training script: a two-convolution CNN on the digits as 1x8x8 images, exported
# the way its author would (input ``input``, output ``logits``, a dynamic batch). It runs in its
# own process, as a user's script does.
EXPORT_CNN = """
import sys
import torch
from torch import nn
from sklearn.datasets import load_digits


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
        )

    def forward(self, x):
        return self.body(x / 16.0)  # pixel values 0-16 in, normalised inside the graph


torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8)
y = torch.tensor(digits.target)
model = DigitsCNN()
optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
for _ in range(6):
    for batch in torch.randperm(len(x)).split(64):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimiser.step()
model.eval()
torch.onnx.export(
    model, (torch.zeros(2, 1, 8, 8),), sys.argv[1],
    input_names=["input"], output_names=["logits"],
    dynamic_shapes=({0: torch.export.Dim("batch")},),
)
"""


def export_cnn(path: Path) -> Path:
    done = subprocess.run(
        [sys.executable, "-c", EXPORT_CNN, str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return path


@pytest.fixture
def registered_cnn(project: Project) -> Project:
    project.set_params(compress=FAST_PARAMS["compress"])
    cnn = export_cnn(project.root / "cnn.onnx")
    result = project.edgeloop("register", str(cnn), "--name", MODEL, "--dataset", "sklearn-digits")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "contract: classification: input float32[N, 1, 8, 8]" in result.stdout
    return project


def test_a_torch_cnn_registers_passes_the_profiles_and_rolls_out(
    registered_cnn: Project, tmp_path: Path
) -> None:
    proj = registered_cnn
    client = proj.client()
    version = client.get_model_version_by_alias(MODEL, "candidate")
    for profile in ("host-cpu", "edge-small"):
        assert version.tags[f"edgeloop.hw.{profile}.status"] == "passed", version.tags
    card = json.loads((proj.root / "model-cards" / MODEL / "v1.json").read_text())
    assert card["contract"]["inputs"][0] == {
        "name": "input",
        "shape": [1, 8, 8],
        "layout": "NCHW",
        "value_range": [0.0, 16.0],
    }
    assert card["contract"]["outputs"][0]["kind"] == "logits"
    assert "## Model contract" in (proj.root / "model-cards" / MODEL / "v1.md").read_text()
    variants = {v["name"]: v for v in card["variants"]}
    assert {"fp32", "int8-dynamic", "int8-static"} <= set(variants)
    assert "pruned-int8" not in variants  # not trained here: nothing to prune, said by omission
    for v in variants.values():
        assert v["accuracy"] >= 0.9, variants
    # MLflow's own signature names the image input with its shape and a variable batch.
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(proj.tracking_uri)
    try:
        info = mlflow.models.get_model_info(f"models:/{MODEL}/{version.version}")
    finally:
        mlflow.set_tracking_uri(previous)
    signature = info.signature.to_dict()
    assert json.loads(signature["inputs"]) == [
        {
            "type": "tensor",
            "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 8, 8]},
            "name": "input",
        }
    ]

    # Two variants of the CNN as two versions, rolled out to simulated devices.
    work = proj.home / "work" / "import" / MODEL
    _, splits = read_splits(work / "splits")
    field_x, field_y = xy(splits["field"])
    key = Ed25519PrivateKey.generate()
    server = tmp_path / "controller"
    server.mkdir()
    with uvicorn_controller(server, write_public_key(key, server / "k.pem")) as (base, db_url):
        _roll_out(base, db_url, key, work / "variants", field_x, field_y)


def _roll_out(
    base: str,
    db_url: str,
    key: Ed25519PrivateKey,
    variants: Path,
    field_x: np.ndarray,
    field_y: np.ndarray,
) -> None:
    """int8-static as version 1 on six simulated devices, then fp32 as version 2 by a rollout."""
    from fleet.simulate import Simulation

    http = httpx.Client(base_url=base, timeout=30)
    register_signed(http, key, "1", "host-cpu", variants / "int8-static.onnx", model=MODEL)
    register_signed(http, key, "2", "host-cpu", variants / "fp32.onnx", model=MODEL)
    sim = Simulation(
        base,
        ADMIN,
        devices=6,
        classes={"host-cpu": 1.0},
        field_x=np.tile(field_x, (3, 1)),
        field_y=np.tile(field_y, 3),
        feedback_rate=0.5,
        report_interval_s=0.25,
        rows_per_report=30,
        seed=3,
    )
    try:
        result = sim.result
        sim.run_sync(until=lambda: all(d.enrolled for d in result.devices.values()), timeout_s=20)
        target_all(db_url, list(result.devices), "1", model=MODEL)
        sim.run_sync(until=lambda: result.versions() == {"1": 6}, timeout_s=20)
        assert result.versions() == {"1": 6}
        r = http.post(
            "/v1/rollouts",
            json={"model": MODEL, "version": "2", "stable_version": "1", "policy": POLICY},
            headers=ADMIN_HEADERS,
        )
        assert r.status_code == 201, r.text
        rollout = str(r.json()["rollout_id"])
        assert http.post(f"/v1/rollouts/{rollout}/start", headers=ADMIN_HEADERS).status_code == 200

        def phase() -> str:
            return str(http.get(f"/v1/rollouts/{rollout}", headers=ADMIN_HEADERS).json()["phase"])

        sim.run_sync(until=lambda: phase() in {"succeeded", "rolled_back", "failed"}, timeout_s=90)
        detail = http.get(f"/v1/rollouts/{rollout}", headers=ADMIN_HEADERS).json()
        assert detail["phase"] == "succeeded", detail
        sim.run_sync(until=lambda: result.versions() == {"2": 6}, timeout_s=20)
        assert result.versions() == {"2": 6}
    finally:
        sim.close()
        http.close()
