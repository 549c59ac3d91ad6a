"""Training: plain functions, no orchestration; the flow and the DVC stage both call :func:`train`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edgeloop.core.params import TrainingParams
from flows.models import Classifier


@dataclass
class TrainResult:
    model: Classifier
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    return float((pred == y).mean())


def train(
    model: Classifier,
    train_xy: tuple[np.ndarray, np.ndarray],
    val_xy: tuple[np.ndarray, np.ndarray],
    params: TrainingParams,
    seed: int,
) -> TrainResult:
    """Adam on cross-entropy; records train loss, val loss and val accuracy per epoch."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = (torch.from_numpy(a) for a in train_xy)
    x_val, y_val = (torch.from_numpy(a) for a in val_xy)
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    result = TrainResult(model=model)
    for epoch in range(params.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), params.batch_size):
            idx = order[start : start + params.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            val_logits = model(x_val)
            val_loss = float(loss_fn(val_logits, y_val))
            val_acc = float((val_logits.argmax(dim=1) == y_val).float().mean())
        result.history.append(
            {
                "epoch": epoch,
                "train_loss": total / len(x_train),
                "val_loss": val_loss,
                "val_accuracy": val_acc,
            }
        )
    model.eval()
    return result
