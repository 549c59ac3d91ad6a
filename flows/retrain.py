"""The Prefect driver: the retrain flow and the register flow, thin wrappers over plain functions.

Each task wraps one stage of :mod:`flows.stages` or :mod:`flows.release`, retries only transient
failures (network, timeouts), and reports progress through :mod:`flows.progress`. Everything the
run learns goes to one MLflow run; the flow returns a JSON-ready summary.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import mlflow
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from edgeloop.core.errors import DataCheckError
from edgeloop.core.params import Params, load_params
from edgeloop.core.settings import Settings
from flows import release, stages, validation
from flows.datasets import read_splits, xy
from flows.model_contract import ContractOverrides
from flows.onnxfile import check_model_file
from flows.plots import confusion_matrix, loss_curve, predicted_vs_true
from flows.pool import PoolRunner, log_suite
from flows.progress import stage
from flows.quality import metric_of
from flows.run_summary import RunSummary, VariantSummary
from flows.validation import ProfileChoice
from flows.workspace import Workspace
from registry import tags as tag
from registry.tracking import connect, ensure_experiment

TRANSIENT = (ConnectionError, TimeoutError, httpx.TransportError)


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    return isinstance(state.result(raise_on_failure=False), TRANSIENT)


def _task(name: str) -> Any:
    return task(
        name=name,
        retries=2,
        retry_delay_seconds=2,
        retry_condition_fn=_transient,
        cache_policy=NO_CACHE,
        persist_result=False,
    )


@_task("ingest")
def ingest_task(params: Params, ws: Workspace) -> dict[str, int]:
    with stage("ingest") as note:
        rows = stages.ingest(params, ws)
        note.detail = ", ".join(f"{k} {v}" for k, v in rows.items())
    return rows


@_task("validate")
def validate_task(params: Params, ws: Workspace) -> dict[str, Any]:
    with stage("validate") as note:
        try:
            report = stages.validate(params, ws)
        finally:
            if ws.data_report.exists():
                mlflow.log_artifact(str(ws.data_report), artifact_path="data")
        note.detail = f"{report['expectations_evaluated']} expectations passed"
    return report


@_task("train")
def train_task(params: Params, ws: Workspace) -> list[dict[str, float]]:
    with stage("train") as note:
        history = stages.train_model(params, ws)
        for row in history:
            step = int(row["epoch"])
            mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=step)
        mlflow.log_artifact(
            str(loss_curve(history, ws.work_dir / "loss.png")), artifact_path="plots"
        )
        schema, splits = read_splits(ws.splits_dir)
        model = stages.load_trained(params, ws)
        x_test, y_test = xy(splits["test"])
        import torch

        with torch.no_grad():
            out = model(torch.from_numpy(x_test))
        if schema.task == "regression":
            values = (out[:, 0] * model.target_std + model.target_mean).numpy()
            path = predicted_vs_true(y_test, values, ws.work_dir / "predicted-vs-true.png")
            note.detail = f"{len(history)} epochs, val MAE {history[-1]['val_mae']:.4g}"
        else:
            pred = out.argmax(dim=1).numpy()
            path = confusion_matrix(
                y_test, pred, list(schema.classes), ws.work_dir / "confusion.png"
            )
            note.detail = f"{len(history)} epochs, val accuracy {history[-1]['val_accuracy']:.4f}"
        mlflow.log_artifact(str(path), artifact_path="plots")
    return history


@_task("compress")
def compress_task(params: Params, ws: Workspace, fp32: Path | None = None) -> dict[str, str]:
    with stage("compress") as note:
        if fp32 is None:
            paths = stages.compress(params, ws)
        else:
            if ws.variants_dir.exists():
                shutil.rmtree(ws.variants_dir)
            ws.variants_dir.mkdir(parents=True)
            shutil.copyfile(fp32, ws.fp32)
            paths = stages.quantise_variants(params, ws)
            stages.skip_variant(
                ws,
                "pruned-int8",
                "the model was trained elsewhere: only a model trained here is pruned and "
                "fine-tuned",
            )
        skipped = stages.skipped_variants(ws)
        note.detail = ", ".join(paths) + "".join(
            f"; {name} not built: {reason}" for name, reason in skipped.items()
        )
    return paths


@_task("evaluate")
def evaluate_task(params: Params, ws: Workspace) -> dict[str, Any]:
    with stage("evaluate") as note:
        evaluation = stages.evaluate(params, ws)
        release.log_evaluation(evaluation, ws)
        note.detail = f"chose {evaluation['chosen']}"
    return evaluation


@_task("hardware")
def hardware_task(
    settings: Settings, params: Params, ws: Workspace, evaluation: dict[str, Any], run_id: str
) -> dict[str, ProfileChoice]:
    with stage("hardware") as note:
        profiles = validation.load_profiles(settings, params.gates.profiles)
        pooled = [p for p in profiles if p.runner == "pool"]
        suite = ""
        if pooled:
            # Runners elsewhere fetch the variants, the golden set and the suite from the MLflow run.
            mlflow.log_artifacts(str(ws.variants_dir), artifact_path="variants")
            mlflow.log_artifact(str(ws.golden), artifact_path="golden")
            suite = log_suite(settings.hardware_tests_dir, pooled)
        runners: dict[str, validation.Runner] = {
            "local": validation.LocalRunner(settings, ws),
            "pool": PoolRunner(
                tracking_uri=settings.tracking_uri,
                run_id=run_id,
                deadline_s=params.gates.runner_deadline_s,
                server=bool(settings.prefect_api_url),
                suite_sha256=suite,
                source=params.gates.runner_source,
            ),
        }
        choices = validation.validate(profiles, evaluation, runners)
        release.log_hardware(choices)
        note.detail = ", ".join(
            f"{p} {c.status}" + (f" ({c.variant})" if c.variant else "") for p, c in choices.items()
        )
    return choices


@_task("register")
def register_task(**kwargs: Any) -> Any:
    with stage("register") as note:
        published = release.register(**kwargs)
        aliases = ", ".join(published.aliases) or "no alias (a gate failed)"
        note.detail = f"{published.model_name} v{published.version}: {aliases}"
    return published


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    return {prefix: json.dumps(value) if isinstance(value, list) else value}


def _loop(
    settings: Settings,
    params: Params,
    ws: Workspace,
    *,
    model_name: str,
    imported: Path | None,
    contract: ContractOverrides | None = None,
    tags: dict[str, str] | None = None,
    lineage: dict[str, str] | None = None,
) -> RunSummary:
    """Run every stage inside one MLflow run; data-check failures mark the run and register nothing.
    ``tags`` go on the run; ``lineage`` on the run, the version and its card's lineage."""
    client = connect(settings.tracking_uri)
    artifacts = settings.artifacts_dir if settings.uses_embedded_mlflow() else None
    experiment = ensure_experiment(client, model_name, artifacts)
    started = datetime.now(UTC)
    source = "imported" if imported else "trained"
    with mlflow.start_run(
        experiment_id=experiment, run_name=f"{source}-{started:%Y%m%d-%H%M%S}"
    ) as run:
        mlflow.log_params(_flatten("", params.model_dump(mode="json")))
        mlflow.set_tags({tag.SOURCE: source, **(tags or {}), **(lineage or {})})
        ingest_task(params, ws)
        try:
            validate_task(params, ws)
        except DataCheckError:
            mlflow.set_tag(tag.DATA_CHECK, "failed")
            raise
        if imported is None:
            train_task(params, ws)
        else:
            schema, _ = read_splits(ws.splits_dir)
            with stage("import") as note:
                spec = check_model_file(imported, schema, contract, dest=ws.imported)
                note.detail = spec.summary()
            mlflow.log_artifact(str(imported), artifact_path="imported")
        compress_task(params, ws, ws.imported if imported else None)
        evaluation = evaluate_task(params, ws)
        hardware = hardware_task(settings, params, ws, evaluation, run.info.run_id)
        gate_results = release.gates(params, evaluation, hardware)
        published = register_task(
            client=client,
            settings=settings,
            params=params,
            ws=ws,
            model_name=model_name,
            run_id=run.info.run_id,
            evaluation=evaluation,
            hardware=hardware,
            gate_results=gate_results,
            source=source,
            lineage=lineage,
        )
    return RunSummary(
        model=published.model_name,
        version=published.version,
        aliases=published.aliases,
        mlflow_run_id=run.info.run_id,
        tracking_uri=settings.tracking_uri,
        chosen_variant=evaluation["chosen"],
        variants=[
            VariantSummary(**r, signature=published.signatures[r["name"]])
            for r in evaluation["variants"]
        ],
        metric=metric_of(evaluation).key,
        split_metric=evaluation[f"split_{metric_of(evaluation).key}"],
        gates=list(gate_results),
        hardware={p: c.summary() for p, c in hardware.items()},
        model_card={"markdown": str(published.card_markdown), "json": str(published.card_json)},
        started=started.isoformat(timespec="seconds"),
    )


