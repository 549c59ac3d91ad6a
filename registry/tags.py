"""Every ``edgeloop.*`` MLflow tag key, in one place: constants for fixed keys, functions for templated ones.

The keys are a contract: people filter runs and versions by them in the MLflow UI, and the registry, the
flows and the ``edgeloop`` command read what the others wrote. Import the module
(``from registry import tags as tag``) and write ``tag.VARIANT`` or ``tag.hw_status(profile)`` instead
of typing a key out; ``tests/unit/test_tags.py`` fails on an ``"edgeloop.`` literal anywhere else in
``edgeloop/``, ``flows/`` or ``registry/``.

Where each key lives:

- on a training run and the version it registers: ``SOURCE``, ``GIT_COMMIT``, ``GIT_DIRTY``,
  ``DATA_HASH``, ``PARAMS_HASH``, ``DATASET``, ``RUN_KEY``, ``DATA_CHECK``, ``PLACEMENT_*``
- on a registered version: ``VARIANT``, ``GATES``, :func:`gate`, :func:`variant_sha256`,
  :func:`variant_signature`, :func:`hw_status` and the other ``hw_*``, ``MODEL_CARD``,
  ``TRAINING_HASH``, ``PROMOTE_FORCE``, ``PROMOTE_REFUSED``, ``PROMOTE_ROLLOUT``, ``ROLLOUT_STATUS``, ``ROLLOUT_REASON``
- on a hardware-validation run: ``MODEL``, ``MODEL_VERSION``, ``PROFILE``, ``VARIANT``, ``HW_STATUS``
- on a registered model: ``SCHEDULE_LAST_RESULT``
"""

from __future__ import annotations

PREFIX = "edgeloop."
"""Every key starts with this."""

# --- provenance of a training run (copied to the version it registers) ----------------------------

SOURCE = "edgeloop.source"
"""What started the run: ``cli``, ``scheduled``, ``placement``, ..."""
GIT_COMMIT = "edgeloop.git_commit"
GIT_DIRTY = "edgeloop.git_dirty"
"""``true`` when the working tree had uncommitted changes."""
DATA_HASH = "edgeloop.data.hash"
"""The DVC-style hash of the splits directory (:mod:`registry.lineage`)."""
PARAMS_HASH = "edgeloop.params_hash"
DATASET = "edgeloop.dataset"
RUN_KEY = "edgeloop.run_key"
"""Makes registration idempotent: one version per key (:mod:`registry.run_key`)."""
DATA_CHECK = "edgeloop.data_check"
"""``failed`` when the data checks stopped the run."""
TRIGGER_ALERT = "edgeloop.trigger.alert"
"""The fleet alert whose playbook started the retrain that made the version: JSON ``{"id", "kind",
"scope", "reason"}`` (:mod:`flows.fleet_trigger`)."""
FIELD_DATA_VERSION = "edgeloop.field_data.version"
"""The version of the pulled field data the version trained on (a digest of the DVC pointers)."""
FIELD_DATA_PULLED = "edgeloop.field_data.pulled"
"""What the retrain's pull brought: labelled samples, the file, the unlabelled ones left out."""
PROMOTE_WAITING = "edgeloop.promote.waiting"
"""A retrain paused for a person's answer about the version (``schedule.approval``,
:mod:`flows.approval`): JSON ``{"flow_run_id", "since"}``; removed once answered or timed out."""
CHAMPION = "edgeloop.champion"
"""A retrained candidate against production (``auto_promote: if_better``, :mod:`flows.champion`):
JSON of the production version, the metric and each measure's two numbers."""
TRAINING_HASH = "edgeloop.training.hash"
"""The fingerprint of the training code and the params that shape a model (:mod:`flows.scheduled`)."""

PLACEMENT_POOL = "edgeloop.placement.pool"
PLACEMENT_STATUS = "edgeloop.placement.status"
PLACEMENT_REASON = "edgeloop.placement.reason"
PLACEMENT_ATTEMPTS = "edgeloop.placement.attempts"

# --- a registered version --------------------------------------------------------------------------

