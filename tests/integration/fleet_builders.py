"""Builders for fleet tests against a real controller: signed registration of a variant, and
pointing devices at a version the way a first deployment does (models: ``builders``)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from builders import claim
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from servers import ADMIN, ADMIN_HEADERS, uvicorn_controller, write_public_key

from fleet.controller.storage import db, store


def register(
    client: httpx.Client,
    key: Ed25519PrivateKey,
    version: str,
    cls: str,
    path: Path,
    model: str = "digits",
) -> None:
    """Upload ``path`` as the signed variant of ``model`` ``version`` for class ``cls``."""
    data = path.read_bytes()
    query = claim(key, f"{cls}-fp32", data, model=model, version=version, hardware_class=cls)
    r = client.post("/v1/artifacts", params=query, content=data, headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.text


def target_all(db_url: str, device_ids: list[str], version: str, model: str = "digits") -> None:
    """What an operator's first deployment does: point every device at ``version`` (no rollout)."""
    engine = db.make_engine(db_url)
    try:
        with db.make_sessionmaker(engine)() as session:
            store.target_devices(
                session, device_ids, model=model, version=version, rollout_id=None,
                now=datetime.now(UTC),
            )  # fmt: skip
            session.commit()
    finally:
        engine.dispose()


def two_stage_policy(
    p95_budgets_ms: dict[str, float], *, deadline_s: float = 40, min_inferences: int = 40
) -> dict[str, Any]:
    """A canary policy small enough for a test: stages of half then all of each cohort (p95
    budget per cohort), 1 s bakes, 20 labels per arm for the accuracy gate."""
    return {
        "cohorts": {c: {"p95_latency_ms": ms} for c, ms in p95_budgets_ms.items()},
        "stages": [
            {
                "fraction": f,
                "bake_s": 1.0,
                "deadline_s": deadline_s,
                "min_confirmed_fraction": 0.8,
                "min_inferences": min_inferences,
                "min_feedback": 20,
            }
            for f in (0.5, 1.0)
        ],
        "gates": {
            "max_error_rate": 0.05,
            "accuracy": {"delta": 0.1, "alpha": 0.05, "min_samples": 20},
        },
        "rollback_timeout_s": 30,
    }


LABEL_FREE_GATES = ["p95_latency", "error_rate", "agreement"]


def label_free_policy(p95_budgets_ms: dict[str, float], **stage: Any) -> dict[str, Any]:
    """:func:`two_stage_policy` for a fleet that sends no labels: no feedback minimum, and every
    cohort requires agreement with the stable model (shadow on half the rows, within 50% of the
    serving time) instead of accuracy."""
    raw = two_stage_policy(p95_budgets_ms, **stage)
    for stage_policy in raw["stages"]:
        stage_policy["min_feedback"] = 0
    for cohort in raw["cohorts"].values():
        cohort["required"] = LABEL_FREE_GATES
    raw["gates"]["agreement"] = {"max_disagreement": 0.05, "alpha": 0.05, "min_samples": 100}
    raw["shadow"] = {"rate": 0.5, "cpu_budget": 0.5}
    return raw


def roll_out_on_simulated_devices(
    base: str,
    db_url: str,
    key: Ed25519PrivateKey,
    model: str,
    stable: Path,
    canary: Path,
    field_x: np.ndarray,
    field_y: np.ndarray,
    devices: int = 6,
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``stable`` as version 1 on simulated host-cpu devices that score ``field_x`` (labelled by
    ``field_y``), then ``canary`` as version 2 by a staged rollout (``policy``, by default
    :func:`two_stage_policy`), which must succeed and leave every device on version 2; the
    rollout's detail."""
    from fleet.simulate import Simulation

    http = httpx.Client(base_url=base, timeout=30)
    register(http, key, "1", "host-cpu", stable, model=model)
    register(http, key, "2", "host-cpu", canary, model=model)
    repeat = max(1, 600 // len(field_x))
    sim = Simulation(
        base,
        ADMIN,
        devices=devices,
        classes={"host-cpu": 1.0},
        field_x=np.tile(field_x, (repeat, 1)),
        field_y=np.tile(field_y, repeat),
        feedback_rate=0.5,
        report_interval_s=0.25,
        rows_per_report=30,
        seed=3,
    )
    try:
        result = sim.result
        sim.run_sync(until=lambda: all(d.enrolled for d in result.devices.values()), timeout_s=20)
        target_all(db_url, list(result.devices), "1", model=model)
        sim.run_sync(until=lambda: result.versions() == {"1": devices}, timeout_s=20)
        assert result.versions() == {"1": devices}
        policy = policy or two_stage_policy({"host-cpu": 200})
        body = {"model": model, "version": "2", "stable_version": "1", "policy": policy}
        r = http.post("/v1/rollouts", json=body, headers=ADMIN_HEADERS)
        assert r.status_code == 201, r.text
        rollout = str(r.json()["rollout_id"])
        assert http.post(f"/v1/rollouts/{rollout}/start", headers=ADMIN_HEADERS).status_code == 200

        def phase() -> str:
            return str(http.get(f"/v1/rollouts/{rollout}", headers=ADMIN_HEADERS).json()["phase"])

        sim.run_sync(until=lambda: phase() in {"succeeded", "rolled_back", "failed"}, timeout_s=90)
        detail = http.get(f"/v1/rollouts/{rollout}", headers=ADMIN_HEADERS).json()
        assert detail["phase"] == "succeeded", detail
        sim.run_sync(until=lambda: result.versions() == {"2": devices}, timeout_s=20)
        assert result.versions() == {"2": devices}
        return dict(detail)
    finally:
        sim.close()
        http.close()


def roll_out_workspace_variants(
    tmp: Path,
    model: str,
    work: Path,
    stable: str,
    canary: str,
    policy: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Variants ``stable`` then ``canary`` of the loop's workspace ``work`` rolled out by a real
    controller (its state in ``tmp``) to simulated devices whose traffic is the field split; the
    rollout's detail."""
    from flows.datasets import read_splits, xy

    _, splits = read_splits(work / "splits")
    field_x, field_y = xy(splits["field"])
    key = Ed25519PrivateKey.generate()
    server = tmp / "controller"
    server.mkdir()
    with uvicorn_controller(server, write_public_key(key, server / "k.pem")) as (base, db_url):
        return roll_out_on_simulated_devices(
            base,
            db_url,
            key,
            model,
            work / "variants" / f"{stable}.onnx",
            work / "variants" / f"{canary}.onnx",
            field_x,
            field_y,
            policy=policy,
        )
