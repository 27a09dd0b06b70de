"""The networks: the classic MNIST CNN (and its variants) and an MLP to compare it with.

Both are plain ``nn.Sequential`` stacks with named layers, so the architecture
table, the layer-by-layer trace and the pages all read the layers straight off
the model, in order, with the names of the table (``conv1``, ``relu1``, ...).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Literal

from torch import nn

INPUT_SHAPE: tuple[int, int, int] = (1, 28, 28)
NUM_CLASSES = 10


@dataclass(frozen=True)
class CNNConfig:
    """Hyper-parameters of the CNN family. The defaults are the classic network."""

    conv1_channels: int = 32
    conv2_channels: int = 64
    kernel_size: int = 3
    padding: int = 1
    pool: Literal["max", "avg"] = "max"
    dropout: float = 0.25
    hidden: int = 128
    hidden_relu: bool = False
    kind: Literal["cnn"] = "cnn"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MLPConfig:
    """A fully connected network on the flattened 28x28 image."""

    hidden: tuple[int, ...] = (128,)
    dropout: float = 0.25
    kind: Literal["mlp"] = "mlp"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


ModelConfig = CNNConfig | MLPConfig


def config_from_dict(d: dict) -> ModelConfig:
    """Rebuild a config from its ``to_dict`` form (as stored in a model card)."""
    d = dict(d)
    kind = d.pop("kind", "cnn")
    if kind == "cnn":
        allowed = set(CNNConfig.__dataclass_fields__) - {"kind"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"unknown CNN settings: {sorted(unknown)}")
        if d.get("pool", "max") not in ("max", "avg"):
            raise ValueError(f"unknown pooling {d['pool']!r} (expected 'max' or 'avg')")
        return CNNConfig(**d)
    if kind == "mlp":
        unknown = set(d) - {"hidden", "dropout"}
        if unknown:
            raise ValueError(f"unknown MLP settings: {sorted(unknown)}")
        return MLPConfig(hidden=tuple(int(h) for h in d.get("hidden", (128,))),
                         dropout=float(d.get("dropout", 0.25)))
    raise ValueError(f"unknown model kind {kind!r} (expected 'cnn' or 'mlp')")


def _spatial_after(size: int, kernel: int, padding: int, stride: int = 1) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class MnistCNN(nn.Sequential):
    """conv1 -> relu1 -> pool1 -> conv2 -> relu2 -> pool2 -> flatten -> dropout -> fc1 -> fc2.

    With the default config this is exactly the classic network: 421,642 parameters.
    """

    def __init__(self, config: CNNConfig = CNNConfig()) -> None:
        c = config
        if c.kernel_size < 1 or c.padding < 0:
            raise ValueError("kernel_size must be >= 1 and padding >= 0")
        side = _spatial_after(INPUT_SHAPE[1], c.kernel_size, c.padding) // 2
        side = _spatial_after(side, c.kernel_size, c.padding) // 2
        if side < 1:
            raise ValueError("this kernel/padding shrinks the 28x28 input to nothing")
        pool = nn.MaxPool2d if c.pool == "max" else nn.AvgPool2d
        layers: list[tuple[str, nn.Module]] = [
            ("conv1", nn.Conv2d(1, c.conv1_channels, c.kernel_size, stride=1, padding=c.padding)),
            ("relu1", nn.ReLU()),
            ("pool1", pool(kernel_size=2, stride=2)),
            ("conv2", nn.Conv2d(c.conv1_channels, c.conv2_channels, c.kernel_size, stride=1, padding=c.padding)),
            ("relu2", nn.ReLU()),
            ("pool2", pool(kernel_size=2, stride=2)),
            ("flatten", nn.Flatten(start_dim=1)),
            ("dropout", nn.Dropout(p=c.dropout)),
            ("fc1", nn.Linear(c.conv2_channels * side * side, c.hidden)),
        ]
        if c.hidden_relu:
            layers.append(("relu3", nn.ReLU()))
        layers.append(("fc2", nn.Linear(c.hidden, NUM_CLASSES)))
        super().__init__(OrderedDict(layers))
        self.config = config


class MnistMLP(nn.Sequential):
    """flatten -> dropout -> fc1 -> relu1 -> ... -> fc_out: the 'ANN' of the comparison."""

    def __init__(self, config: MLPConfig = MLPConfig()) -> None:
        layers: list[tuple[str, nn.Module]] = [
            ("flatten", nn.Flatten(start_dim=1)),
            ("dropout", nn.Dropout(p=config.dropout)),
        ]
        width = INPUT_SHAPE[0] * INPUT_SHAPE[1] * INPUT_SHAPE[2]
        for i, h in enumerate(config.hidden, start=1):
            layers += [(f"fc{i}", nn.Linear(width, h)), (f"relu{i}", nn.ReLU())]
            width = h
        layers.append((f"fc{len(config.hidden) + 1}", nn.Linear(width, NUM_CLASSES)))
        super().__init__(OrderedDict(layers))
        self.config = config


def build_model(config: ModelConfig = CNNConfig()) -> nn.Sequential:
    """A fresh, randomly initialised model for ``config``."""
    if isinstance(config, CNNConfig):
        return MnistCNN(config)
    if isinstance(config, MLPConfig):
        return MnistMLP(config)
    raise TypeError(f"not a model config: {config!r}")


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (weights and biases) of ``model``, frozen or not."""
    return sum(p.numel() for p in model.parameters())
