"""The networks: the classic MNIST CNN (and its variants) and an MLP to compare it with.

Both are plain ``nn.Sequential`` stacks with named layers, so the architecture
table, the layer-by-layer trace and the pages all read the layers straight off
the model, in order, with the names of the table (``conv1``, ``relu1``, ...).
"""

from __future__ import annotations

import math
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


# Limits on what a network of the family may be. Every network the app builds, loads or is sent
# passes through check_config first: a weights file can claim any architecture in its card, and
# each page's cost (activation memory, number of charts) grows with these numbers.
LIMITS: dict[str, tuple[int, int]] = {
    "channels": (1, 128),  # filters of conv1 and conv2
    "kernel_size": (1, 7),
    "padding": (0, 3),
    "hidden": (1, 1024),  # width of a fully connected hidden layer
    "mlp_layers": (1, 4),  # hidden layers of an MLP
}
DROPOUT_LIMITS = (0.0, 0.9)
MAX_ACTIVATIONS = 200_000  # values one layer may output for one digit (the classic CNN's largest: 25,088)
MAX_PARAMETERS = 4_000_000


def _int_in(name: str, value: object, limits: tuple[int, int]) -> int:
    # bool is an int in Python: refuse it explicitly, a card saying "kernel_size": true is broken.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, not {value!r}"[:200])
    lo, hi = limits
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, not {value:,}")
    return value


def _float_in(name: str, value: object, limits: tuple[float, float]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}"[:200])
    lo, hi = limits
    if not lo <= float(value) <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, not {value}")
    return float(value)


def check_config(config: ModelConfig) -> None:
    """Refuse a network outside the documented LIMITS, with a sentence that says which setting is wrong.

    Checks types, ranges and finiteness of every setting, then what the network would cost: values per
    layer for one digit (MAX_ACTIVATIONS) and parameters (MAX_PARAMETERS), from the output-size formula,
    without building anything.
    """
    if isinstance(config, CNNConfig):
        c1 = _int_in("conv1 filters", config.conv1_channels, LIMITS["channels"])
        c2 = _int_in("conv2 filters", config.conv2_channels, LIMITS["channels"])
        k = _int_in("kernel size", config.kernel_size, LIMITS["kernel_size"])
        p = _int_in("padding", config.padding, LIMITS["padding"])
        hidden = _int_in("hidden width", config.hidden, LIMITS["hidden"])
        _float_in("dropout", config.dropout, DROPOUT_LIMITS)
        if config.pool not in ("max", "avg"):
            raise ValueError(f"pooling must be 'max' or 'avg', not {config.pool!r}"[:200])
        if not isinstance(config.hidden_relu, bool):
            raise ValueError(f"hidden_relu must be true or false, not {config.hidden_relu!r}"[:200])
        side1 = _spatial_after(INPUT_SHAPE[1], k, p)
        side2 = _spatial_after(side1 // 2, k, p)
        if side1 // 2 < 1 or side2 // 2 < 1:
            raise ValueError(f"a {k}x{k} kernel with padding {p} shrinks the 28x28 input to nothing")
        largest = max(c1 * side1 * side1, c2 * side2 * side2)
        flat = c2 * (side2 // 2) ** 2
        parameters = (c1 * (k * k + 1) + c2 * (c1 * k * k + 1) + hidden * (flat + 1) + NUM_CLASSES * (hidden + 1))
    elif isinstance(config, MLPConfig):
        if not isinstance(config.hidden, tuple):
            raise ValueError("hidden widths must be a list of whole numbers")
        _int_in("number of hidden layers", len(config.hidden), LIMITS["mlp_layers"])
        widths = [_int_in("hidden width", h, LIMITS["hidden"]) for h in config.hidden]
        _float_in("dropout", config.dropout, DROPOUT_LIMITS)
        sizes = [INPUT_SHAPE[1] * INPUT_SHAPE[2], *widths, NUM_CLASSES]
        largest = max(sizes)
        parameters = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    else:
        raise ValueError(f"not a model config: {type(config).__name__}")
    if largest > MAX_ACTIVATIONS:
        raise ValueError(f"one layer would output {largest:,} values for a single digit; the limit is "
                         f"{MAX_ACTIVATIONS:,}")
    if parameters > MAX_PARAMETERS:
        raise ValueError(f"the network would have {parameters:,} parameters; the limit is {MAX_PARAMETERS:,}")


def config_from_dict(d: object) -> ModelConfig:
    """Rebuild a config from its ``to_dict`` form (as stored in a model card), checked by :func:`check_config`.

    Raises ValueError, with a sentence fit for the user, for anything that is not a valid network
    of the family: unknown keys, wrong types, values out of range, non-finite numbers.
    """
    if not isinstance(d, dict):
        raise ValueError("the architecture must be a JSON object")
    d = dict(d)
    kind = d.pop("kind", "cnn")
    config: ModelConfig
    if kind == "cnn":
        allowed = set(CNNConfig.__dataclass_fields__) - {"kind"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"unknown CNN settings: {sorted(map(str, unknown))}"[:300])
        config = CNNConfig(**d)
    elif kind == "mlp":
        unknown = set(d) - {"hidden", "dropout"}
        if unknown:
            raise ValueError(f"unknown MLP settings: {sorted(map(str, unknown))}"[:300])
        hidden = d.get("hidden", [128])
        if not isinstance(hidden, (list, tuple)) or len(hidden) > LIMITS["mlp_layers"][1]:
            raise ValueError(f"an MLP's hidden widths must be a list of 1 to {LIMITS['mlp_layers'][1]} numbers")
        config = MLPConfig(hidden=tuple(hidden), dropout=d.get("dropout", 0.25))
    else:
        raise ValueError(f"unknown model kind {kind!r} (expected 'cnn' or 'mlp')"[:200])
    check_config(config)
    return config


def _spatial_after(size: int, kernel: int, padding: int, stride: int = 1) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class MnistCNN(nn.Sequential):
    """conv1 -> relu1 -> pool1 -> conv2 -> relu2 -> pool2 -> flatten -> dropout -> fc1 -> fc2.

    With the default config this is exactly the classic network: 421,642 parameters.
    """

    def __init__(self, config: CNNConfig = CNNConfig()) -> None:
        c = config
        check_config(c)
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
        check_config(config)
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