VARIANT = "edgeloop.variant"
"""The variant chosen for the version (and, on a validation run, the variant validated)."""
GATES = "edgeloop.gates"
"""``passed`` when every gate passed, else ``failed``."""
MODEL_CARD = "edgeloop.model_card"
"""Path of the version's model card."""
PROMOTE_FORCE = "edgeloop.promote.force"
"""``true`` promotes a version that did not pass everything (recorded on its card)."""
PROMOTE_REFUSED = "edgeloop.promote.refused"
"""Why ``production`` was moved back off the version."""
# Who set ``production`` on the version, and who set the force tag: JSON ``{"user", "at"}``, written
# by the MLflow server's promotion authority (``registry.mlflow_app``) alone, never by a client.
PROMOTED_BY = "edgeloop.promote.by"
FORCED_BY = "edgeloop.promote.force.by"
PROMOTE_ROLLOUT = "edgeloop.promote.rollout"
"""Written by a promoter that starts the rollout itself (`edgeloop promote`, auto-promotion) just
before it moves ``production``: JSON ``{"user", "at"}`` naming it. The listener and the poller start
nothing for a fresh one (``registry.promotion_guard``): one promotion, one rollout. With promoters
configured, only a promoter may set it (``registry.mlflow_app``)."""
ROLLOUT_STATUS = "edgeloop.rollout.status"
"""How the version's last rollout ended: succeeded, rolled_back, failed or aborted."""
ROLLOUT_REASON = "edgeloop.rollout.reason"

_GATE = "edgeloop.gate."
_VARIANT = "edgeloop.variant."
_HW = "edgeloop.hw."
_SIGNATURE = ".signature"
_STATUS = ".status"


def gate(name: str) -> str:
    """``edgeloop.gate.<name>``: ``passed`` or ``failed``."""
    return f"{_GATE}{name}"


def variant_sha256(variant: str) -> str:
    """``edgeloop.variant.<variant>.sha256``: the hex sha256 of the variant's ONNX file."""
    return f"{_VARIANT}{variant}.sha256"


def variant_signature(variant: str) -> str:
    """``edgeloop.variant.<variant>.signature``: the registry's base64 signature of the variant."""
    return f"{_VARIANT}{variant}{_SIGNATURE}"


def signed_variant(key: str) -> str | None:
    """The variant a :func:`variant_signature` key names; None for any other key."""
    if key.startswith(_VARIANT) and key.endswith(_SIGNATURE):
        return key.removeprefix(_VARIANT).removesuffix(_SIGNATURE)
    return None


def hw(profile: str, field: str) -> str:
    """``edgeloop.hw.<profile>.<field>``: a hardware result, e.g. a metric (``p95_ms``, ``accuracy``)."""
    return f"{_HW}{profile}.{field}"


def hw_status(profile: str) -> str:
    """``edgeloop.hw.<profile>.status``: ``passed``, ``failed``, ... on ``profile``."""
    return hw(profile, "status")


def hw_variant(profile: str) -> str:
    """``edgeloop.hw.<profile>.variant``: the variant validation chose for ``profile``."""
    return hw(profile, "variant")


def hw_reason(profile: str) -> str:
    """``edgeloop.hw.<profile>.reason``: why ``profile`` did not pass."""
    return hw(profile, "reason")


def hw_status_profile(key: str) -> str | None:
    """The profile a :func:`hw_status` key names; None for any other key."""
    if key.startswith(_HW) and key.endswith(_STATUS):
        return key.removeprefix(_HW).removesuffix(_STATUS)
    return None


# --- a hardware-validation run of a registered version ---------------------------------------------

MODEL = "edgeloop.model"
MODEL_VERSION = "edgeloop.model_version"
PROFILE = "edgeloop.profile"
HW_STATUS = "edgeloop.hw.status"
"""The run's result on its one profile (the version gets :func:`hw_status` of the profile)."""

# --- a registered model ----------------------------------------------------------------------------

SCHEDULE_LAST_RESULT = "edgeloop.schedule.last_result"
"""What the last scheduled retrain did, or why it skipped."""
