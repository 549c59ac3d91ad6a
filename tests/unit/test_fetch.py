"""registry.fetch against a real MLflow (SQLite and a file artifact store in tmp): URIs, tags, sha256.

Versions are registered the way registry.publish lays them out (variants/*.onnx, variants/
manifest.json, golden/golden.npz), with tiny ONNX models, so the last test can hand a model URI to
the real hardware-tests suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from mlflow import MlflowClient
from onnx import TensorProto, helper, numpy_helper

from registry.fetch import FetchedModel, FetchError, fetch_for_profile, main

REPO = Path(__file__).resolve().parents[2]
FEATURES, CLASSES = 8, 3


def tiny_model(path: Path, scale: float) -> Path:
    """features[N, 8] -> MatMul -> Softmax; ``scale`` makes each variant's bytes differ."""
    weights = np.zeros((FEATURES, CLASSES), dtype=np.float32)
    weights[np.arange(CLASSES), np.arange(CLASSES)] = scale
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(weights, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Registry:
    client: MlflowClient
    uri: str
    runs: dict[str, str]  # label -> run id
    files: Path


def log_version(
    client: MlflowClient,
    experiment: str,
    folder: Path,
    variants: list[str],
    *,
    tags: dict[str, str],
    golden: bool = True,
    tamper: str | None = None,
) -> tuple[str, str]:
    """Log a run laid out like registry.publish's and register it, each variant's sha256 recorded
    in the version's tags; ``tamper`` rewrites that variant in the artifact store after it was
    recorded, and its manifest entry with it (the tags are left alone)."""
    folder.mkdir(parents=True)
    run_id = client.create_run(experiment).info.run_id
    entries = []
    tags = dict(tags)
    for i, name in enumerate(variants):
        path = tiny_model(folder / f"{name}.onnx", scale=float(i + 1))
        tags[f"edgeloop.variant.{name}.sha256"] = sha256(path)
        if name == tamper:
            tiny_model(path, scale=99.0)
        entries.append({"name": name, "file": path.name, "sha256": sha256(path)})
        client.log_artifact(run_id, str(path), "variants")
    (folder / "manifest.json").write_text(json.dumps({"model": "digits", "variants": entries}))
    client.log_artifact(run_id, str(folder / "manifest.json"), "variants")
    if golden:
        x = np.eye(CLASSES, FEATURES, dtype=np.float32).repeat(4, axis=0)
        with (folder / "golden.npz").open("wb") as f:
            np.savez(f, x=x, y=np.argmax(x[:, :CLASSES], axis=1).astype(np.int64))
        client.log_artifact(run_id, str(folder / "golden.npz"), "golden")
    client.set_terminated(run_id)
    version = client.create_model_version(
        "digits", source=f"runs:/{run_id}/variants", run_id=run_id, tags=tags
    )
    return run_id, str(version.version)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(root / "artifacts").as_uri())
    client.create_registered_model("digits")
    runs = {}
    runs["good"], v1 = log_version(
        client,
        experiment,
        root / "v1",
        ["fp32", "int8-dynamic", "pruned-int8"],
        tags={"edgeloop.variant": "int8-dynamic", "edgeloop.hw.edge-small.variant": "pruned-int8"},
    )
    client.set_registered_model_alias("digits", "candidate", v1)
    runs["tampered"], v2 = log_version(
        client,
        experiment,
        root / "v2",
        ["fp32", "int8-dynamic"],
        tags={"edgeloop.variant": "int8-dynamic"},
        tamper="int8-dynamic",
        golden=False,
    )
    client.set_registered_model_alias("digits", "tampered", v2)
    runs["untagged"], v3 = log_version(client, experiment, root / "v3", ["int8-static"], tags={})
    client.set_registered_model_alias("digits", "untagged", v3)
    return Registry(client=client, uri=uri, runs=runs, files=root)


def fetch(
    registry: Registry, uri: str, dest: Path, variant: str | None = None, profile: str | None = None
) -> FetchedModel:
    return fetch_for_profile(uri, variant, dest, profile=profile, client=registry.client)


def test_alias_takes_the_versions_chosen_variant(registry: Registry, tmp_path: Path) -> None:
    got = fetch(registry, "models:/digits@candidate", tmp_path)

    assert got.variant == "int8-dynamic"
    assert (got.model_name, got.version, got.run_id) == ("digits", "1", registry.runs["good"])
    assert got.model == tmp_path / "int8-dynamic.onnx"
    assert got.model.read_bytes() == (registry.files / "v1" / "int8-dynamic.onnx").read_bytes()
    assert got.sha256 == sha256(got.model)
    assert got.reference == tmp_path / "fp32.onnx" and got.reference.is_file()
    assert got.golden == tmp_path / "golden.npz"
    with np.load(got.golden) as data:
        assert data["x"].shape == (12, FEATURES)


def test_profile_tag_wins_over_the_chosen_variant(registry: Registry, tmp_path: Path) -> None:
    got = fetch(registry, "models:/digits@candidate", tmp_path, profile="edge-small")
    assert got.variant == "pruned-int8"
    assert got.model.name == "pruned-int8.onnx"

    other = fetch(registry, "models:/digits@candidate", tmp_path / "o", profile="host-cpu")
    assert other.variant == "int8-dynamic"