@flow(name="retrain", log_prints=False, validate_parameters=False)
def retrain_flow(
    settings: Settings | None = None,
    own_workspace: bool = False,
    params: Params | None = None,
    lineage: dict[str, str] | None = None,
) -> RunSummary:
    """Data checks → train → compress → evaluate → hardware → register; ``own_workspace``: in a
    work folder named for the model (another params file than the project's). ``params`` replaces
    the params file's (a fleet-triggered retrain turns ``data.include_field`` on); ``lineage``
    goes on the version (which alert and field data led to it)."""
    settings = settings or Settings()
    if not own_workspace:
        return retrain(settings, params=params, lineage=lineage)
    name = (params or load_params(settings.params_file)).model_name
    root = settings.work_dir / "models" / name
    return retrain(settings, ws=Workspace(root / "splits", root), params=params, lineage=lineage)


def retrain(
    settings: Settings,
    tags: dict[str, str] | None = None,
    ws: Workspace | None = None,
    *,
    params: Params | None = None,
    lineage: dict[str, str] | None = None,
) -> RunSummary:
    """The loop on the configured data and model; ``tags`` go on the MLflow run (e.g. a run key)."""
    params = params or load_params(settings.params_file)
    ws = ws or Workspace(settings.splits_dir, settings.work_dir)
    return _loop(
        settings, params, ws, model_name=params.model_name, imported=None, tags=tags,
        lineage=lineage,
    )  # fmt: skip


@flow(name="register-model", log_prints=False, validate_parameters=False)
def register_flow(
    model_path: Path,
    model_name: str,
    dataset: str,
    settings: Settings | None = None,
    contract: Path | None = None,
) -> RunSummary:
    """A model trained elsewhere, through the same checks, compression, hardware and registration;
    ``contract`` is a YAML of what its graph cannot say (:class:`ContractOverrides`)."""
    settings = settings or Settings()
    base = load_params(settings.params_file)
    params = base.model_copy(
        update={"model_name": model_name, "data": base.data.model_copy(update={"loader": dataset})}
    )
    root = settings.work_dir / "import" / model_name
    ws = Workspace(root / "splits", root)
    overrides = ContractOverrides.load(contract) if contract else None
    return _loop(
        settings, params, ws, model_name=model_name, imported=model_path, contract=overrides
    )
