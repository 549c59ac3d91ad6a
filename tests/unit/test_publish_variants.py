"""flows.rollout.publish_variants: each class's signed variant is downloaded from the registry,
checked against the sha256 tag and uploaded to the controller with its claim (no host path), and
the downloads do not outlive the call."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow
import pytest

import flows.rollout as rollout_mod
from fleet.shared.admin_protocol import ArtifactRegistration
from registry import tags as tag

DATA = {"int8": b"int8 variant bytes" * 100, "fp32": b"fp32 variant bytes" * 100}


class Registry:
    """A model version whose classes take different variants, each with its sha256 and signature."""

    def __init__(self, recorded: dict[str, str] | None = None) -> None:
        sha = {v: hashlib.sha256(d).hexdigest() for v, d in DATA.items()}
        sha.update(recorded or {})
        self.tags = {
            tag.VARIANT: "fp32",
            tag.hw_variant("edge-small"): "int8",
            **{tag.variant_sha256(v): sha[v] for v in DATA},
            **{tag.variant_signature(v): f"sig-{v}" for v in DATA},
        }

    def get_model_version(self, model: str, version: str) -> Any:
        return SimpleNamespace(tags=self.tags, run_id="run-1")


class Admin:
    def __init__(self) -> None:
        self.uploads: list[tuple[ArtifactRegistration, bytes, Path]] = []

    def register_artifact(self, registration: ArtifactRegistration, content: Path) -> None:
        self.uploads.append((registration, content.read_bytes(), content))


@pytest.fixture(autouse=True)
def registry_files(monkeypatch: pytest.MonkeyPatch) -> None:
    def download(*, run_id: str, artifact_path: str, dst_path: str) -> str:
        variant = Path(artifact_path).stem
        path = Path(dst_path) / artifact_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(DATA[variant])
        return str(path)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)


def test_each_class_uploads_its_signed_variant_with_its_claim() -> None:
    admin = Admin()
    chosen = rollout_mod.publish_variants(
        Registry(),
        admin,  # type: ignore[arg-type]
        "digits",
        "7",
        ["host-cpu", "edge-small"],
    )
    assert chosen == {"host-cpu": "fp32", "edge-small": "int8"}
    claims = [
        (r.hardware_class, r.variant, r.sha256, r.signature, r.release) for r, _, _ in admin.uploads
    ]
    assert claims == [
        ("host-cpu", "fp32", hashlib.sha256(DATA["fp32"]).hexdigest(), "sig-fp32", 7),
        ("edge-small", "int8", hashlib.sha256(DATA["int8"]).hexdigest(), "sig-int8", 7),
    ]
    assert [data for _, data, _ in admin.uploads] == [DATA["fp32"], DATA["int8"]]
    assert all(r.source is None and r.model == "digits" for r, _, _ in admin.uploads)
    assert not any(path.exists() for _, _, path in admin.uploads)  # the downloads are gone


def test_a_file_that_is_not_the_registered_one_is_not_uploaded() -> None:
    admin = Admin()
    with pytest.raises(rollout_mod.RolloutError, match=r"the registry recorded 0{64}; nothing was"):
        rollout_mod.publish_variants(
            Registry({"fp32": "0" * 64}),
            admin,  # type: ignore[arg-type]
            "digits",
            "7",
            ["host-cpu"],
        )
    assert admin.uploads == []
