"""fleet.agent.slots and fleet.agent.store: verify, load, smoke-test, swap; rollback; restore.

Every model here is a real ONNX file run by onnxruntime; every signature is a real ed25519 signature
by a throwaway key. Each test asserts the exact sequence of steps the slot manager went through.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import make_serving_model_raise, release_of
from builders import sign as sign_bytes
from builders import write_model as tiny_model_file
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet.agent.errors import (
    ArtifactRejected,
    InferenceFailed,
    InvalidInput,
    NoModelServing,
    NoPreviousModel,
    NotStored,
    RejectReason,
    StoreError,
    UnsafeName,
)
from fleet.agent.slots import (
    Candidate,
    InstallOutcome,
    InstallResult,
    Session,
    SlotManager,
    default_session_factory,
)
from fleet.agent.store import ArtifactRef, ModelStore, Slots
from fleet.agent.telemetry import TelemetryBuffer
from fleet.shared.protocol import ShadowPlan
from fleet.shared.signature import file_sha256

FEATURES, CLASSES = 64, 10
MODEL, VARIANT = "digits", "int8"

Event = tuple[str, ...]


# --- builders ------------------------------------------------------------------------------------


def write_model(path: Path, *, seed: int = 0, outputs: int = CLASSES, nan: bool = False) -> Path:
    """features [N, 64] -> MatMul -> Softmax -> probabilities [N, outputs]; NaN weights if asked."""
    weights = np.random.default_rng(seed).standard_normal((FEATURES, outputs)).astype(np.float32)
    if nan:
        weights[:] = np.nan
    return tiny_model_file(path, weights, softmax=True)


def sign(key: Ed25519PrivateKey, variant: str, path: Path, version: str) -> str:
    return sign_bytes(key, variant, path.read_bytes(), model=MODEL, version=version)


def new_candidate(
    downloads: Path,
    key: Ed25519PrivateKey,
    version: str,
    *,
    variant: str = VARIANT,
    signed_as: str | None = None,
    content: bytes | None = None,
    seed: int | None = None,
    outputs: int = CLASSES,
    nan: bool = False,
) -> Candidate:
    """A download for ``version`` (weights seeded by its number), signed by ``key`` under
    ``signed_as`` (default: its own variant name); ``content`` replaces the model bytes."""
    path = downloads / f"{version}-{variant}.onnx"
    if content is None:
        seed = int(version.lstrip("v")) if seed is None else seed
        write_model(path, seed=seed, outputs=outputs, nan=nan)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return Candidate(
        model=MODEL,
        version=version,
        variant=variant,
        path=path,
        sha256=file_sha256(path),
        signature=sign(key, signed_as or variant, path, version),
        release=release_of(version),
    )


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


GOLDEN = np.random.default_rng(42).standard_normal((8, FEATURES)).astype(np.float32)


def new_manager(
    state: Path, key: Ed25519PrivateKey, log: list[Event], *, keep: int = 3
) -> SlotManager:
    return SlotManager(ModelStore(state, keep=keep), pem(key), GOLDEN, CLASSES, events=log.append)


def ref(version: str) -> ArtifactRef:
    return ArtifactRef(MODEL, version, VARIANT)


def installed(version: str) -> list[Event]:
    return [("verify", version), ("load", version), ("smoke", version), ("swap", version)]


@pytest.fixture()
def on_v1(tmp_path: Path, key: Ed25519PrivateKey) -> tuple[SlotManager, list[Event]]:
    """A manager serving v1, with an empty event log."""
    log: list[Event] = []
    manager = new_manager(tmp_path / "state", key, log)
    assert manager.install(new_candidate(tmp_path / "dl", key, "v1")).ok
    log.clear()
    return manager, log


def assert_rejected_and_still_on_v1(
    manager: SlotManager, result: InstallResult, reason: RejectReason
) -> None:
    assert result.outcome is InstallOutcome.REJECTED
    assert result.rejection is not None and result.rejection.reason is reason
    assert result.active == ref("v1")
    with pytest.raises(ArtifactRejected) as raised:
        result.raise_for_rejection()
    assert raised.value.version == "v2" and raised.value.reason is reason
    assert manager.active == ref("v1")
    assert manager.predict(GOLDEN[:1]).ref == ref("v1")
    assert manager.store.versions(MODEL) == ["v1"]  # the rejected bytes are not kept
    assert manager.store.read_slots() == Slots(ref("v1"), None)


# --- install -------------------------------------------------------------------------------------


def test_install_verifies_loads_smokes_then_swaps(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log: list[Event] = []
    manager = new_manager(tmp_path / "state", key, log)
    with pytest.raises(NoModelServing):
        manager.predict(GOLDEN[:1])

    first = manager.install(new_candidate(tmp_path / "dl", key, "v1"))
    second = manager.install(new_candidate(tmp_path / "dl", key, "v2"))

    assert log == installed("v1") + installed("v2")
    assert (first.outcome, second.outcome) == (InstallOutcome.INSTALLED, InstallOutcome.INSTALLED)
    assert second.rejection is None and second.ok
    assert (manager.active, manager.previous) == (ref("v2"), ref("v1"))
    prediction = manager.predict(GOLDEN[:3])
    assert prediction.ref == ref("v2")
    assert prediction.probabilities.shape == (3, CLASSES)
    assert len(set(prediction.ids)) == 3
    # On disk: both versions with manifests, and the slots a restart will restore.
    state = tmp_path / "state"
    assert manager.store.versions(MODEL) == ["v1", "v2"]
    manifest = json.loads((state / "models" / MODEL / "v2" / f"{VARIANT}.json").read_text())
    assert manifest["sha256"] == file_sha256(state / "models" / MODEL / "v2" / f"{VARIANT}.onnx")
    assert json.loads((state / "slots.json").read_text())["active"]["version"] == "v2"
    assert not list(state.rglob("*.tmp"))


def test_same_model_again_changes_nothing(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, log = on_v1
    result = manager.install(new_candidate(tmp_path / "dl", key, "v1"))
    assert result.outcome is InstallOutcome.ALREADY_ACTIVE
    assert log == []


def test_tampered_bytes_are_rejected(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, log = on_v1
    candidate = new_candidate(tmp_path / "dl", key, "v2")
    data = bytearray(candidate.path.read_bytes())
    data[-1] ^= 0x01
    candidate.path.write_bytes(bytes(data))

    result = manager.install(candidate)

    assert log == [("verify", "v2"), ("reject", "v2", "sha256 mismatch")]
    assert_rejected_and_still_on_v1(manager, result, RejectReason.SHA256)


def test_truncated_download_is_rejected(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, log = on_v1
    candidate = new_candidate(tmp_path / "dl", key, "v2")
    candidate.path.write_bytes(candidate.path.read_bytes()[:100])
    result = manager.install(candidate)
    assert log == [("verify", "v2"), ("reject", "v2", "sha256 mismatch")]
    assert_rejected_and_still_on_v1(manager, result, RejectReason.SHA256)


def test_missing_download_is_rejected(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, log = on_v1
    candidate = new_candidate(tmp_path / "dl", key, "v2")
    candidate.path.unlink()
    result = manager.install(candidate)
    assert log == [("verify", "v2"), ("reject", "v2", "sha256 mismatch")]
    assert result.rejection is not None and "cannot read" in result.rejection.detail
    assert_rejected_and_still_on_v1(manager, result, RejectReason.SHA256)


def test_signature_by_another_key_is_rejected(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, log = on_v1
    result = manager.install(new_candidate(tmp_path / "dl", Ed25519PrivateKey.generate(), "v2"))
    assert log == [("verify", "v2"), ("reject", "v2", "invalid signature")]
    assert_rejected_and_still_on_v1(manager, result, RejectReason.SIGNATURE)


def test_garbage_signature_is_rejected(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, log = on_v1
    candidate = new_candidate(tmp_path / "dl", key, "v2")
    result = manager.install(dataclasses.replace(candidate, signature="!!not base64!!"))
    assert log == [("verify", "v2"), ("reject", "v2", "invalid signature")]
    assert_rejected_and_still_on_v1(manager, result, RejectReason.SIGNATURE)


def test_signature_for_another_variant_is_rejected(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, log = on_v1
    result = manager.install(new_candidate(tmp_path / "dl", key, "v2", signed_as="fp32"))
    assert log == [("verify", "v2"), ("reject", "v2", "invalid signature")]
    assert_rejected_and_still_on_v1(manager, result, RejectReason.SIGNATURE)


@pytest.mark.parametrize(
    ("signed", "detail"),
    [
        ({"model": "other-model"}, "a file signed for another model"),
        ({"version": "v7"}, "a file signed as another version"),
        ({"release": 9}, "a file signed under another release counter"),
    ],
)
def test_a_signature_binds_model_version_and_release(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    on_v1: tuple[SlotManager, list[Event]],
    signed: dict[str, Any],
    detail: str,
) -> None:
    """A valid signature of these very bytes, made for another model, version or release, is
    refused: a signed file cannot be served as something it was not released as."""
    manager, log = on_v1
    candidate = new_candidate(tmp_path / "dl", key, "v2")
    claim = {"model": MODEL, "version": "v2", **signed}
    forged = sign_bytes(key, VARIANT, candidate.path.read_bytes(), **claim)
    result = manager.install(dataclasses.replace(candidate, signature=forged))
    assert log == [("verify", "v2"), ("reject", "v2", "invalid signature")], detail
    assert_rejected_and_still_on_v1(manager, result, RejectReason.SIGNATURE)
    assert result.rejection is not None and "digits version v2 variant int8 (release 2)" in str(
        result.rejection.message
    )


def test_signed_garbage_fails_to_load(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, log = on_v1
    result = manager.install(
        new_candidate(tmp_path / "dl", key, "v2", content=b"not a model at all" * 50)
    )
    assert log == [("verify", "v2"), ("load", "v2"), ("reject", "v2", "load failed")]
    assert_rejected_and_still_on_v1(manager, result, RejectReason.LOAD)


def test_nan_model_fails_the_smoke_test(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, log = on_v1
    result = manager.install(new_candidate(tmp_path / "dl", key, "v2", nan=True))
    assert log == [
        ("verify", "v2"),
        ("load", "v2"),
        ("smoke", "v2"),
        ("reject", "v2", "smoke test failed"),
    ]
    assert result.rejection is not None and "NaN" in result.rejection.detail
    assert_rejected_and_still_on_v1(manager, result, RejectReason.SMOKE)


def test_wrong_output_shape_fails_the_smoke_test(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, log = on_v1
    result = manager.install(new_candidate(tmp_path / "dl", key, "v2", outputs=3))
    assert log[-1] == ("reject", "v2", "smoke test failed")
    assert result.rejection is not None
    assert "has 3 classes, this device expects 10" in result.rejection.detail
    assert_rejected_and_still_on_v1(manager, result, RejectReason.SMOKE)


def test_other_bytes_under_a_served_version_are_rejected(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    """A version is immutable: validly signed different bytes never overwrite the one serving."""
    manager, log = on_v1
    other = new_candidate(tmp_path / "other", key, "v1", seed=99)
    result = manager.install(other)
    assert log == [("verify", "v1"), ("reject", "v1", "sha256 mismatch")]
    assert result.outcome is InstallOutcome.REJECTED
    assert manager.predict(GOLDEN[:1]).ref == ref("v1")


def test_smoke_inputs_synthesised_without_golden_rows(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    log: list[Event] = []
    manager = SlotManager(
        ModelStore(tmp_path / "state"), pem(key), None, CLASSES, events=log.append
    )
    assert manager.install(new_candidate(tmp_path / "dl", key, "v1")).ok
    assert log == installed("v1")


def test_constructor_refuses_bad_settings(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(ValueError, match="golden_inputs"):
        SlotManager(store, pem(key), np.zeros(3, dtype=np.float32), CLASSES)
    with pytest.raises(ValueError, match="expected_outputs"):
        SlotManager(store, pem(key), GOLDEN, 0)


# --- rollback, activate, pruning -----------------------------------------------------------------


def test_rollback_local_swaps_back_and_forth(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, log = on_v1
    with pytest.raises(NoPreviousModel):
        manager.rollback_local()
    manager.install(new_candidate(tmp_path / "dl", key, "v2"))

    assert manager.rollback_local() == ref("v1")
    assert (manager.active, manager.previous) == (ref("v1"), ref("v2"))
    assert manager.predict(GOLDEN[:1]).ref == ref("v1")
    assert manager.store.read_slots() == Slots(ref("v1"), ref("v2"))

    assert manager.rollback_local() == ref("v2")
    assert log == [*installed("v2"), ("rollback", "v1"), ("rollback", "v2")]


def test_rollback_does_not_wait_for_an_install_in_progress(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    loading, release = threading.Event(), threading.Event()

    def slow_to_load_v3(path: Path) -> Session:
        if path.parent.name == "v3":
            loading.set()
            assert release.wait(10)
        return default_session_factory(path)

    log: list[Event] = []
    manager = SlotManager(
        ModelStore(tmp_path / "state"),
        pem(key),
        GOLDEN,
        CLASSES,
        session_factory=slow_to_load_v3,
        events=log.append,
    )
    for version in ("v1", "v2"):
        manager.install(new_candidate(tmp_path / "dl", key, version))
    log.clear()
    results: list[InstallResult] = []
    v3 = new_candidate(tmp_path / "dl", key, "v3")
    installer = threading.Thread(target=lambda: results.append(manager.install(v3)))
    installer.start()
    try:
        assert loading.wait(10)
        assert manager.rollback_local() == ref("v1")  # while v3 is still loading
        assert manager.predict(GOLDEN[:1]).ref == ref("v1")
    finally:
        release.set()
        installer.join(10)

    assert [r.outcome for r in results] == [InstallOutcome.INSTALLED]
    assert log == [
        ("verify", "v3"),
        ("load", "v3"),
        ("rollback", "v1"),
        ("smoke", "v3"),
        ("swap", "v3"),
    ]
    assert (manager.active, manager.previous) == (ref("v3"), ref("v1"))
    assert manager.store.read_slots() == Slots(ref("v3"), ref("v1"))


def test_installing_the_previous_model_swaps_it_back_at_once(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, log = on_v1
    v1 = new_candidate(tmp_path / "dl", key, "v1")
    manager.install(new_candidate(tmp_path / "dl", key, "v2"))
    refused = manager.install(v1)  # release 1 under release 2: only as the controller's rollback
    assert refused.outcome is InstallOutcome.REJECTED and refused.rejection is not None
    assert refused.rejection.reason is RejectReason.RELEASE
    assert "release 1 is older than release 2" in refused.rejection.message
    assert manager.active == ref("v2")
    log.clear()
    result = manager.install(v1, allow_older=True)
    assert result.outcome is InstallOutcome.REUSED_PREVIOUS
    assert log == [("rollback", "v1")]
    assert manager.active == ref("v1")


def test_activate_from_disk_verifies_again(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, log = on_v1
    for version in ("v2", "v3"):
        manager.install(new_candidate(tmp_path / "dl", key, version))
    log.clear()
    assert manager.store.versions(MODEL) == ["v1", "v2", "v3"]  # v1 is on disk, in no slot

    assert manager.activate(ref("v2"), allow_older=True).outcome is InstallOutcome.REUSED_PREVIOUS
    result = manager.activate(ref("v1"), allow_older=True)

    assert result.outcome is InstallOutcome.INSTALLED
    assert log == [("rollback", "v2"), *installed("v1")]
    assert (manager.active, manager.previous) == (ref("v1"), ref("v2"))
    with pytest.raises(NotStored):
        manager.activate(ref("v9"))


def test_prune_keeps_the_slots_and_the_newest(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log: list[Event] = []
    manager = new_manager(tmp_path / "state", key, log, keep=3)
    for version in ("v1", "v2", "v3", "v4", "v5"):
        manager.install(new_candidate(tmp_path / "dl", key, version))
    assert manager.store.versions(MODEL) == ["v3", "v4", "v5"]
    manager.rollback_local()  # v4 active, v5 previous
    manager.install(new_candidate(tmp_path / "dl", key, "v6"))  # v6 active, v4 previous
    assert (manager.active, manager.previous) == (ref("v6"), ref("v4"))
    assert manager.store.versions(MODEL) == ["v4", "v5", "v6"]
    with pytest.raises(StoreError, match="fills a slot"):
        manager.store.remove(ref("v4"))


def test_store_leaves_no_debris_and_refuses_unsafe_names(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "state")
    source = tmp_path / "download.onnx"
    source.write_bytes(b"bytes")
    staged = store.stage(ref("v1"), source)
    assert (
        staged.path.name.endswith(".tmp")
        and staged.path.parent == store.model_path(ref("v1")).parent
    )
    store.discard(staged)
    assert not list((tmp_path / "state" / "models").rglob("*"))
    # A crash between the model file and its manifest leaves debris that counts as absent.
    stored = store.commit(store.stage(ref("v2"), source), signature="sig", release=2)
    stored.path.with_suffix(".json").unlink()
    assert not store.has(ref("v2"))
    store.prune()
    assert not list((tmp_path / "state" / "models").rglob("*"))
    for bad in ("../etc", "", ".hidden", "a/b", "x" * 200):
        with pytest.raises(UnsafeName):
            ArtifactRef(MODEL, bad, VARIANT)
    with pytest.raises(UnsafeName) as raised:
        _ = Candidate(MODEL, "v1", "../../x", source, "0" * 64, "", 1).ref
    assert raised.value.field == "variant"


# --- restart -------------------------------------------------------------------------------------


def test_restore_after_restart_serves_the_same_version(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    state = tmp_path / "state"
    first = new_manager(state, key, [])
    for version in ("v1", "v2"):
        first.install(new_candidate(tmp_path / "dl", key, version))
    first.rollback_local()  # v1 serves, v2 previous: the restart must not "upgrade" it

    log: list[Event] = []
    restarted = new_manager(state, key, log)
    assert restarted.restore() == ref("v1")

    assert log == [
        *installed("v1")[:3],
        *installed("v2")[:3],
        ("restore", "v1"),
    ]
    assert restarted.predict(GOLDEN[:1]).ref == ref("v1")
    assert restarted.previous == ref("v2")
    assert restarted.rollback_local() == ref("v2")


@pytest.mark.parametrize("damaged", ["model", "manifest", "missing"])
def test_restore_falls_back_when_the_active_model_was_damaged(
    tmp_path: Path, key: Ed25519PrivateKey, damaged: str
) -> None:
    state = tmp_path / "state"
    first = new_manager(state, key, [])
    for version in ("v1", "v2"):
        first.install(new_candidate(tmp_path / "dl", key, version))
    model = first.store.model_path(ref("v2"))
    if damaged == "model":
        model.write_bytes(model.read_bytes()[:-10])
    elif damaged == "manifest":
        model.with_suffix(".json").write_text("{not json")
    else:
        model.unlink()

    log: list[Event] = []
    restarted = new_manager(state, key, log)
    assert restarted.restore() == ref("v1")
    assert log == [
        ("verify", "v2"),
        ("reject", "v2", "sha256 mismatch"),
        *installed("v1")[:3],
        ("restore", "v1"),
    ]
    assert restarted.previous is None
    assert restarted.store.read_slots() == Slots(ref("v1"), None)


def test_restore_with_nothing_on_disk(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    log: list[Event] = []
    assert new_manager(tmp_path, key, log).restore() is None
    assert log == []


# --- serving and its telemetry -------------------------------------------------------------------


def test_concurrent_predict_during_swaps_never_fails(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, _ = on_v1
    manager.install(new_candidate(tmp_path / "dl", key, "v2"))
    stop = threading.Event()
    failures: list[BaseException] = []
    seen: set[str] = set()
    served = [0] * 4
    started = threading.Barrier(5)  # swaps begin once every reader has served once

    def reader(index: int) -> None:
        row = GOLDEN[index : index + 1]
        try:
            served[index] += manager.predict(row).probabilities.shape[0]
            started.wait(timeout=10)
            while not stop.is_set():
                prediction = manager.predict(row)
                assert prediction.probabilities.shape == (1, CLASSES)
                assert abs(float(prediction.probabilities.sum()) - 1) < 1e-3
                seen.add(prediction.ref.version)
                served[index] += 1
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        started.wait(timeout=10)
        for _ in range(30):
            manager.rollback_local()
        manager.install(new_candidate(tmp_path / "dl", key, "v3"))
        for _ in range(30):
            manager.rollback_local()
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert failures == []
    assert seen and seen <= {"v1", "v2", "v3"}
    # Every call served is counted, each under the version that served it.
    reports = manager.flush_telemetry()
    assert sum(r["inferences"] for r in reports) == sum(served)
    assert sum(r["running"] for r in reports) == 1


def test_telemetry_credits_each_version_and_labels_follow_their_prediction(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    on_v1: tuple[SlotManager, list[Event]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager, _ = on_v1
    before = manager.predict(GOLDEN[:2])
    with pytest.raises(InvalidInput, match=r"rows of shape \[1, 5\].*64 values per sample"):
        manager.predict(np.zeros((1, 5), dtype=np.float32))  # refused: not counted as an error
    with monkeypatch.context() as patched:
        make_serving_model_raise(manager, patched)
        with pytest.raises(InferenceFailed) as failed:
            manager.predict(GOLDEN[:1])
    assert failed.value.version == "v1" and failed.value.__cause__ is not None
    manager.install(new_candidate(tmp_path / "dl", key, "v2"))
    after = manager.predict(GOLDEN[:1])
    # A label for v1's prediction arrives after the swap.
    assert manager.record_label(before.ids[0], label=3)
    assert not manager.record_label("no-such-id", label=3)

    reports = manager.flush_telemetry()

    by_version = {r["version"]: r for r in reports}
    assert [r["version"] for r in reports] == ["v2", "v1"]  # the running one first
    v1, v2 = by_version["v1"], by_version["v2"]
    assert (v2["running"], v1["running"]) == (True, False)
    assert (v1["inferences"], v1["errors"], v1["rows"]) == (2, 1, 2)
    assert (v2["inferences"], v2["errors"]) == (1, 0)
    assert v1["feedback"] == [
        {
            "prediction_id": before.ids[0],
            "predicted": int(before.probabilities[0].argmax()),
            "label": 3,
        }
    ]
    assert v2["feedback"] == []
    assert v2["awaiting_labels"] == 2 + 1 - 1  # two from v1, one from v2, one resolved
    assert v2["labels_unmatched"] == 1
    assert sum(v2["latency_ms"]["counts"]) == 1
    assert v2["input_stats"]["count"] == 1 and len(v2["input_stats"]["mean"]) == FEATURES
    assert after.ref == ref("v2")
    # The reports are what the outbox stores, as they are.
    with TelemetryBuffer(tmp_path / "outbox.db", durable=False) as outbox:
        assert [outbox.append(r) for r in reports] == [1, 2]
        assert [r["version"] for r in outbox.pending()] == ["v2", "v1"]
    # The next flush: only the running version, empty.
    (again,) = manager.flush_telemetry()
    assert (again["version"], again["inferences"], again["running"]) == ("v2", 0, True)


# --- shadow comparison ---------------------------------------------------------------------------


def shadow_report(manager: SlotManager, version: str) -> dict[str, object]:
    """The shadow counts in the report of ``version``, waiting for the shadow thread to finish."""
    deadline = time.monotonic() + 10
    while manager._shadow_jobs.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.01)
    (report,) = [r for r in manager.flush_telemetry() if r["version"] == version]
    shadow = report["shadow"]
    assert isinstance(shadow, dict)
    return shadow


def test_the_previous_model_runs_in_shadow_and_agreement_goes_to_the_canary(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, _ = on_v1
    manager.install(new_candidate(tmp_path / "dl", key, "v2"))  # other weights: some disagree
    manager.plan_shadow(ShadowPlan(version="v1", rate=1.0, cpu_budget=1.0))
    x = np.random.default_rng(1).standard_normal((200, FEATURES)).astype(np.float32)
    served = [manager.predict(x[i : i + 20]) for i in range(0, 200, 20)]
    shadow = shadow_report(manager, "v2")
    v1 = x @ np.random.default_rng(1).standard_normal((FEATURES, CLASSES)).astype(np.float32)
    expected = int(
        (np.concatenate([p.probabilities for p in served]).argmax(1) != v1.argmax(1)).sum()
    )
    assert shadow["against"] == "v1"
    assert shadow["compared"] + shadow["skipped"] == 200 and shadow["failed"] == 0
    if shadow["skipped"] == 0:
        assert shadow["disagreed"] == expected
    assert 0 < shadow["disagreed"] < shadow["compared"]
    manager.plan_shadow(None)
    manager.predict(x[:5])
    (report,) = [r for r in manager.flush_telemetry() if r["version"] == "v2"]
    assert "shadow" not in report


def test_shadow_failures_and_spent_budgets_are_counted_and_serving_goes_on(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    on_v1: tuple[SlotManager, list[Event]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manager, _ = on_v1
    manager.install(new_candidate(tmp_path / "dl", key, "v2"))
    previous = manager._previous
    assert previous is not None

    def fail(*_: object, **__: object) -> object:
        raise RuntimeError("simulated shadow failure")

    monkeypatch.setattr(previous.session, "run", fail)
    manager.plan_shadow(ShadowPlan(version="v1", rate=1.0, cpu_budget=1.0))
    assert manager.predict(GOLDEN).probabilities.shape == (8, CLASSES)
    shadow = shadow_report(manager, "v2")
    assert (shadow["compared"], shadow["failed"]) == (0, 8)

    manager.plan_shadow(ShadowPlan(version="v1", rate=1.0, cpu_budget=0.01))
    budget = manager._shadow_budget
    assert budget is not None
    budget.spent(1e6)  # as if the shadow model had been very slow
    manager.predict(GOLDEN)
    shadow = shadow_report(manager, "v2")
    assert (shadow["compared"], shadow["failed"], shadow["skipped"]) == (0, 0, 8)


def test_no_shadow_when_the_previous_slot_holds_another_version(
    tmp_path: Path, key: Ed25519PrivateKey, on_v1: tuple[SlotManager, list[Event]]
) -> None:
    manager, _ = on_v1
    manager.install(new_candidate(tmp_path / "dl", key, "v2"))
    manager.plan_shadow(ShadowPlan(version="v7", rate=1.0, cpu_budget=1.0))
    manager.predict(GOLDEN)
    (report,) = [r for r in manager.flush_telemetry() if r["version"] == "v2"]
    assert "shadow" not in report
