"""The agent's ``POST /predict`` on a model with a contract: an image classifier (``input``
[N, 1, 8, 8], logits out) and a model with two inputs, served by a real agent's predict server.
Requests are read by the contract (flat rows, named inputs, one ``.npy`` tensor); one that does not
fit gets 400 naming the input with the expected and received shape, and the device keeps serving."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from builders import image_classifier, regressor, sign, two_inputs, with_contract
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import ModelProto
from test_agent_loop import DEVICE, MODEL, VARIANT, key, new_device, pem

from fleet.agent.agent import MAX_PREDICT_BODY, NPY, PredictServer
from fleet.agent.fake_controller import FakeController
from fleet.shared.modelspec import InputSpec, ModelSpec, OutputKind, OutputSpec, Task

__all__ = ["key"]

CLASSES = tuple(f"digit-{i}" for i in range(10))
IMAGE = ModelSpec(
    task=Task.CLASSIFICATION,
    inputs=(InputSpec(name="input", shape=(1, 8, 8), layout="NCHW", value_range=(0, 16)),),
    outputs=(OutputSpec(name="logits", kind=OutputKind.LOGITS, width=10),),
    class_names=CLASSES,
)
TWO = ModelSpec(
    task=Task.CLASSIFICATION,
    inputs=(InputSpec(name="a", shape=(4,)), InputSpec(name="b", shape=(60,))),
    outputs=(OutputSpec(name="probabilities", kind=OutputKind.PROBABILITIES, width=10),),
    class_names=CLASSES,
)


def serving(tmp_path: Path, key: Ed25519PrivateKey, model: ModelProto) -> Iterator[str]:
    fake = FakeController(public_key_pem=pem(key))
    device = new_device(tmp_path / "state", key, fake)
    device.agent.run_once()
    data = model.SerializeToString()
    artifact = fake.publish(
        MODEL,
        "v1",
        VARIANT,
        data,
        sha256=hashlib.sha256(data).hexdigest(),
        signature=sign(key, VARIANT, data, model=MODEL, version="v1"),
    )
    fake.target(DEVICE, artifact)
    assert device.agent.run_once() == 0 and device.agent.slots.active is not None
    server = PredictServer(device.agent.slots).start()
    try:
        host, port = server.address
        yield f"http://{host}:{port}/predict"
    finally:
        server.stop()


@pytest.fixture
def image_url(tmp_path: Path, key: Ed25519PrivateKey) -> Iterator[str]:
    yield from serving(tmp_path, key, with_contract(image_classifier(), IMAGE))


@pytest.fixture
def two_url(tmp_path: Path, key: Ed25519PrivateKey) -> Iterator[str]:
    yield from serving(tmp_path, key, with_contract(two_inputs(), TWO))


def post(url: str, data: bytes, content_type: str = "application/json") -> tuple[int, Any]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def post_json(url: str, body: Any) -> tuple[int, Any]:
    return post(url, json.dumps(body).encode())


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


IMAGES = np.random.default_rng(0).integers(0, 17, size=(3, 1, 8, 8)).astype(np.float32)


def test_named_flat_and_tensor_bodies_answer_alike(image_url: str) -> None:
    status, named = post_json(image_url, {"inputs": {"input": IMAGES.tolist()}})
    assert status == 200, named
    assert len(named["predicted"]) == 3
    assert named["classes"] == [CLASSES[i] for i in named["predicted"]]
    assert np.allclose(np.sum(named["probabilities"], axis=1), 1, atol=1e-5)  # softmax of logits
    status, flat = post_json(image_url, {"inputs": IMAGES.reshape(3, -1).tolist()})
    assert status == 200 and flat["predicted"] == named["predicted"]
    status, tensor = post(image_url, npy(IMAGES), NPY)
    assert status == 200 and tensor["predicted"] == named["predicted"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            {"inputs": {"input": np.zeros((1, 1, 8, 7)).tolist()}},
            "input 'input': expected shape [N, 1, 8, 8], received [1, 1, 8, 7]",
        ),
        ({"inputs": {"image": np.zeros((1, 1, 8, 8)).tolist()}}, "unknown input 'image'"),
        ({"inputs": np.zeros((2, 63)).tolist()}, "rows of shape [2, 63] do not fit this model"),
        ({"inputs": [[1, 2], [3]]}, "expected"),
        ({"rows": []}, 'expected {"inputs"'),
    ],
)
def test_a_request_that_does_not_fit_is_refused_and_the_model_keeps_serving(
    image_url: str, body: Any, detail: str
) -> None:
    status, answer = post_json(image_url, body)
    assert status == 400 and detail in answer["detail"], answer
    status, answer = post_json(image_url, {"inputs": {"input": IMAGES.tolist()}})
    assert status == 200, answer


def test_a_tensor_body_of_the_wrong_shape_or_kind(image_url: str) -> None:
    status, answer = post(image_url, npy(np.zeros((2, 8, 8), dtype=np.float32)), NPY)
    assert status == 400
    assert answer["detail"] == "input 'input': expected shape [N, 1, 8, 8], received [2, 8, 8]"
    status, answer = post(image_url, npy(np.array(["a", "b"])), NPY)
    assert status == 400 and "one numeric tensor" in answer["detail"]
    status, answer = post(image_url, b"\x93NUMPY garbage", NPY)
    assert status == 400 and "not a .npy tensor" in answer["detail"]


def test_a_body_above_the_limit_is_refused_unread(image_url: str) -> None:
    request = urllib.request.Request(
        image_url, method="POST", headers={"Content-Length": str(MAX_PREDICT_BODY + 1)}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    with refused.value:
        assert refused.value.code == 413
        detail = json.loads(refused.value.read())["detail"]
    assert f"over {MAX_PREDICT_BODY} bytes" in detail and "fewer rows" in detail


def test_two_inputs_by_name_or_as_one_row(two_url: str) -> None:
    rows = np.random.default_rng(1).normal(size=(2, 64)).astype(np.float32)
    status, named = post_json(
        two_url, {"inputs": {"a": rows[:, :4].tolist(), "b": rows[:, 4:].tolist()}}
    )
    assert status == 200, named
    status, flat = post_json(two_url, {"inputs": rows.tolist()})
    assert status == 200 and flat["probabilities"] == named["probabilities"]
    status, answer = post_json(two_url, {"inputs": {"a": rows[:, :4].tolist()}})
    assert status == 400 and answer["detail"] == "input 'b' is missing: expected b float32[N, 60]"
    status, answer = post(two_url, npy(rows[:, :4]), NPY)
    assert status == 400 and "this model takes 2 (a, b)" in answer["detail"]


def test_a_kept_alive_connection_serves_many_predictions(image_url: str) -> None:
    host, port = image_url.removeprefix("http://").split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        seconds = []
        for _ in range(21):
            start = time.perf_counter()
            connection.request("POST", "/predict", npy(IMAGES[:1]), {"Content-Type": NPY})
            answer = connection.getresponse()
            assert answer.status == 200 and len(json.loads(answer.read())["predicted"]) == 1
            seconds.append(time.perf_counter() - start)
        # No request waits for a delayed ACK (about 40 ms) behind a body held back by Nagle.
        assert float(np.median(seconds)) < 0.02, seconds
        connection.putrequest("POST", "/predict")  # chunked: refused, connection closed
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        connection.send(b"0\r\n\r\n")
        answer = connection.getresponse()
        assert answer.status == 411
        answer.read()
    finally:
        connection.close()


def test_labels_come_back_as_classes_for_a_classifier_and_as_target_values_for_a_regressor(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    """``POST /label`` takes a class index for a classifier and a target value (or one per output)
    for a regressor; the regressor's pair goes out as its absolute error for the MAE gate. A value
    that does not fit is a 400 naming what was expected, and the prediction keeps waiting."""
    w = np.full(64, 0.5)  # the device's golden inputs have 64 features
    for name, model in (("image", with_contract(image_classifier(), IMAGE)), ("reg", regressor(w))):
        fake = FakeController(public_key_pem=pem(key))
        device = new_device(tmp_path / name, key, fake)
        device.agent.run_once()
        data = model.SerializeToString()
        fake.target(
            DEVICE,
            fake.publish(
                MODEL, "v1", VARIANT, data,
                sha256=hashlib.sha256(data).hexdigest(),
                signature=sign(key, VARIANT, data, model=MODEL, version="v1"),
            ),
        )  # fmt: skip
        assert device.agent.run_once() == 0
        server = PredictServer(device.agent.slots).start()
        host, port = server.address
        base = f"http://{host}:{port}"
        try:
            if name == "image":
                status, answer = post(f"{base}/predict", npy(IMAGES[:1]), NPY)
                assert status == 200, answer
                pid = answer["ids"][0]
                status, body = post_json(f"{base}/label", {"prediction_id": pid, "target": [1.5]})
                assert status == 400 and "class index" in body["detail"], body
                status, body = post_json(f"{base}/label", {"prediction_id": pid, "label": 3})
                assert status == 200, body
                (report,) = [r for r in device.agent.slots.flush_telemetry() if r["feedback"]]
                assert report["feedback"][0]["label"] == 3
                continue
            x = np.ones((2, 64), dtype=np.float32)
            status, answer = post_json(f"{base}/predict", {"inputs": x.tolist()})
            assert status == 200 and answer["values"] == [[32.0], [32.0]], answer
            first, second = answer["ids"]
            for bad, says in (
                ({"prediction_id": first, "target": [1.0, 2.0]}, "1 number(s)"),
                ({"prediction_id": first, "target": "high"}, "one per output"),
                ({"prediction_id": first, "target": 1e300}, "in size"),
                ({"prediction_id": first, "label": 3, "target": 3.0}, "for a regressor"),
                ({"target": 3.0}, "prediction_id"),
            ):
                status, body = post_json(f"{base}/label", bad)
                assert status == 400 and says in body["detail"], (bad, body)
            assert post_json(f"{base}/label", {"prediction_id": first, "target": 29.0})[0] == 200
            assert post_json(f"{base}/label", {"prediction_id": second, "target": [37]})[0] == 200
            assert post_json(f"{base}/label", {"prediction_id": first, "target": 1.0})[0] == 404
            (report,) = [r for r in device.agent.slots.flush_telemetry() if r["feedback"]]
            errors = sorted(f["abs_error"] for f in report["feedback"])
            assert errors == pytest.approx([3.0, 5.0])
            assert all("label" not in f for f in report["feedback"])
        finally:
            server.stop()
