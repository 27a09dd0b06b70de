"""Randomness owned by the run (cnn_core.train): one generator per run, never PyTorch's global one."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from cnn_core.data import MnistSplit
from cnn_core.model import CNNConfig, MLPConfig
from cnn_core.train import (
    TrainConfig,
    VariantSplit,
    _model_config,
    _parse_args,
    _train_config,
    equivalent_command,
    forward_with_dropout,
    fresh_model,
    init_weights,
    model_card,
    train_model,
)

# Small enough for seconds on one core; augmentation (with elastic distortion), dropout and
# shuffling all on, so every use of randomness is exercised.
SMALL = TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=7, elastic=2.0)
TINY_CNN = CNNConfig(conv1_channels=4, conv2_channels=8, hidden=16)


def synthetic_split(n: int = 192, seed: int = 0) -> MnistSplit:
    """Random 'digits': the determinism under test does not depend on what the images show."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 28, 28, generator=g) * 255).to(torch.uint8)
    return MnistSplit(images, torch.randint(0, 10, (n,), generator=g), "synthetic")


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_leaves_the_global_generator_alone():
    before = torch.random.get_rng_state()
    train_model(TINY_CNN, synthetic_split(), None, SMALL)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_same_seed_same_weights_alone_and_beside_another_run():
    split = synthetic_split()
    alone = weights(train_model(CNNConfig(), split, None, SMALL).model)

    results: dict[int, dict[str, torch.Tensor]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(i: int) -> None:
        try:
            start.wait()
            # Another thread reseeding the global generator must not matter either.
            torch.manual_seed(1000 + i)
            results[i] = weights(train_model(CNNConfig(), split, None, SMALL).model)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert_same(results[0], alone)
    assert_same(results[1], alone)


def test_another_seed_gives_other_weights():
    split = synthetic_split()
    a = weights(train_model(TINY_CNN, split, None, SMALL).model)
    b = weights(train_model(TINY_CNN, split, None, TrainConfig(**{**SMALL.__dict__, "seed": 8})).model)
    assert not torch.equal(a["fc2.weight"], b["fc2.weight"])


def test_init_weights_draws_what_pytorch_default_init_draws():
    """Oracle: PyTorch's own reset_parameters from the global generator seeded alike."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        reference = nn.Sequential(nn.Conv2d(1, 5, 3), nn.Linear(20, 7))
    mine = nn.Sequential(nn.Conv2d(1, 5, 3), nn.Linear(20, 7))
    init_weights(mine, torch.Generator().manual_seed(3))
    assert_same(weights(mine), weights(reference))


def test_fresh_model_is_the_family_network_with_seeded_weights():
    a = fresh_model(CNNConfig(), torch.Generator().manual_seed(1))
    b = fresh_model(CNNConfig(), torch.Generator().manual_seed(1))
    assert [name for name, _ in a.named_children()][:8] == ["conv1", "relu1", "pool1", "conv2", "relu2",
                                                             "pool2", "flatten", "dropout"]
    assert isinstance(a.dropout, nn.Dropout) and a.dropout.p == 0.25
    assert_same(weights(a), weights(b))
    assert float(a.fc1.weight.detach().abs().max()) <= 1 / 3136 ** 0.5 + 1e-6  # kaiming_uniform(a=sqrt 5) bound
    assert float(a.fc1.weight.detach().std()) > 0


def test_dropout_masks_come_from_the_run_generator():
    model = fresh_model(MLPConfig(hidden=(32,), dropout=0.5), torch.Generator().manual_seed(0))
    x = torch.ones(4, 1, 28, 28)
    a = forward_with_dropout(model, x, torch.Generator().manual_seed(5))
    b = forward_with_dropout(model, x, torch.Generator().manual_seed(5))
    c = forward_with_dropout(model, x, torch.Generator().manual_seed(6))
    model.eval()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, model(x))  # dropout did something in training


def test_variants_take_part_in_training():
    split = synthetic_split(64)
    g = torch.Generator().manual_seed(1)
    extra = VariantSplit((torch.rand(32, 3, 28, 28, generator=g) * 255).to(torch.uint8),
                         torch.randint(0, 10, (32,), generator=g), "synthetic variants")
    seen = []
    train_model(TINY_CNN, split, None, SMALL, on_progress=seen.append, variants=extra)
    assert seen[-1].batches == 3  # (64 + 32) / 32
    a = weights(train_model(TINY_CNN, split, None, SMALL, variants=extra).model)
    b = weights(train_model(TINY_CNN, split, None, SMALL).model)
    assert not torch.equal(a["fc2.weight"], b["fc2.weight"])


@pytest.mark.parametrize("model_config, config", [
    (CNNConfig(), TrainConfig()),
    (CNNConfig(8, 16, 5, 0, "avg", 0.1, 64, True), TrainConfig(epochs=3, train_size=500, augment=False, seed=9,
                                                               lr=0.01, elastic=1.5, ema=0.0)),
    (MLPConfig(hidden=(64, 32), dropout=0.0), TrainConfig(label_smoothing=0.1, rotate=0.0)),
])
def test_equivalent_command_parses_back_to_the_same_settings(model_config, config):
    command = equivalent_command(model_config, config, "out dir/m.pt", data="../shared/data/mnist")
    a = _parse_args(__import__("shlex").split(command)[3:])
    assert _model_config(a) == model_config
    assert _train_config(a) == config
    assert a.validation == 0 and a.out == "out dir/m.pt" and a.data == "../shared/data/mnist"


def test_model_card_records_the_run():
    split = synthetic_split()
    held_out = synthetic_split(64, seed=1)
    result = train_model(TINY_CNN, split, held_out, SMALL)
    card = model_card(name="tiny", model_config=TINY_CNN, config=SMALL, result=result, train_split=split,
                      held_out=held_out, train_seconds=1.234, origin="trained in the app")
    assert card["seed"] == 7 and card["training"]["elastic"] == 2.0
    assert card["architecture"] == TINY_CNN.to_dict()
    assert card["data"] == {"train": "synthetic", "train_examples": 192, "held_out": "synthetic",
                            "held_out_examples": 64}
    assert card["metrics"] == {"test_accuracy": result.history[-1].test_accuracy, "test_examples": 64}
    assert card["history"][0]["epoch"] == 1 and card["epochs"] == 1 and card["train_seconds"] == 1.2
    assert card["command"].startswith("python -m cnn_core.train --data . --out tiny.pt --validation 0 ")
    assert "--seed 7" in card["command"] and "--elastic 2.0" in card["command"]
    assert f"--threads {torch.get_num_threads()}" in card["command"] and card["threads"] == torch.get_num_threads()
    assert card["cancelled"] is False
