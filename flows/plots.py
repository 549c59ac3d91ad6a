"""Plots logged to MLflow: the loss curve, the confusion matrix and the variants' size/latency chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from flows.quality import ACCURACY, QualityMetric


def loss_curve(history: list[dict[str, float]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in history], label="val loss")
    ax2 = ax.twinx()
    regression = "val_mae" in history[0]
    key, label = ("val_mae", "val MAE") if regression else ("val_accuracy", "val accuracy")
    ax2.plot(epochs, [h[key] for h in history], color="tab:green", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("squared error (standardised target)" if regression else "cross-entropy")
    ax2.set_ylabel("MAE" if regression else "accuracy")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def predicted_vs_true(y_true: np.ndarray, y_pred: np.ndarray, path: Path) -> Path:
    """A regressor's test predictions against the truth, with the diagonal of a perfect model."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y_true, y_pred, s=12, alpha=0.7)
    low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([low, high], [low, high], color="tab:red", linewidth=1, label="perfect")
    mae = float(np.abs(y_true - y_pred).mean())
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(f"predicted vs true (test, fp32), MAE {mae:.3g}")
    ax.legend(loc="upper left")
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


def pareto_chart(
    records: list[dict[str, Any]], path: Path, metric: QualityMetric = ACCURACY
) -> Path:
    """Size against test quality (accuracy or MAE) per variant, coloured by p95 latency;
    Pareto-optimal ones ringed."""
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sizes = [r["size_bytes"] / 1024 for r in records]
    scatter = ax.scatter(
        sizes,
        [r[metric.key] for r in records],
        c=[r["p95_ms"] for r in records],
        cmap="viridis",
        s=80,
    )
    for r, size in zip(records, sizes, strict=True):
        if r.get("pareto"):
            ax.scatter([size], [r[metric.key]], s=220, facecolors="none", edgecolors="tab:red")
        ax.annotate(r["name"], (size, r[metric.key]), textcoords="offset points", xytext=(6, 4))
    fig.colorbar(scatter, ax=ax, label="p95 latency, 1 thread, batch 1 (ms)")
    ax.set_xlabel("size (KB)")
    ax.set_ylabel(f"test {metric.label}")
    ax.set_title(f"variants: size vs {metric.label} vs p95 (ringed: Pareto-optimal)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
