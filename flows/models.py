"""Model builders, and the wrapper that makes any of them take raw features and emit probabilities.

A builder is ``builder(n_features, n_classes, **builder_args) -> torch.nn.Module`` returning logits from
features scaled to [0, 1]. :class:`Classifier` adds the scaling and the softmax, so the exported ONNX
takes the same raw inputs the device sees and its output can be checked as probabilities.
"""

from __future__ import annotations

import inspect
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


def cnn(
    n_features: int,
    n_classes: int,
    input_shape: Sequence[int] = (1, 8, 8),
    channels: Sequence[int] = (32, 64),
    dropout: float = 0.1,
) -> nn.Module:
    """Same-padded 3x3 convolutions with ReLU, one 2x2 max-pool after the last, then a linear
    layer: ``nn.Sequential``, so :mod:`flows.prune` can prune its channels."""
    c, h, w = (int(d) for d in input_shape)
    if c * h * w != n_features:
        raise ValueError(
            f"input_shape {list(input_shape)} holds {c * h * w} values, not {n_features}"
        )
    layers: list[nn.Module] = []
    width = c
    for size in channels:
        layers += [nn.Conv2d(width, int(size), 3, padding=1), nn.ReLU()]
        width = int(size)
    layers += [nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(float(dropout))]
    layers.append(nn.Linear(width * (h // 2) * (w // 2), n_classes))
    return nn.Sequential(*layers)


BUILDERS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn}


class Classifier(nn.Module):
    """Scales raw input by the dataset's value range; ``forward`` gives logits.

    With an ``input_shape`` the model takes samples of that shape (an image, ``[N, C, H, W]``)
    and flat rows are reshaped to it, so training feeds the rows it has while the exported graph
    takes the image; any integer input (uint8 pixels) is cast to float inside the graph."""

    target_mean: torch.Tensor
    target_std: torch.Tensor

    def __init__(
        self,
        body: nn.Module,
        low: float,
        high: float,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.low = float(low)
        self.scale = float(high - low) or 1.0
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape else None
        # A regressor learns the standardised target; these turn it back (flows.train sets them).
        self.register_buffer("target_mean", torch.zeros(1))
        self.register_buffer("target_std", torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_shape is not None and x.dim() == 2:
            x = x.reshape(-1, *self.input_shape)
        return self.body((x.to(torch.float32) - self.low) / self.scale)


class Probabilities(nn.Module):
    """The exported graph: a classifier followed by softmax."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(x), dim=-1)


class Values(nn.Module):
    """The exported graph of a regressor: the network's output in the target's units."""

    def __init__(self, regressor: Classifier) -> None:
        super().__init__()
        self.regressor = regressor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor(x) * self.regressor.target_std + self.regressor.target_mean


def build_model(
    name: str,
    n_features: int,
    n_classes: int,
    value_range: tuple[float, float],
    input_shape: Sequence[int] | None = None,
    **args: Any,
) -> Classifier:
    """The builder's network inside a :class:`Classifier`; a builder that takes ``input_shape``
    gets the dataset's unless ``args`` names one."""
    builder = resolve("model builder", name, BUILDERS)
    if input_shape is not None and "input_shape" in inspect.signature(builder).parameters:
        args.setdefault("input_shape", tuple(input_shape))
    return Classifier(builder(n_features, n_classes, **args), *value_range, input_shape=input_shape)
