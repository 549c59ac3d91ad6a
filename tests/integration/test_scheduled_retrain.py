"""Scheduled retraining through real servers: `prefect deployment run 'scheduled-retrain/scheduled'` on the
worker `edgeloop serve` starts produces a version; run again with nothing changed, it records a skip
with its reason and trains nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from serve_process import Served, edgeloop_serve
from servers import stop_group, wait_until
from training_params import FAST_PARAMS

from registry.promotion_store import UNSEEN, PromotionStore

pytestmark = pytest.mark.integration

Project = Any  # tests/integration/conftest.py: Project


@pytest.fixture
def project(bare_project: Project) -> Project:
    """`edgeloop serve` starts the servers this test uses: no session server."""
    return bare_project


MODEL = "digits-classifier"


def run_deployment(project: Project, served: Served) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", "scheduled-retrain/scheduled",
         "--watch", "--watch-timeout", "600", "--watch-interval", "2"],
        cwd=project.root, env={**project.env(), "PREFECT_API_URL": f"{served.prefect}/api"},
        capture_output=True, text=True, timeout=660,
    )  # fmt: skip


def test_scheduled_run_trains_then_skips_with_the_reason(project: Project) -> None:
    project.set_params(training={"epochs": 3}, **FAST_PARAMS)
    with edgeloop_serve(project, "--allow-loopback-webhooks") as served:
        project.extra_env["MLFLOW_TRACKING_URI"] = served.mlflow
        first = run_deployment(project, served)
        worker_log = (project.home / "logs" / "worker-edgeloop-ops.log").read_text()[-4000:]
        assert first.returncode == 0, first.stdout + first.stderr + worker_log
        assert "Completed" in first.stdout, first.stdout + worker_log
        client = project.client()
        versions = client.search_model_versions(f"name = '{MODEL}'")
        assert [v.version for v in versions] == ["1"]
        tags = versions[0].tags
        assert len(tags["edgeloop.training.hash"]) == 64 and tags["edgeloop.data.hash"]
        result = client.get_registered_model(MODEL).tags["edgeloop.schedule.last_result"]
        assert "retrained: v1" in result

        second = run_deployment(project, served)
        assert second.returncode == 0 and "Completed" in second.stdout, second.stdout
        assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1  # nothing trained
        result = client.get_registered_model(MODEL).tags["edgeloop.schedule.last_result"]
        assert f"skipped: data and training code unchanged since {MODEL} v1" in result

        # A training change, so a retrain is due again, with auto-promotion on while the webhook
        # listener (`edgeloop serve`'s) and the alias poller both watch production: the promotion
        # starts one rollout run, whichever of the three sees it.
        project.set_params(training={"epochs": 2}, schedule={"auto_promote": True})
        store = PromotionStore(project.home / "promotions.db")
        with alias_poller(project, served) as poller_log:
            wait_until("the poller's first pass", lambda: store.seen(MODEL) is not UNSEEN)
            third = run_deployment(project, served)
            assert third.returncode == 0 and "Completed" in third.stdout, third.stdout
            assert len(client.search_model_versions(f"name = '{MODEL}'")) == 2
            assert str(client.get_registered_model(MODEL).aliases["production"]) == "2"
            tags = wait_until(
                "the first release of v2",
                lambda: (t := client.get_model_version(MODEL, "2").tags).get(
                    "edgeloop.rollout.reason"
                ) and t,
                timeout=180,
            )  # fmt: skip
            assert tags["edgeloop.rollout.status"] == "succeeded", tags
            time.sleep(3)  # six passes of the poller after it
            runs = served.flow_runs("rollout")
            said = poller_log.read_text()
            assert [r["parameters"]["version"] for r in runs] == ["2"], (runs, said)
            assert store.triggered() == []  # neither the listener nor the poller started one
            assert store.seen(MODEL) == "2"  # seen, and handled by the one who claimed it


@contextmanager
def alias_poller(project: Project, served: Served) -> Iterator[Path]:
    """`edgeloop listener poll` beside `edgeloop serve`'s listener, on its promotion store."""
    log_path = project.root / "poller.log"
    env = {**project.env(), "PREFECT_API_URL": f"{served.prefect}/api"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeloop.cli", "listener", "poll", "--interval", "0.5"],
            cwd=project.root, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield log_path
        assert proc.poll() is None, log_path.read_text()
    finally:
        stop_group(proc)
