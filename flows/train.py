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


def train(
    model: Classifier,
    train_xy: tuple[np.ndarray, np.ndarray],
    val_xy: tuple[np.ndarray, np.ndarray],
    params: TrainingParams,
    seed: int,
    task: str = "classification",
) -> TrainResult:
    """Adam on cross-entropy (classification) or on the squared error of the standardised target
    (regression); records train loss, val loss and val accuracy (or val MAE, in the target's
    units) per epoch."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, y_train = (torch.from_numpy(a) for a in train_xy)
    x_val, y_val = (torch.from_numpy(a) for a in val_xy)
    regression = task == "regression"
    if regression:
        std = float(y_train.std()) or 1.0
        model.target_mean.fill_(float(y_train.mean()))
        model.target_std.fill_(std)
        y_fit = (y_train - model.target_mean) / model.target_std
        loss_fn: nn.Module = nn.MSELoss()
    else:
        y_fit = y_train
        loss_fn = nn.CrossEntropyLoss()
    optimiser = torch.optim.Adam(model.parameters(), lr=params.learning_rate)
    result = TrainResult(model=model)
    for epoch in range(params.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for start in range(0, len(order), params.batch_size):
            idx = order[start : start + params.batch_size]
            optimiser.zero_grad()
            out = model(x_train[idx])
            loss = loss_fn(out[:, 0] if regression else out, y_fit[idx])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            out = model(x_val)
            row = {"epoch": epoch, "train_loss": total / len(x_train)}
            if regression:
                predicted = out[:, 0] * model.target_std + model.target_mean
                row["val_loss"] = float(
                    loss_fn(out[:, 0], (y_val - model.target_mean) / model.target_std)
                )
                row["val_mae"] = float((predicted - y_val).abs().mean())
            else:
                row["val_loss"] = float(loss_fn(out, y_val))
                row["val_accuracy"] = float((out.argmax(dim=1) == y_val).float().mean())
        result.history.append(row)
    model.eval()
    return result
