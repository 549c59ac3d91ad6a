"""The placed training flows: ``placed-training`` runs on a pool's worker, ``placed-retrain`` places it.

``placed-retrain`` computes the job's run key, places it on the cheapest live training pool
(:mod:`flows.placement`), follows it and fails over; it records every decision and attempt in an
MLflow run of its own (tags ``edgeloop.placement.*``, params of each pool, ``placement/decision.json``).
``placed-training`` is the loop itself (:func:`flows.retrain.retrain`) with the run key on its MLflow
run, in a folder of its own per pool; it returns at once when a version with its key exists.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
import yaml
from prefect import flow
from pydantic import BaseModel, ConfigDict

from edgeloop.core.params import Params, load_params
from edgeloop.core.placement_params import PlacementParams
from edgeloop.core.settings import Settings
from flows.data_remote import fetch_field_data, share_field_data
from flows.placement import Placement, PlacementError, run_placed
from flows.retrain import retrain
from flows.workspace import Workspace
from registry import tags as tag
from registry.lineage import dvc_dir_hash, git_state
from registry.run_key import existing_version, run_key
from registry.tracking import connect, ensure_experiment

CHECKOUT = Path(__file__).resolve().parents[1]
PATHS = ("home", "model_cards_dir", "profiles_dir", "hardware_tests_dir")


def settings_for_workers(settings: Settings) -> dict[str, str]:
    """What a worker takes from the driver's settings: the MLflow tracking URI, and with the
    embedded store (a file under the driver's home, so its workers share this host) the driver's
    folders as absolute paths. With an MLflow server a worker may run anywhere and its own
    environment says where its folders are. The parameters and the data never travel as paths:
    they go with the flow run and through the DVC remote (:mod:`flows.data_remote`)."""
    values = {"MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri or ""}  # empty: embedded store
    if settings.uses_embedded_mlflow():
        values.update({name: str(Path(getattr(settings, name)).resolve()) for name in PATHS})
    return values


def job_run_key(settings: Settings, params: Params) -> str:
    """Data (DVC hash of the splits, or the loader when none exist yet), parameters, code.

    Where the job runs is not what it produces: the ``placement`` section, and where the hardware
    runners find their code (``gates.runner_source``), stay out of the key.
    """
    splits = settings.splits_dir
    data = dvc_dir_hash(splits) if splits.is_dir() else f"loader {params.data.loader}"
    gates = params.gates.model_copy(update={"runner_source": None})
    job = params.model_copy(update={"placement": PlacementParams(), "gates": gates})
    state = git_state(CHECKOUT)
    return run_key(data, job.digest(), state.commit + ("+dirty" if state.dirty else ""))


@flow(name="placed-training", log_prints=True, validate_parameters=False)
def placed_training(
    settings: dict[str, str],
    run_key: str,
    pool: str,
    params: dict[str, Any],
    data: dict[str, Any] | None = None,
) -> str:
    """Train and register once for ``run_key`` on this pool's worker; return the version.

    ``params`` is the driver's params.yaml, ``data`` the field data it shared through the DVC
    remote (:func:`flows.data_remote.share_field_data`): nothing is read from the driver's disk."""
    resolved = Settings(**settings)  # type: ignore[arg-type]
    job = Params.model_validate(params)
    earlier = existing_version(connect(resolved.tracking_uri), job.model_name, run_key)
    if earlier is not None:
        print(f"run key {run_key} is already registered as v{earlier.version}")
        return str(earlier.version)
    root = resolved.work_dir / "placed" / pool
    if data is not None:
        field = fetch_field_data(data, root / "field")
        print(
            f"{len(data['pointers'])} field-data file(s) pulled from the DVC remote {data['remote']}"
        )
        job = job.model_copy(update={"data": job.data.model_copy(update={"field_dir": str(field)})})
    root.mkdir(parents=True, exist_ok=True)
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False))
    resolved = resolved.model_copy(update={"params_file": params_file})
    summary = retrain(
        resolved,
        tags={tag.RUN_KEY: run_key, tag.PLACEMENT_POOL: pool},
        ws=Workspace(root / "splits", root),
    )
    print(f"{job.model_name} v{summary.version} registered from pool {pool}")
    return summary.version


def _log_placement(record: Placement, status: str, reason: str) -> None:
    mlflow.set_tags(
        {
            tag.PLACEMENT_STATUS: status,
            tag.PLACEMENT_REASON: reason[:5000],
            tag.PLACEMENT_POOL: record.pool or "none",
            tag.PLACEMENT_ATTEMPTS: str(len(record.attempts)),
        }
    )
    mlflow.log_dict(
        {"status": status, "reason": reason, **record.as_dict()}, "placement/decision.json"
    )


class PlacedRun(BaseModel):
    """What a placed job came to: the version carrying its run key, and how it was placed (none
    when a version with that run key already existed and nothing was trained)."""

    model_config = ConfigDict(frozen=True)

    model: str
    run_key: str
    version: str
    reused: bool
    placement: Placement | None = None


@flow(name="placed-retrain", log_prints=False, validate_parameters=False)
def placed_retrain(settings: Settings | None = None) -> PlacedRun:
    """Place the training job, follow it, fail over; the flow run fails when no pool finishes it."""
    from flows.placement_pools import PrefectPools, ensure_training_deployments

    settings = settings or Settings()
    params = load_params(settings.params_file)
    placement = params.placement
    client = connect(settings.tracking_uri)
    key = job_run_key(settings, params)
    earlier = existing_version(client, params.model_name, key)
    if earlier is not None:
        return PlacedRun(
            model=params.model_name, run_key=key, version=str(earlier.version), reused=True
        )
    ensure_training_deployments([p.name for p in placement.pools], placement.source)
    backend = PrefectPools(
        {
            "settings": settings_for_workers(settings),
            "run_key": key,
            "params": params.model_dump(mode="json"),
            "data": share_field_data(settings, params),
        }
    )
    artifacts = settings.artifacts_dir if settings.uses_embedded_mlflow() else None
    experiment = ensure_experiment(client, params.model_name, artifacts)
    record = Placement()
    started = datetime.now(UTC)
    with mlflow.start_run(experiment_id=experiment, run_name=f"placement-{started:%Y%m%d-%H%M%S}"):
        mlflow.set_tags({tag.RUN_KEY: key, tag.SOURCE: "placement"})
        mlflow.log_params(
            {
                **{f"constraints.{k}": v for k, v in placement.constraints.model_dump().items()},
                **{
                    f"pool.{p.name}": f"{p.provider} {p.region} {p.cost_per_hour:g}/h "
                    f"residency {p.data_residency} accelerator {p.accelerator}"
                    for p in placement.pools
                },
            }
        )
        try:
            run_placed(
                backend,
                placement.pools,
                placement.constraints,
                poll_s=placement.poll_s,
                record=record,
            )
            version = existing_version(client, params.model_name, key)
            if version is None:
                raise PlacementError(
                    f"the run on pool {record.pool} completed but no version carries run key {key}",
                    hint="see the training run in MLflow",
                )
        except PlacementError as exc:
            _log_placement(record, "failed", str(exc))
            raise
        _log_placement(record, "completed", f"trained on {record.pool}")
    return PlacedRun(
        model=params.model_name,
        run_key=key,
        version=str(version.version),
        reused=False,
        placement=record,
    )
