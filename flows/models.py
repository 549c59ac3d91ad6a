"""Model builders, and the wrapper that makes any of them take raw features and emit probabilities.

A builder is ``builder(n_features, n_classes, **builder_args) -> torch.nn.Module`` returning logits from
features scaled to [0, 1]. :class:`Classifier` adds the scaling and the softmax, so the exported ONNX
takes the same raw inputs the device sees and its output can be checked as probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from flows.plugins import resolve


def mlp(
    n_features: int, n_classes: int, hidden: Sequence[int] = (512, 512), dropout: float = 0.1
) -> nn.Module:
    """A multi-layer perceptron with ReLU and dropout between layers."""
    layers: list[nn.Module] = []
    width = n_features
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.ReLU(), nn.Dropout(float(dropout))]
        width = int(size)
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


BUILDERS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp}


class Classifier(nn.Module):
    """Scales raw features by the dataset's value range; ``forward`` gives logits."""

    def __init__(self, body: nn.Module, low: float, high: float) -> None:
        super().__init__()
        self.body = body
        self.low = float(low)
        self.scale = float(high - low) or 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.low) / self.scale)


class Probabilities(nn.Module):
    """The exported graph: a classifier followed by softmax."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(x), dim=-1)


def build_model(
    name: str, n_features: int, n_classes: int, value_range: tuple[float, float], **args: Any
) -> Classifier:
    builder = resolve("model builder", name, BUILDERS)
    return Classifier(builder(n_features, n_classes, **args), *value_range)
