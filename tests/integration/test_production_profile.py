"""The production profile: `edgeloop run` against a real `mlflow server` on PostgreSQL, with
MLflow's basic-auth identities and edgeloop's promotion authority (`--app-name edgeloop-auth`).

The server is started the way an operator starts it: backend store on PostgreSQL in a database of
its own, served artifacts, users in MLflow's auth database. edgeloop registers as a service user;
a user who may edit the model but is not a promoter cannot move ``production`` or force a
promotion; a promoter can, and the poller starts the rollout only for a promoter's fresh record.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import mlflow_server, postgres_database
from training_params import FAST_PARAMS

from registry import tags as tag
from registry.alias_poller import poll_once
from registry.promotion_authority import RECORD_FRESH_S
from registry.promotion_store import PromotionStore

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project
PROMOTERS = ["alice", "edgeloop"]  # edgeloop: the service user, which puts a refused alias back


@contextmanager
def as_user(monkeypatch: pytest.MonkeyPatch, user: str, password: str) -> Iterator[None]:
    with monkeypatch.context() as m:
        m.setenv("MLFLOW_TRACKING_USERNAME", user)
        m.setenv("MLFLOW_TRACKING_PASSWORD", password)
        yield


def _auth_config(folder: Path, admin_password: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ini = folder / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = EDIT\n"  # every user may edit every model: only promoters promote
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        "admin_username = admin\n"
        f"admin_password = {admin_password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return ini


def _refused(call: Any) -> str:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as caught:
        call()
    return str(caught.value)


def test_run_registers_on_an_authenticated_mlflow_server_on_postgresql_and_only_promoters_promote(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    passwords = {u: secrets.token_urlsafe(16) for u in ["admin", "edgeloop", "alice", "mallory"]}
    ini = _auth_config(tmp_path / "auth", passwords["admin"])
    with (
        postgres_database("mlflow_auth") as backend,
        mlflow_server(
            tmp_path / "mlflow", backend.replace("postgresql://", "postgresql+psycopg://"),
            "--app-name", "edgeloop-auth",
            MLFLOW_AUTH_CONFIG_PATH=str(ini),
            MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
            EDGELOOP_PROMOTION_USERS=json.dumps(PROMOTERS),
        ) as mlflow,
    ):  # fmt: skip
        for user in ["edgeloop", "alice", "mallory"]:  # MLflow's users API, as its admin
            created = httpx.post(
                f"{mlflow}/api/2.0/mlflow/users/create",
                json={"username": user, "password": passwords[user]},
                auth=("admin", passwords["admin"]),
                timeout=30,
            )
            assert created.status_code == 200, created.text
        model = f"digits-{uuid.uuid4().hex[:8]}"
        project.extra_env.update(
            MLFLOW_TRACKING_URI=mlflow,
            MLFLOW_TRACKING_USERNAME="edgeloop",
            MLFLOW_TRACKING_PASSWORD=passwords["edgeloop"],
        )
        host_cpu = {"profiles": ["host-cpu"]}  # the one profile whose verdict this test reads
        project.set_params(model_name=model, training={"epochs": 5}, gates=host_cpu, **FAST_PARAMS)
        result = project.edgeloop("run")
        assert result.returncode == 0, result.stdout + result.stderr
        summary = json.loads((project.home / "last-run.json").read_text())
        assert summary["tracking_uri"] == mlflow
        assert not (project.home / "mlflow.db").exists()
        client = MlflowClient(tracking_uri=mlflow)
        with as_user(monkeypatch, "edgeloop", passwords["edgeloop"]):
            version = client.get_model_version_by_alias(model, "candidate")
            assert version.tags["edgeloop.hw.host-cpu.status"] == "passed"
            artifacts = {a.path for a in client.list_artifacts(version.run_id, "variants")}
            assert {"variants/int8-static.onnx", "variants/manifest.json"} <= artifacts
            listed = project.edgeloop("models", "--name", model)
            assert listed.returncode == 0 and model in listed.stdout, listed.stdout
        v = version.version
        with as_user(monkeypatch, "nobody", "wrong-password"):
            assert "401" in _refused(lambda: client.get_model_version(model, v))

        # mallory may edit the model, but not move production, force it, or forge the records
        with as_user(monkeypatch, "mallory", passwords["mallory"]):
            client.set_registered_model_alias(model, "staging", v)  # EDIT is hers
            said = _refused(lambda: client.set_registered_model_alias(model, "production", v))
            assert "mallory may not move production" in said and "user alice" in said, said
            said = _refused(
                lambda: client.set_model_version_tag(model, v, tag.PROMOTE_FORCE, "true")
            )
            assert "may not force a promotion" in said, said
            claim = json.dumps({"user": "mallory", "at": time.time()})  # it silences the listener
            said = _refused(
                lambda: client.set_model_version_tag(model, v, tag.PROMOTE_ROLLOUT, claim)
            )
            assert "may not claim a rollout" in said, said
            forged = json.dumps({"user": "alice", "at": time.time()})
            said = _refused(lambda: client.set_model_version_tag(model, v, tag.PROMOTED_BY, forged))
            assert "written by the MLflow server alone" in said, said
        with as_user(monkeypatch, "edgeloop", passwords["edgeloop"]):
            tags = client.get_model_version(model, v).tags
            assert tag.PROMOTE_FORCE not in tags and tag.PROMOTED_BY not in tags
            assert "production" not in client.get_registered_model(model).aliases

        # alice promotes: the record names her; the poller starts the rollout while it is fresh
        monkeypatch.setenv("EDGELOOP_PROMOTION_USERS", json.dumps(PROMOTERS))
        store, started = PromotionStore(tmp_path / "promotions.db"), []

        def trigger(m: str, ver: str, stable: str | None) -> str:
            started.append((m, ver))
            return f"run-{len(started)}"

        with as_user(monkeypatch, "edgeloop", passwords["edgeloop"]):
            assert poll_once(client, store, trigger, models=[model]) == []  # first look: seen
        with as_user(monkeypatch, "alice", passwords["alice"]):
            client.set_registered_model_alias(model, "production", v)
        with as_user(monkeypatch, "edgeloop", passwords["edgeloop"]):
            record = json.loads(client.get_model_version(model, v).tags[tag.PROMOTED_BY])
            assert record["user"] == "alice"
            late = record["at"] + RECORD_FRESH_S + 60  # a stale record: an earlier promotion's
            [stale] = poll_once(client, store, trigger, models=[model], clock=lambda: late)
            assert stale.status == "refused" and "without a promoter's record" in stale.reason
            assert started == [] and "production" not in client.get_registered_model(model).aliases
        with as_user(monkeypatch, "alice", passwords["alice"]):
            client.set_registered_model_alias(model, "production", v)
        with as_user(monkeypatch, "edgeloop", passwords["edgeloop"]):
            [fresh] = poll_once(client, store, trigger, models=[model])
        assert fresh.status == "started", fresh.reason
        assert started == [(model, v)]
