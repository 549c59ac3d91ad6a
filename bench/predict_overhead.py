"""Agent ``/predict`` overhead: what the device's HTTP endpoint adds to a bare onnxruntime call.

Run from the repository root: ``python bench/predict_overhead.py`` (``--help`` for options).

It trains the image-CNN example (``examples/digits-cnn/params.yaml``, images upsampled to 32x32 by
default so the model has compute to speak of) through the loop's stages into a temporary
workspace, installs its ``int8-static`` variant in a real agent's slots (sha256, signature, smoke
test) behind a real ``PredictServer``, then times, one image per call, interleaved in rounds:

* ``bare``: ``session.run`` on the contract's feed, prepared before the clock starts;
* ``agent-npy``: ``POST /predict`` with the image as one ``.npy`` tensor;
* ``agent-json``: ``POST /predict`` with ``{"inputs": {"image": [[[...]]]}}``.

The HTTP calls share one kept-alive connection, as an application on the device would. Target: agent p50 at
most 1.3x the bare call (checked on ``agent-npy``); a MISS does not change the exit code. Numbers,
with machine information and the load average, go to ``.edgeloop/bench/predict_overhead.json``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from _common import machine_info, p50_results, p50_table, write_report
from compression import run_stages
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console

from fleet.agent.agent import NPY, PredictServer
from fleet.agent.slots import Candidate, SlotManager
from fleet.agent.store import ModelStore
from fleet.shared.modelspec import read_spec
from fleet.shared.runtime import LatencyStats, open_session, time_batch1
from fleet.shared.signature import ReleaseClaim, file_sha256
from flows.datasets import read_splits, xy
from flows.workspace import Workspace

NAME = "predict_overhead"
REPO = Path(__file__).resolve().parents[1]
VARIANT = "int8-static"
TARGET = 1.3


def install(model: Path, state: Path, versions: tuple[str, ...] = ("1",)) -> SlotManager:
    """``model`` installed as each of ``versions`` in turn, the way the agent installs a download
    (the last serves, the one before it waits in the previous slot)."""
    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sha = file_sha256(model)
    slots = SlotManager(ModelStore(state), pem, None, 10)
    for release, version in enumerate(versions, start=1):
        claim = ReleaseClaim("digits-cnn", version, VARIANT, sha, release)
        signature = base64.b64encode(key.sign(claim.message())).decode()
        candidate = Candidate("digits-cnn", version, VARIANT, model, sha, signature, release)
        result = slots.install(candidate)
        if not result.ok:
            raise SystemExit(f"the agent refused the model: {result}")
    return slots


def post(connection: http.client.HTTPConnection, body: bytes, content_type: str) -> None:
    """One prediction on a kept-alive connection, as an application on the device makes it."""
    connection.request("POST", "/predict", body, {"Content-Type": content_type})
    answer = connection.getresponse()
    answer.read()
    if answer.status != 200:
        raise SystemExit(f"/predict answered {answer.status}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upsample", type=int, default=4, help="digit images of 8 x N pixels")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(".edgeloop/bench") / f"{NAME}.json")
    args = parser.parse_args()
    console = Console() if sys.stdout.isatty() else Console(width=120)
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-predict-") as tmp:
        ws = Workspace(Path(tmp) / "splits", Path(tmp) / "work")
        params_file = REPO / "examples" / "digits-cnn" / "params.yaml"
        with console.status("training and compressing the CNN example…"):
            run_stages(params_file, ws, {"upsample": args.upsample})
        model = ws.variants_dir / f"{VARIANT}.onnx"
        _, splits = read_splits(ws.splits_dir)
        x_test, _ = xy(splits["test"])
        session = open_session(str(model), threads=1)
        spec = read_spec(session)
        (image,) = spec.inputs
        feeds = [spec.feed(x_test[i : i + 1]) for i in range(len(x_test))]
        npy_bodies, json_bodies = [], []
        for feed in feeds:
            buffer = io.BytesIO()
            np.save(buffer, feed[image.name], allow_pickle=False)
            npy_bodies.append(buffer.getvalue())
            json_bodies.append(
                json.dumps({"inputs": {image.name: feed[image.name].tolist()}}).encode()
            )
        server = PredictServer(install(model, Path(tmp) / "agent")).start()
        host, port = server.address
        connection = http.client.HTTPConnection(host, port, timeout=10)
        index = np.arange(len(feeds)).reshape(-1, 1)
        wanted = [spec.scored.name]
        calls: dict[str, Callable[[np.ndarray], object]] = {
            "bare": lambda i: session.run(wanted, feeds[int(i[0, 0])]),
            "agent-npy": lambda i: post(connection, npy_bodies[int(i[0, 0])], NPY),
            "agent-json": lambda i: post(connection, json_bodies[int(i[0, 0])], "application/json"),
        }
        rounds: dict[str, list[LatencyStats]] = {name: [] for name in calls}
        with console.status(f"timing {args.runs} calls each in {args.rounds} rounds…"):
            for _ in range(args.rounds):
                for name, call in calls.items():
                    rounds[name].append(
                        time_batch1(
                            call,
                            index,
                            warmup=args.warmup // args.rounds,
                            runs=args.runs // args.rounds,
                        )
                    )
        connection.close()
        server.stop()
    load_after = os.getloadavg()
    results = p50_results(rounds, "bare")
    console.print(
        p50_table(
            f"/predict overhead, {image.describe()}, {VARIANT}, 1 image per call",
            "call",
            results,
            "bare",
        )
    )
    ratio = results["agent-npy"]["p50_ratio"]
    verdict = "PASS" if ratio <= TARGET else "MISS"
    console.print(
        f"agent-npy p50 {ratio:.2f}x the bare call (target <= {TARGET}): {verdict}\n"
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"({os.cpu_count()} CPUs)",
        highlight=False,
    )
    report = {
        "benchmark": NAME,
        "started": started.isoformat(timespec="seconds"),
        "input": image.describe(),
        "variant": VARIANT,
        "runs": args.runs,
        "rounds": args.rounds,
        "results": results,
        "target": {"ratio": TARGET, "measured": ratio, "passed": ratio <= TARGET},
        "machine": machine_info() | {"loadavg_before": load_before, "loadavg_after": load_after},
    }
    write_report(console, args.out, report)


if __name__ == "__main__":
    main()
