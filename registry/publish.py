"""Registration, all or nothing: a version with its lineage, signed variants and model card.

Order matters. Everything that can fail on its own (logging artifacts, logging the model) happens
before the version exists. Once ``create_model_version`` has returned, any later failure deletes the
version and its card again, so the registry never shows a half-registered version. The variants are
signed once the version number is known, because a signature binds the model, the version and the
release counter (the version number) as well as the file (``fleet.shared.signature``). ``candidate``
moves last, and only when every gate passed.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from edgeloop.core.errors import RegistryError
from fleet.shared.drift import DriftReference
from fleet.shared.modelspec import ModelSpec
from fleet.shared.signature import ReleaseClaim
from registry import tags as tag
from registry.modelcard import write_card
from registry.run_key import existing_version
from registry.signing import load_or_create_key, public_pem, sign_claim

CANDIDATE = "candidate"
PRODUCTION = "production"


@dataclass(frozen=True)
class ReleaseGateResult:
    """One gate a candidate must pass, with what was measured and the threshold."""

    name: str
    passed: bool
    measured: float | str | None
    threshold: float | str | None


@dataclass(frozen=True)
class VariantRecord:
    name: str
    path: Path
    sha256: str
    size_bytes: int
    accuracy: float | None
    p50_ms: float
    p95_ms: float
    mae: float | None = None


@dataclass
class Release:
    """Everything a version is registered with."""

    model_name: str
    run_id: str
    variants: list[VariantRecord]
    chosen: str
    example_input: np.ndarray
    tags: dict[str, str]
    gates: list[ReleaseGateResult]
    card: dict[str, Any]
    hardware: dict[str, dict[str, Any]] = field(default_factory=dict)
    golden: Path | None = None  # the golden set hardware runners validate against
    drift_reference: DriftReference | None = None  # of the training split, for the devices

    @property
    def all_gates_passed(self) -> bool:
        return bool(self.gates) and all(g.passed for g in self.gates)

    def variant(self, name: str) -> VariantRecord:
        return next(v for v in self.variants if v.name == name)


@dataclass(frozen=True)
class Published:
    model_name: str
    version: str
    aliases: list[str]
    card_markdown: Path
    card_json: Path
    signatures: dict[str, str]


def _log_variants(release: Release) -> None:
    """Log every variant file, the golden set and the drift reference (before the version exists)."""
    for v in release.variants:
        mlflow.log_artifact(str(v.path), artifact_path="variants")
    if release.golden is not None:
        mlflow.log_artifact(str(release.golden), artifact_path="golden")
    if release.drift_reference is not None:
        _log_drift_reference(release.drift_reference)


def _sign_variants(release: Release, version: str, keys_dir: Path) -> dict[str, str]:
    """Sign every variant as release ``version`` of the model and log the signatures beside the
    variants: a ``.sha256`` and a ``.sig`` per variant, a manifest and the public key. The version's
    signature tags are the registry's record; these files are a copy for people and tools."""
    key = load_or_create_key(keys_dir)
    signatures = {
        v.name: sign_claim(key, release_claim(release.model_name, version, v.name, v.sha256))
        for v in release.variants
    }
    manifest = {
        "model": release.model_name,
        "version": version,
        "release": int(version),
        "signature_scheme": "ed25519 over 'edgeloop-release-v2\\n<model>\\n<version>\\n"
        "<variant>\\n<sha256>\\n<release>'",
        "public_key": public_pem(key).decode(),
        "variants": [
            {
                "name": v.name,
                "file": f"{v.name}.onnx",
                "sha256": v.sha256,
                "size_bytes": v.size_bytes,
                "signature": signatures[v.name],
            }
            for v in release.variants
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for v in release.variants:
            (folder / f"{v.name}.onnx.sha256").write_text(f"{v.sha256}  {v.name}.onnx\n")
            (folder / f"{v.name}.onnx.sig").write_text(signatures[v.name] + "\n")
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
        (folder / "public-key.pem").write_bytes(public_pem(key))
        mlflow.log_artifacts(tmp, artifact_path="variants")
    return signatures


def release_claim(model: str, version: str, variant: str, sha256: str) -> ReleaseClaim:
    """What the signature of ``variant`` of ``model`` ``version`` binds; the release counter is the
    registry's version number, which only grows for a model."""
    return ReleaseClaim(
        model=model, version=version, variant=variant, sha256=sha256, release=int(version)
    )


def _log_drift_reference(reference: DriftReference) -> None:
    """The on-device detectors' reference (built by the caller from the training split), logged
    next to the golden set as ``golden/drift-reference.json``: the agent reads it from beside its
    golden inputs."""
    with tempfile.TemporaryDirectory() as tmp:
        path = reference.save(Path(tmp) / "drift-reference.json")
        mlflow.log_artifact(str(path), artifact_path="golden")


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(
            name, description="Registered by edgeloop; see each version's model card."
        )


def _version_tags(release: Release) -> dict[str, str]:
    tags = dict(release.tags)
    tags[tag.VARIANT] = release.chosen
    tags[tag.GATES] = "passed" if release.all_gates_passed else "failed"
    for gate in release.gates:
        tags[tag.gate(gate.name)] = "passed" if gate.passed else "failed"
    for v in release.variants:
        tags[tag.variant_sha256(v.name)] = v.sha256
    for profile, result in release.hardware.items():
        tags[tag.hw_status(profile)] = str(result["status"])
        if result.get("variant"):
            tags[tag.hw_variant(profile)] = str(result["variant"])
        if result["status"] != "passed" and result.get("reason"):
            tags[tag.hw_reason(profile)] = str(result["reason"])[:1000]
        for key in ("p95_ms", "accuracy"):
            if result.get(key) is not None:
                tags[tag.hw(profile, key)] = f"{result[key]:.4g}"
    return tags


def _published_from(client: MlflowClient, model_name: str, version: str) -> Published:
    """A version registered earlier, as ``publish`` would have returned it."""
    found = client.get_model_version(model_name, version)
    card = Path(found.tags.get(tag.MODEL_CARD, ""))
    signatures = {
        variant: v for k, v in found.tags.items() if (variant := tag.signed_variant(k)) is not None
    }
    return Published(
        model_name,
        str(found.version),
        list(found.aliases),
        card,
        card.with_suffix(".json"),
        signatures,
    )


def _contract(path: Path) -> ModelSpec:
    from fleet.shared.modelspec import read_spec
    from fleet.shared.runtime import open_session

    return read_spec(open_session(str(path)))


def mlflow_signature(spec: ModelSpec) -> ModelSignature:
    """The contract as MLflow's own signature (the MLflow UI shows it): each input a named tensor
    with a variable batch, the scored output a named tensor of its width."""
    inputs = Schema(
        [TensorSpec(np.dtype(i.dtype), (-1, *i.shape), name=i.name) for i in spec.inputs]
    )
    out = spec.scored
    outputs = Schema([TensorSpec(np.dtype(np.float32), (-1, out.width), name=out.name)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def publish(
    client: MlflowClient, release: Release, *, keys_dir: Path, cards_dir: Path
) -> Published:
    """Register ``release`` inside its MLflow run; undo the version on any later failure.

    A run tagged with a run key registers at most one version per key: an existing one is returned.
    """
    key = client.get_run(release.run_id).data.tags.get(tag.RUN_KEY)
    if key and (earlier := existing_version(client, release.model_name, key)) is not None:
        return _published_from(client, release.model_name, earlier.version)
    if key:
        release.tags[tag.RUN_KEY] = key
    active = mlflow.active_run()
    in_run = active is not None and active.info.run_id == release.run_id
    with nullcontext() if in_run else mlflow.start_run(run_id=release.run_id):
        try:
            _log_variants(release)
            chosen = release.variant(release.chosen)
            spec = _contract(chosen.path)
            release.card["contract"] = spec.model_dump(mode="json", exclude_defaults=True)
            info = mlflow.onnx.log_model(
                onnx.load(str(chosen.path)),
                name="model",
                signature=mlflow_signature(spec),
                input_example=spec.feed(release.example_input[:1]),
                pip_requirements=["onnxruntime", "onnx", "numpy"],
                onnx_execution_providers=["CPUExecutionProvider"],
                save_as_external_data=False,
            )
            _ensure_registered_model(client, release.model_name)
        except (MlflowException, OSError, ValueError) as exc:
            raise RegistryError(
                f"could not log the model for {release.model_name}: {exc}",
                hint="no version was created; check the tracking server and run again",
            ) from exc
        version = client.create_model_version(
            release.model_name,
            source=info.model_uri,
            run_id=release.run_id,
            tags=_version_tags(release),
            model_id=info.model_id,
            description=f"chosen variant {release.chosen}; gates "
            f"{'passed' if release.all_gates_passed else 'failed'}",
        )
        first = existing_version(client, release.model_name, key) if key else None
        if first is not None and str(first.version) != str(version.version):
            # A concurrent attempt of the same job registered first: keep its version only.
            client.delete_model_version(release.model_name, version.version)
            return _published_from(client, release.model_name, first.version)
        written: list[Path] = []
        try:
            signatures = _sign_variants(release, str(version.version), keys_dir)
            for name, signature in signatures.items():
                client.set_model_version_tag(
                    release.model_name, version.version, tag.variant_signature(name), signature
                )
            aliases = [CANDIDATE] if release.all_gates_passed else []
            card = dict(release.card)
            card.update(
                model=release.model_name,
                version=version.version,
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                aliases=aliases,
                chosen_variant=release.chosen,
                variants=[
                    {
                        **{k: v for k, v in asdict(rec).items() if k != "path"},
                        "signature": signatures[rec.name],
                    }
                    for rec in release.variants
                ],
                gates=[asdict(g) for g in release.gates],
                hardware=release.hardware,
            )
            card["lineage"] = {**card.get("lineage", {}), "mlflow_run_id": release.run_id}
            md_path, json_path = write_card(card, cards_dir)
            written = [md_path, json_path]
            mlflow.log_artifact(str(md_path), artifact_path="model-card")
            mlflow.log_artifact(str(json_path), artifact_path="model-card")
            client.set_model_version_tag(
                release.model_name, version.version, tag.MODEL_CARD, str(md_path)
            )
            for alias in aliases:
                client.set_registered_model_alias(release.model_name, alias, version.version)
        except Exception as exc:
            client.delete_model_version(release.model_name, version.version)
            for path in written:
                path.unlink(missing_ok=True)
            raise RegistryError(
                f"registration of {release.model_name} v{version.version} failed and was undone: {exc}",
                hint="fix the cause and run again",
            ) from exc
    return Published(
        model_name=release.model_name,
        version=str(version.version),
        aliases=aliases,
        card_markdown=md_path,
        card_json=json_path,
        signatures=signatures,
    )
