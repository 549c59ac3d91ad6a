"""The fleet dashboard in a real headless browser (Debian's chromium driven by Playwright) against a
real controller under uvicorn: 20 simulated devices enrol and converge on v1, a latency-regressed v2
rolls out and is rolled back automatically; the page shows the panels, the rolled-back rollout with
its reason, and a device table whose pagination works. A screenshot is kept as a test artifact."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_simulate_controller import (  # the real-controller fixture and what it registers
    ADMIN,
    ADMIN_HEADERS,
    CLASSES,
    SCALE,
    controller,
    register,
    rollout,
    target_all,
    write_model,
)

from fleet.simulate import Simulation, make_regressed_variant

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("EDGELOOP_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
__all__ = ["controller"]


def _browser_missing() -> str:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no chromium at {CHROMIUM}: `make test` installs it (scripts/ensure-browser)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is missing: pip install -e '.[dev]'"
    return ""


@pytest.fixture
def rolled_back_fleet(controller: dict[str, Any]) -> dict[str, Any]:
    """20 devices on v1 and one rollout of a latency-regressed v2 that ended rolled back."""
    tmp: Path = controller["tmp"]
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 10))
    field_x = rng.integers(0, 17, size=(2000, 64)).astype(np.float32)
    v1 = write_model(tmp / "v1.onnx", w)
    slow = make_regressed_variant(v1, tmp / "v2-slow.onnx", "latency", layers=16, width=1024)
    with httpx.Client(base_url=controller["base"], timeout=30) as client:
        for cls in CLASSES:
            register(controller, client, "1", cls, v1)
        register(controller, client, "2", "host-cpu", v1)
        register(controller, client, "2", "edge-small", slow)
        sim = Simulation(
            controller["base"],
            ADMIN,
            devices=20,
            classes=CLASSES,
            field_x=field_x,
            field_y=(field_x @ w).argmax(axis=1),
            feedback_rate=0.5,
            latency_scale=SCALE,
            report_interval_s=0.25,
            rows_per_report=50,
            seed=3,
        )
        try:
            result = sim.run_sync(
                until=lambda: all(d.enrolled for d in sim.result.devices.values()), timeout_s=15
            )
            target_all(controller["db_url"], list(result.devices), "1")
            sim.run_sync(
                until=lambda: (
                    result.versions() == {"1": 20}
                    and all(d.reports_acked for d in result.devices.values())
                ),
                timeout_s=15,
            )  # every device heard from before the rollout starts
            assert result.versions() == {"1": 20}
            rollout_id = rollout(client, "2", "1")

            def phase() -> str:
                r = client.get(f"/v1/rollouts/{rollout_id}", headers=ADMIN_HEADERS)
                return str(r.json()["phase"])

            sim.run_sync(until=lambda: phase() in {"rolled_back", "succeeded"}, timeout_s=40)
            assert phase() == "rolled_back"
        finally:
            sim.close()
    return {**controller, "rollout_id": rollout_id}


def test_dashboard_in_a_real_browser(rolled_back_fleet: dict[str, Any], tmp_path: Path) -> None:
    missing = _browser_missing()
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    base, rollout_id = rolled_back_fleet["base"], rolled_back_fleet["rollout_id"]
    metrics = httpx.get(
        f"{base}/metrics", headers=ADMIN_HEADERS
    ).text  # the same rollback, for Prometheus
    assert "edgeloop_rollouts_rolled_back_total 1.0" in metrics
    assert 'edgeloop_rollout_outcomes_total{model="digits",outcome="rolled_back"} 1.0' in metrics
    assert 'edgeloop_rollouts{phase="rolled_back"} 1.0' in metrics
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            blocked: list[str] = []
            refused: list[str] = []  # what the page's Content-Security-Policy blocked
            page.on(
                "console",
                lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
            )
            page.on(
                "request",
                lambda r: None if r.url.startswith(base) else blocked.append(r.url),
            )
            page.goto(f"{base}/dashboard")
            assert page.url.endswith("/dashboard/login")  # not signed in: the login form
            page.fill("input[name=token]", "wrong")
            page.click("button[type=submit]")
            assert "wrong admin token" in page.inner_text("#login-message")
            page.fill("input[name=token]", ADMIN)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/dashboard")

            assert "20 devices enrolled" in page.inner_text("#device-total")
            for panel in ("#devices", "#rollouts", "#charts", "#alerts", "#playbooks"):
                assert page.locator(panel).is_visible(), panel
            article = page.locator(f"#rollout-{rollout_id}")
            assert article.is_visible()
            assert article.get_attribute("data-phase") == "rolled_back"
            text = article.inner_text()
            assert "rolled back because" in text and "p95_latency" in text
            assert "edge-small" in text and "fail" in text
            outcome = article.locator(".outcome").inner_text()
            assert "rolled back:" in outcome and "gate p95_latency failed on edge-small" in outcome
            latency = page.locator("svg[aria-label='p95 latency per version and class']")
            assert latency.is_visible()
            y_ticks = latency.locator("text.y-tick").all_text_contents()
            assert len(y_ticks) == 3 and y_ticks[0] == "0 ms" and y_ticks[-1].endswith(" ms")
            x_ticks = latency.locator("text.x-tick").all_text_contents()
            assert len(x_ticks) == 4 and all(re.match(r"^(now|-\d+ (s|min))$", t) for t in x_ticks)
            health = page.locator("svg[aria-label='by health'] rect").first
            assert health.get_attribute("fill") == "#16a34a"  # online is green
            page.screenshot(path=str(shot), full_page=True)

            page.click("a[href='/dashboard/devices']")
            page.goto(f"{base}/dashboard/devices?size=8")
            assert page.inner_text("#page-info") == "page 1 of 3 (20 devices)"
            first = page.locator("#device-table tr td:first-child").all_inner_texts()
            page.click("#next")
            assert page.inner_text("#page-info") == "page 2 of 3 (20 devices)"
            second = page.locator("#device-table tr td:first-child").all_inner_texts()
            assert len(first) == len(second) == 8 and not set(first) & set(second)
            page.click("#prev")
            assert page.inner_text("#page-info").startswith("page 1 of 3")
            assert blocked == []  # nothing fetched from anywhere but the controller
            assert refused == []
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"dashboard screenshot: {shot}")
