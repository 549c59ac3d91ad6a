"""Plots logged to MLflow: the loss curve, the confusion matrix and the variants' size/latency chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def loss_curve(history: list[dict[str, float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in history], label="val loss")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["val_accuracy"] for h in history], color="tab:green", label="val accuracy")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax2.set_ylabel("accuracy")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[int], path: Path
) -> Path:
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    index = {c: i for i, c in enumerate(classes)}
    for t, p in zip(y_true, y_pred, strict=True):
        matrix[index[int(t)], index[int(p)]] += 1
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(matrix, cmap="Blues")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (test, fp32)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pareto_chart(records: list[dict[str, Any]], path: Path) -> Path:
    """Size against test accuracy per variant, coloured by p95 latency; Pareto-optimal ones ringed."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sizes = [r["size_bytes"] / 1024 for r in records]
    scatter = ax.scatter(
        sizes,
        [r["accuracy"] for r in records],
        c=[r["p95_ms"] for r in records],
        cmap="viridis",
        s=80,
    )
    for r, size in zip(records, sizes, strict=True):
        if r.get("pareto"):
            ax.scatter([size], [r["accuracy"]], s=220, facecolors="none", edgecolors="tab:red")
        ax.annotate(r["name"], (size, r["accuracy"]), textcoords="offset points", xytext=(6, 4))
    fig.colorbar(scatter, ax=ax, label="p95 latency, 1 thread, batch 1 (ms)")
    ax.set_xlabel("size (KB)")
    ax.set_ylabel("test accuracy")
    ax.set_title("variants: size vs accuracy vs p95 (ringed: Pareto-optimal)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
