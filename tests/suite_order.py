"""The order `make test` hands test files to its pytest-xdist workers.

A file runs on one worker, so the run lasts at least as long as its longest file: the files that
take a minute or more start first, longest first (as `--durations` and the per-file sums of a
4-worker run showed), and the short ones fill in around them. Every other file keeps its place.
A name here that no longer exists fails tests/unit/test_suite_order.py.
"""

from __future__ import annotations

from pathlib import Path

LONGEST_FIRST = (
    "integration/test_many_hosts.py",
    "integration/test_serve_promotion.py",
    "integration/test_closed_loop.py",
    "integration/test_run.py",
    "integration/test_placement_failover.py",
    "integration/test_first_hour.py",
    "integration/test_clean_tree.py",
    "integration/test_promote_rollout.py",
    "integration/test_runner_pool.py",
    "integration/test_scheduled_retrain.py",
    "integration/test_examples.py",
    "integration/test_user_models.py",
    "integration/test_bad_input.py",
    "integration/test_dvc.py",
    "integration/test_production_profile.py",
    "integration/test_serve.py",
    "integration/test_registry_follower.py",
    "integration/test_webhook_promotion.py",
    "integration/test_approval.py",
    "integration/test_field_data.py",
    "integration/test_drift_playbook.py",
    "integration/test_forged_reports.py",
    "integration/test_controller_faults.py",
    "integration/test_simulate_controller.py",
    "flows/test_hardware.py",
    "integration/test_simulate_faults.py",
    "integration/test_real_agents.py",
)
TESTS = Path(__file__).resolve().parent


def rank(path: Path) -> int:
    """Where the file at ``path`` starts: its place in LONGEST_FIRST, else after all of them."""
    try:
        return LONGEST_FIRST.index(path.resolve().relative_to(TESTS).as_posix())
    except ValueError:
        return len(LONGEST_FIRST)
