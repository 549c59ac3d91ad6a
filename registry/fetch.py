"""Fetching one variant of a registered version for a hardware run, checked against its sha256.

A hardware runner checks what the registry holds, not what a build left on disk: given a model URI,
this resolves the version's run, picks the variant the profile takes, downloads it with the golden
set and the fp32 reference, and refuses a file whose sha256 is not the one the registry recorded:
the version's ``edgeloop.variant.<name>.sha256`` tag, which registration wrote beside the signature.
The ``manifest.json`` stored with the files is only trusted for a ``runs:/`` URI, which names no
version: anyone who can write the artifact store can rewrite a file, its sidecars and the manifest
together, but not the version's tags.

The hardware-tests suite calls this as ``python -m registry.fetch`` in a child process, never by
import: MLflow is not installed on small devices, and in the suite's process it would count against
the memory the suite measures and caps. The child prints one JSON line (:class:`FetchedModel`).

Layout of a registered version's run (written by :mod:`registry.publish`)::

    variants/<variant>.onnx      fp32, int8-dynamic, int8-static, pruned-int8 (some may be absent)
    variants/manifest.json       {"variants": [{"name", "file", "sha256", ...}, ...]}
    golden/golden.npz            x (float32, n by d), y (int64 labels)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeloop.core.errors import EdgeloopError
from fleet.shared.signature import file_sha256
from registry import tags as tag

if TYPE_CHECKING:
    from mlflow import MlflowClient

MANIFEST = "variants/manifest.json"
GOLDEN = "golden/golden.npz"
REFERENCE_VARIANT = "fp32"

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)$")
_RUN = re.compile(r"^runs:/(?P<run_id>[^/]+)/variants/(?P<variant>[^/]+)\.onnx$")
URI_FORMS = "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/variants/VARIANT.onnx"


class FetchError(EdgeloopError):
    """Raised by registry.fetch when a variant cannot be fetched or fails its sha256 check."""


@dataclass(frozen=True)
class FetchedModel:
    """A variant on local disk, with what the suite checks it against."""

    model: Path
    reference: Path | None  # the fp32 variant, when the version has one
    golden: Path
    variant: str
    sha256: str
    run_id: str
    model_name: str | None = None  # None for a runs:/ URI
    version: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
        )


def _resolve(
    client: MlflowClient, uri: str, variant: str | None, profile: str | None
) -> tuple[str, str, str | None, str | None, dict[str, str]]:
    """``(run_id, variant, model_name, version, version tags)`` for ``uri``."""
    from mlflow.exceptions import MlflowException

    if match := _RUN.match(uri):
        if variant is not None and variant != match["variant"]:
            raise FetchError(f"{uri} names variant {match['variant']!r}, not {variant!r}")
        return match["run_id"], match["variant"], None, None, {}
    alias, by_version = _ALIAS.match(uri), _VERSION.match(uri)
    if alias is None and by_version is None:
        raise FetchError(f"cannot fetch {uri!r}: not a model URI", hint=f"use {URI_FORMS}")
    try:
        if alias is not None:
            mv = client.get_model_version_by_alias(alias["name"], alias["alias"])
        else:
            assert by_version is not None
            mv = client.get_model_version(by_version["name"], by_version["version"])
    except MlflowException as exc:
        raise FetchError(
            f"{uri} could not be resolved in the registry: {exc.message}",
            hint="check the name, alias or version and the tracking URI",
        ) from exc
    tags = mv.tags or {}
    chosen = (
        variant or (tags.get(tag.hw_variant(profile)) if profile else None) or tags.get(tag.VARIANT)
    )
    if not chosen:
        raise FetchError(
            f"{uri} (version {mv.version}) has no {tag.VARIANT} tag",
            hint="name the variant to fetch",
        )
    if not mv.run_id:
        raise FetchError(f"{uri} (version {mv.version}) is not linked to a run")
    return str(mv.run_id), str(chosen), str(mv.name), str(mv.version), dict(tags)


def _download(client: MlflowClient, run_id: str, path: str, dest: Path, uri: str) -> Path:
    from mlflow.exceptions import MlflowException

    try:
        return Path(client.download_artifacts(run_id, path, str(dest)))
    except (MlflowException, OSError) as exc:
        raise FetchError(
            f"{uri}: run {run_id} has no artifact {path} ({type(exc).__name__})",
            hint="was it registered by edgeloop? the golden set and manifest are logged with it",
        ) from exc


def _verified(
    client: MlflowClient, run_id: str, entry: dict[str, Any], dest: Path, uri: str
) -> Path:
    """Download one manifest entry; a file whose sha256 differs is deleted and refused."""
    path = _download(client, run_id, f"variants/{entry['file']}", dest, uri)
    actual = file_sha256(path)
    if actual != entry["sha256"]:
        path.unlink(missing_ok=True)
        raise FetchError(
            f"variant {entry['name']} of {uri} failed its sha256 check: "
            f"{entry.get('recorded_by', 'the manifest')} says {entry['sha256']}, the downloaded "
            f"file is {actual}",
            hint="the artifact store holds a file the registry did not sign; do not deploy it",
        )
    return path


def fetch_for_profile(
    model_uri: str,
    variant: str | None,
    dest: Path,
    *,
    profile: str | None = None,
    client: MlflowClient | None = None,
) -> FetchedModel:
    """Download ``variant`` of ``model_uri`` (with golden set and reference) into ``dest``.

    Without ``variant``, a version's tag ``edgeloop.hw.<profile>.variant`` decides (the variant
    validation chose for that profile), then ``edgeloop.variant``. ``client`` defaults to
    ``MlflowClient()`` (the current tracking URI).
    """
    if client is None:
        from mlflow import MlflowClient

        client = MlflowClient()
    run_id, chosen, name, version, tags = _resolve(client, model_uri, variant, profile)
    dest.mkdir(parents=True, exist_ok=True)
    manifest_path = _download(client, run_id, MANIFEST, dest, model_uri)
    try:
        entries = {v["name"]: v for v in json.loads(manifest_path.read_text())["variants"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise FetchError(f"{model_uri}: {MANIFEST} of run {run_id} is unreadable: {exc}") from exc
    if chosen not in entries:
        raise FetchError(
            f"{model_uri} has no variant {chosen!r} (it has {sorted(entries)})",
            hint="pick one of those",
        )
    if version is not None:  # the registry's record, not the files stored beside the variants
        entries = {
            n: {**e, "sha256": tags.get(tag.variant_sha256(n)), "recorded_by": "the version's tag"}
            for n, e in entries.items()
        }
        unrecorded = [
            n for n in (chosen, REFERENCE_VARIANT) if n in entries and not entries[n]["sha256"]
        ]
        if unrecorded:
            raise FetchError(
                f"{model_uri} (version {version}) has no sha256 recorded for variant "
                f"{' or '.join(unrecorded)} (tag {tag.variant_sha256(unrecorded[0])})",
                hint="register versions through edgeloop, which records every variant's sha256",
            )
    model = _verified(client, run_id, entries[chosen], dest, model_uri)
    reference = None
    if REFERENCE_VARIANT in entries:
        reference = (
            model
            if chosen == REFERENCE_VARIANT
            else _verified(client, run_id, entries[REFERENCE_VARIANT], dest, model_uri)
        )
    golden = _download(client, run_id, GOLDEN, dest, model_uri)
    return FetchedModel(
        model=model,
        reference=reference,
        golden=golden,
        variant=chosen,
        sha256=str(entries[chosen]["sha256"]),
        run_id=run_id,
        model_name=name,
        version=version,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m registry.fetch URI --dest DIR``: print the fetched model as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m registry.fetch", description=__doc__)
    parser.add_argument("model_uri", help=URI_FORMS)
    parser.add_argument("--dest", required=True, type=Path, help="folder to download into")
    parser.add_argument("--variant", default=None, help="the variant (default: from the tags)")
    parser.add_argument("--profile", default=None, help="the hardware profile it is fetched for")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the embedded store)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr is the error
    from mlflow import MlflowClient

    from edgeloop.core.settings import Settings

    client = MlflowClient(tracking_uri=args.tracking_uri or Settings().tracking_uri)
    try:
        fetched = fetch_for_profile(
            args.model_uri, args.variant, args.dest, profile=args.profile, client=client
        )
    except EdgeloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(fetched.to_json())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
