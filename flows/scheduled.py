"""Scheduled retraining: retrain only when the data or the training code changed since the last version.

The check costs one ingest (no training): the freshly ingested splits are hashed the way DVC hashes
them (``edgeloop.data.hash``) and the training code is fingerprinted (the modules that shape a
model, not every file of ``flows``, plus the params sections that do: ``edgeloop.training.hash``). Both are compared with the
tags of the model's newest version. Unchanged: the skip and its reason are recorded (a Prefect
artifact and the registered model's ``edgeloop.schedule.last_result`` tag) and nothing is trained.
Changed: the retrain flow runs; with ``schedule.auto_promote`` a new candidate becomes ``production``
and the rollout deployment starts.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict

from edgeloop.core.params import Params, load_params
from edgeloop.core.settings import Settings
from fleet.shared.admin_protocol import Alert
from flows import approval, champion, stages
from flows.fleet_trigger import field_dir, pull_for_alert, pulled_rows, with_field_data
from flows.fleet_trigger import lineage as fleet_lineage
from flows.run_summary import RunSummary
from flows.workspace import Workspace
from registry import tags as tag
from registry.lineage import dvc_dir_hash
from registry.publish import CANDIDATE

if TYPE_CHECKING:
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CODE_ROOT = Path(__file__).resolve().parent  # the flows package
SHAPING_CODE = (
    "datasets", "field_data", "stages", "models", "plugins", "train", "prune", "compress",
    "model_contract", "quality",
)  # fmt: skip
"""The modules of ``flows`` whose code shapes a model: loading, splitting and merging the data, the
builders, training, pruning, export and quantisation, and the choice of variant. Orchestration,
checks, hardware validation, registration and rollout are left out: editing them retrains nothing."""
SHAPING = ("model_name", "seed", "data", "training", "compress", "gates")


def plugin_files(params: Params) -> list[tuple[str, Path]]:
    """The source files of the user's own loader and builder (``package.module:function`` in
    params.yaml), by module name: they shape the model like the built-in ones."""
    found = []
    for ref in (params.data.loader, params.training.builder):
        module, sep, _ = ref.partition(":")
        if not sep or not module or module.startswith("."):
            continue
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None  # training reports the unknown plugin; the hash does without it
        if spec is not None and spec.origin and Path(spec.origin).is_file():
            found.append((module, Path(spec.origin)))
    return found


def training_hash(params: Params, code_root: Path = CODE_ROOT) -> str:
    """sha256 over the code that shapes a model (:data:`SHAPING_CODE` under ``code_root``, and the
    user's plugin modules) and the params sections that do (:data:`SHAPING`)."""
    digest = hashlib.sha256()
    files = [(f"{name}.py", code_root / f"{name}.py") for name in SHAPING_CODE]
    for label, path in [*files, *plugin_files(params)]:
        if path.is_file():
            digest.update(label.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    shaping = {k: v for k, v in params.model_dump(mode="json").items() if k in SHAPING}
    digest.update(json.dumps(shaping, sort_keys=True).encode())
    return digest.hexdigest()


def latest_version(client: MlflowClient, model: str) -> ModelVersion | None:
    """The model's newest version, or None when it has none (or does not exist yet)."""
    versions = client.search_model_versions(f"name = '{model}'")
    return max(versions, key=lambda v: int(v.version), default=None)


def change_reason(latest: ModelVersion | None, data_hash: str, code_hash: str) -> str | None:
    """Why a retrain is due, or None when neither the data nor the training code changed."""
    if latest is None:
        return "no version registered yet"
    tags = latest.tags
    changes = []
    if tags.get(tag.DATA_HASH) != data_hash:
        changes.append(f"data hash {tags.get(tag.DATA_HASH) or 'missing'} -> {data_hash}")
    if tags.get(tag.TRAINING_HASH) != code_hash:
        recorded = tags.get(tag.TRAINING_HASH)
        changes.append(
            f"training code {recorded[:12]} -> {code_hash[:12]}"
            if recorded
            else f"v{latest.version} records no {tag.TRAINING_HASH}"
        )
    return "; ".join(changes) or None


def current_data_hash(params: Params, settings: Settings) -> str:
    """Ingest into a scratch folder and hash the splits as DVC would (what a retrain would record)."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix="schedule-check-") as scratch:
        ws = Workspace(Path(scratch) / "splits", Path(scratch) / "work")
        stages.ingest(params, ws)
        return dvc_dir_hash(ws.splits_dir)


def _record(client: MlflowClient, model: str, markdown: str, result: str) -> None:
    create_markdown_artifact(markdown=markdown, key="scheduled-retrain", description=result)
    if latest_version(client, model) is not None:
        client.set_registered_model_tag(model, tag.SCHEDULE_LAST_RESULT, result[:5000])


def _promote_and_roll_out(client: MlflowClient, model: str, version: str) -> str:
    from prefect.deployments import run_deployment

    from flows.deployments import ROLLOUT_DEPLOYMENT
    from registry.outcomes import production_version, promote

    stable = production_version(client, model)
    promote(client, model, version, rollout_by="auto-promotion (scheduled-retrain)")
    run = run_deployment(
        ROLLOUT_DEPLOYMENT,
        parameters={"model": model, "version": version, "stable_version": stable},
        timeout=0,
        as_subflow=False,
    )
    return str(getattr(run, "name", run))


def _auto_promote(
    client: MlflowClient,
    settings: Settings,
    params: Params,
    version: str,
    rows: tuple[np.ndarray, np.ndarray] | None,
    why: str,
) -> tuple[str | None, str]:
    """What ``schedule.auto_promote`` (and ``approval``) make of a new candidate: the rollout
    run started (None: not promoted) and what to add to the run's result, and why."""
    from registry.outcomes import production_version

    model, mode = params.model_name, params.schedule.auto_promote
    stable = production_version(client, model)
    said = ""
    if mode == "if_better" and stable is not None:
        verdict = champion.compare(client, model, version, stable, rows)
        champion.record(client, model, verdict, settings.model_cards_dir)
        said = f"; {verdict.reason()}"
        if not verdict.passed:
            return None, f"{said}; not promoted (auto_promote: if_better)"
    if params.schedule.approval:
        answer = approval.ask(
            client, model, version, f"{why}\n\nauto_promote: {mode}; production v{stable}{said}",
            timeout_s=params.schedule.approval_timeout_s,
        )  # fmt: skip
        if answer is None:
            return None, f"{said}; no answer within the approval timeout"
        note = f": {answer.note}" if answer.note else ""
        said = f"{said}; {'approved' if answer.approve else 'rejected'} by a person{note}"
        if not answer.approve:
            return None, said
    return _promote_and_roll_out(client, model, version), said


class ScheduledResult(BaseModel):
    """What one scheduled run did: skipped (with the version it found current) or retrained."""

    model_config = ConfigDict(frozen=True)

    model: str
    skipped: bool
    reason: str
    """Why it skipped, or what changed since the newest version."""
    version: str | None
    """The version it found current (skipped) or registered (retrained); None before the first."""
    retrained: RunSummary | None = None
    rollout_run: str | None = None
    """The rollout flow run it started (``schedule.auto_promote`` and a new candidate)."""


@flow(name="scheduled-retrain", log_prints=False, validate_parameters=False)
def scheduled_retrain_flow(
    settings: Settings | None = None, alert: dict[str, Any] | None = None
) -> ScheduledResult:
    """Retrain when the data or the training code changed since the last version; else skip.

    ``alert`` (an ``Alert`` of the fleet controller, from its ``open_retrain`` playbook action):
    first pull the field data behind it and train with it (:mod:`flows.fleet_trigger`); the
    version records the alert and the field data's version."""
    from datetime import UTC, datetime

    from flows.retrain import retrain_flow
    from registry.tracking import connect

    settings = settings or Settings()
    params = load_params(settings.params_file)
    logger = get_run_logger()
    client = connect(settings.tracking_uri)
    model = params.model_name
    asked = Alert.model_validate(alert) if alert is not None else None
    lineage: dict[str, str] | None = None
    because = ""
    trains = params
    pulled = None
    if asked is not None:  # the fleet asked: its field data first, then the usual check
        pulled = pull_for_alert(settings, params)
        params = with_field_data(params)  # as params.yaml would say it: the hash's view
        trains = with_field_data(params, field_dir(settings, params))  # wherever this runs
        lineage = fleet_lineage(asked, pulled)
        because = f"alert {asked.id} ({asked.kind}): {pulled.describe()}"
        logger.info("retrain asked by %s", because)
    latest = latest_version(client, model)
    code_hash = training_hash(params)
    why = change_reason(latest, current_data_hash(trains, settings), code_hash)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    if why is not None and because:
        why = f"{because}; {why}"
    if why is None:
        assert latest is not None  # change_reason names a reason while there is no version
        reason = f"data and training code unchanged since {model} v{latest.version}"
        if because:
            reason = f"{because}; nothing new to train on: {reason}"
        logger.info("skipping the scheduled retrain: %s", reason)
        _record(
            client, model, f"# Scheduled retrain skipped\n\n{reason}", f"{now} skipped: {reason}"
        )
        return ScheduledResult(
            model=model, skipped=True, reason=reason, version=str(latest.version)
        )
    logger.info("retraining %s: %s", model, why)
    summary = retrain_flow(settings=settings, params=trains, lineage=lineage)
    version = summary.version
    client.set_model_version_tag(model, version, tag.TRAINING_HASH, code_hash)
    outcome = f"retrained: v{version} ({', '.join(summary.aliases) or 'no alias'})"
    rollout_run = None
    if params.schedule.auto_promote != "never" and CANDIDATE in summary.aliases:
        rows = pulled_rows(settings, trains, pulled) if pulled is not None else None
        rollout_run, said = _auto_promote(client, settings, params, version, rows, why)
        outcome = f"{outcome}{said}"
    _record(client, model, f"# Scheduled retrain\n\n{why}\n\n{outcome}", f"{now} {outcome}")
    return ScheduledResult(
        model=model,
        skipped=False,
        reason=why,
        version=version,
        retrained=summary,
        rollout_run=rollout_run,
    )
