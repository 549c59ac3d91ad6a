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

import pytest
from fleet_builders import roll_out_workspace_variants
from training_params import FAST_PARAMS

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project
MODEL = "digits-cnn"
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
    roll_out_workspace_variants(tmp_path, MODEL, work, "int8-static", "fp32")


# A scikit-learn user's conversion: a logistic regression on the digits, by skl2onnx, with the
# probabilities as a tensor (zipmap False) or, by default, as ZipMap's list of dicts.
CONVERT_SKLEARN = """
import sys
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from skl2onnx import to_onnx

digits = load_digits()
x = digits.data.astype("float32")
model = LogisticRegression(max_iter=500).fit(x, digits.target)
options = {id(model): {"zipmap": sys.argv[2] == "zipmap"}}
onnx_model = to_onnx(model, x[:1], options=options, target_opset={"": 17, "ai.onnx.ml": 3})
with open(sys.argv[1], "wb") as f:
    f.write(onnx_model.SerializeToString())
"""


def convert_sklearn(path: Path, zipmap: bool) -> Path:
    args = [sys.executable, "-c", CONVERT_SKLEARN, str(path), "zipmap" if zipmap else "tensor"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return path


def test_a_scikit_learn_classifier_converted_by_skl2onnx(project: Project) -> None:
    project.set_params(compress=FAST_PARAMS["compress"])
    zipmap = convert_sklearn(project.root / "zipmap.onnx", zipmap=True)
    args = ["--name", "digits-logreg", "--dataset", "sklearn-digits"]
    refused = project.edgeloop("register", str(zipmap), *args)
    assert refused.returncode == 1 and project.version_count() == 0
    assert "output 'output_probability' is a sequence (skl2onnx's ZipMap)" in refused.stderr
    assert "'zipmap': False" in refused.stderr
    tensor = convert_sklearn(project.root / "logreg.onnx", zipmap=False)
    result = project.edgeloop("register", str(tensor), *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "contract: classification: X float32[N, 64] → probabilities" in result.stdout
    version = project.client().get_model_version_by_alias("digits-logreg", "candidate")
    assert version.tags["edgeloop.hw.edge-small.status"] == "passed"
    card = json.loads((project.root / "model-cards" / "digits-logreg" / "v1.json").read_text())
    assert [o["kind"] for o in card["contract"]["outputs"]] == ["label", "probabilities"]