def test_given_variant_wins_over_tags(registry: Registry, tmp_path: Path) -> None:
    got = fetch(registry, "models:/digits/1", tmp_path, variant="fp32", profile="edge-small")
    assert got.variant == "fp32"
    assert got.reference == got.model  # fp32 is its own reference


def test_runs_uri_names_the_variant(registry: Registry, tmp_path: Path) -> None:
    run_id = registry.runs["good"]
    got = fetch(registry, f"runs:/{run_id}/variants/pruned-int8.onnx", tmp_path)
    assert (got.variant, got.run_id, got.model_name, got.version) == (
        "pruned-int8",
        run_id,
        None,
        None,
    )
    with pytest.raises(FetchError, match="names variant 'pruned-int8', not 'fp32'"):
        fetch(registry, f"runs:/{run_id}/variants/pruned-int8.onnx", tmp_path, variant="fp32")


def test_sha256_mismatch_is_refused_and_the_file_removed(
    registry: Registry, tmp_path: Path
) -> None:
    with pytest.raises(FetchError) as caught:
        fetch(registry, "models:/digits@tampered", tmp_path)
    message = str(caught.value)
    assert "variant int8-dynamic of models:/digits@tampered failed its sha256 check" in message
    recorded = registry.client.get_model_version_by_alias("digits", "tampered").tags[
        "edgeloop.variant.int8-dynamic.sha256"
    ]
    assert f"the version's tag says {recorded}" in message  # not the rewritten manifest
    assert not (tmp_path / "int8-dynamic.onnx").exists()


def test_missing_golden_set_is_named(registry: Registry, tmp_path: Path) -> None:
    run_id = registry.runs["tampered"]
    with pytest.raises(FetchError, match=f"run {run_id} has no artifact golden/golden.npz"):
        fetch(registry, f"runs:/{run_id}/variants/fp32.onnx", tmp_path)


def test_unknown_variant_lists_those_the_version_has(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(
        FetchError,
        match=r"has no variant 'int4' \(it has \['fp32', 'int8-dynamic', 'pruned-int8'\]\)",
    ):
        fetch(registry, "models:/digits@candidate", tmp_path, variant="int4")


def test_version_without_a_variant_tag_needs_one(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"version 3\) has no edgeloop.variant tag"):
        fetch(registry, "models:/digits@untagged", tmp_path)
    assert (
        fetch(registry, "models:/digits@untagged", tmp_path, variant="int8-static").version == "3"
    )


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("models:/digits@production", "models:/digits@production could not be resolved"),
        ("models:/digits/99", "models:/digits/99 could not be resolved"),
        ("s3://bucket/model.onnx", "not a model URI"),
    ],
)
def test_unresolvable_uris(registry: Registry, tmp_path: Path, uri: str, message: str) -> None:
    with pytest.raises(FetchError, match=message):
        fetch(registry, uri, tmp_path)


def test_command_line_prints_one_json_line(
    registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["models:/digits@candidate", "--dest", str(tmp_path), "--tracking-uri", registry.uri]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out.strip().splitlines()[-1])
    assert data["variant"] == "int8-dynamic" and data["model"] == str(
        tmp_path / "int8-dynamic.onnx"
    )

    code = main(
        ["models:/digits@tampered", "--dest", str(tmp_path), "--tracking-uri", registry.uri]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith(
        "error: variant int8-dynamic of models:/digits@tampered"
    )


def suite(registry: Registry, tmp_path: Path, *args: str) -> tuple[int, str, dict]:
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "pytest", str(REPO / "hardware-tests"), "-p", "no:cacheprovider",
            "-q", "--profile", "host-cpu", "--tracking-uri", registry.uri, "--report", str(report),
            *args,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        timeout=120,
    )  # fmt: skip
    data = json.loads(report.read_text()) if report.is_file() else {}
    return proc.returncode, proc.stdout + proc.stderr, data


def test_suite_checks_a_model_uri_with_its_golden_set_and_reference(
    registry: Registry, tmp_path: Path
) -> None:
    code, output, report = suite(registry, tmp_path, "--model-uri", "models:/digits@candidate")

    assert code == 0, output
    assert report["status"] == "passed" and report["model_uri"] == "models:/digits@candidate"
    assert report["variant"] == "int8-dynamic"
    assert report["sha256"] == sha256(registry.files / "v1" / "int8-dynamic.onnx")
    assert report["metrics"]["accuracy"] == 1.0
    assert report["metrics"]["disagreement"] == 0.0  # against the fetched fp32


def test_suite_turns_a_failed_fetch_into_a_usage_error(registry: Registry, tmp_path: Path) -> None:
    code, output, report = suite(registry, tmp_path, "--model-uri", "models:/digits@tampered")

    assert code == 4 and report == {}
    assert "could not fetch models:/digits@tampered: variant int8-dynamic" in output
    assert "failed its sha256 check" in output


def test_suite_takes_model_uri_or_model_path_not_both(registry: Registry, tmp_path: Path) -> None:
    code, output, _ = suite(
        registry, tmp_path, "--model-uri", "models:/digits@candidate", "--model-path", "m.onnx"
    )
    assert code == 4
    assert "--model-uri and --model-path are mutually exclusive" in output
