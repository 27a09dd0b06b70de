"""fc1·fc2 multiplied out (cnn_core.linear_collapse), checked against PyTorch's own forward and parameter counts."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from cnn_core.architecture import layer_table
from cnn_core.linear_collapse import compare_logits, last_linear_pair, multiply_out
from cnn_core.model import CNNConfig, MLPConfig, build_model
from cnn_core.preprocess import normalise
from cnn_core.samples import load_samples

VARIANTS = {
    "kernel 5": CNNConfig(kernel_size=5),
    "padding 0": CNNConfig(padding=0),
    "average pooling": CNNConfig(pool="avg"),
    "small": CNNConfig(conv1_channels=8, conv2_channels=16, kernel_size=5, padding=2, hidden=32),
}


def random_model(config, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return build_model(config).eval()


def count(module: nn.Module) -> int:
    """Parameters as PyTorch holds them."""
    return sum(p.numel() for p in module.parameters())


def images(n: int = 5) -> torch.Tensor:
    """Real digits (the bundled samples), preprocessed: (n, 1, 28, 28)."""
    return torch.stack([normalise(s.pixels) for s in load_samples()[:n]]).reshape(n, 1, 28, 28)


def test_the_shipped_pair_is_fc1_fc2_and_its_counts_are_pytorchs(shipped):
    model = shipped.model
    pair = last_linear_pair(model)
    assert pair is not None and (pair.first, pair.second) == ("fc1", "fc2")
    assert pair.between == () and pair.collapses
    product = multiply_out(model)
    fc1, fc2 = model.fc1, model.fc2
    one = nn.Linear(fc1.in_features, fc2.out_features)  # the single layer the product stands for
    assert product.parameters == count(one) == 31_370
    assert product.first_parameters == count(fc1) and product.second_parameters == count(fc2)
    assert product.pair_parameters == count(fc1) + count(fc2) == 402_826
    assert product.model_parameters == count(model) == 421_642
    assert product.expressible_parameters == count(model) - count(fc1) - count(fc2) + count(one) == 50_186
    assert product.redundant_parameters == 371_456
    assert not product.rank_limited


def test_the_product_gives_the_models_own_logits(shipped):
    """Oracle: PyTorch's forward of the whole model, against everything before fc1 then one matrix built here."""
    model = shipped.model.eval()
    x = images()
    with torch.no_grad():
        expected = model(x).double()  # the nn.Sequential's own forward (dropout is off in eval mode)
        before = nn.Sequential(*list(model.children())[:-2])(x).double()  # up to fc1's input
    w = model.fc2.weight.double() @ model.fc1.weight.double()
    b = model.fc2.weight.double() @ model.fc1.bias.double() + model.fc2.bias.double()
    product = multiply_out(model)
    torch.testing.assert_close(product.weight, w.detach())
    torch.testing.assert_close(product.bias, b.detach())
    torch.testing.assert_close(before @ w.detach().T + b.detach(), expected, atol=1e-4, rtol=1e-5)
    for i in range(len(x)):
        logits = compare_logits(model, product, x[i, 0][None])
        torch.testing.assert_close(logits.two_layers.double(), expected[i], atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(logits.one_matrix, expected[i], atol=1e-4, rtol=1e-5)
        assert logits.max_abs_difference < 1e-4


@pytest.mark.parametrize("name", VARIANTS)
def test_variants_collapse_too(name):
    model = random_model(VARIANTS[name])
    product = multiply_out(model)
    flat = next(r.output_shape[0] for r in layer_table(model) if r.name == "flatten")
    assert product.in_features == flat and product.out_features == 10
    assert product.parameters == count(nn.Linear(flat, 10))
    with torch.no_grad():
        expected = model(images(3)).double()
    for i, image in enumerate(images(3)):
        assert compare_logits(model, product, image).max_abs_difference < 1e-4
        torch.testing.assert_close(compare_logits(model, product, image).one_matrix, expected[i], atol=1e-4,
                                   rtol=1e-5)


def test_a_relu_after_fc1_is_detected_and_the_product_then_differs():
    model = random_model(CNNConfig(hidden_relu=True))
    pair = last_linear_pair(model)
    assert pair is not None and pair.between == (("relu3", "ReLU"),)
    assert pair.blockers == ("relu3",) and not pair.collapses
    product = multiply_out(model)
    with torch.no_grad():
        expected = model(images(3))
    worst = max(compare_logits(model, product, image).max_abs_difference for image in images(3))
    assert worst > 1e-3  # the ReLU zeroes some of fc1's outputs: one matrix cannot do that
    assert torch.allclose(compare_logits(model, product, images(1)[0]).two_layers, expected[0], atol=1e-5)


@pytest.mark.parametrize("hidden, pair, blocker", [((128,), ("fc1", "fc2"), "relu1"),
                                                  ((64, 32), ("fc2", "fc3"), "relu2")])
def test_an_mlp_has_a_relu_between_its_last_two_layers(hidden, pair, blocker):
    found = last_linear_pair(random_model(MLPConfig(hidden=hidden)))
    assert found is not None and (found.first, found.second) == pair and found.blockers == (blocker,)


def test_dropout_between_two_layers_is_the_identity_anything_else_blocks():
    torch.manual_seed(1)
    with_dropout = nn.Sequential(OrderedDict(flatten=nn.Flatten(), a=nn.Linear(784, 20), drop=nn.Dropout(0.5),
                                             b=nn.Linear(20, 10)))
    with_dropout.train()  # even in training mode: the comparison runs the layers as at inference
    pair = last_linear_pair(with_dropout)
    assert pair is not None and pair.collapses and pair.between == (("drop", "Dropout"),)
    assert compare_logits(with_dropout, multiply_out(with_dropout), images(1)[0]).max_abs_difference < 1e-4
    with_tanh = nn.Sequential(OrderedDict(flatten=nn.Flatten(), a=nn.Linear(784, 20), t=nn.Tanh(),
                                          b=nn.Linear(20, 10)))
    assert last_linear_pair(with_tanh).blockers == ("t",)


def test_a_narrow_hidden_layer_makes_a_rank_limited_product():
    model = random_model(CNNConfig(hidden=4))
    product = multiply_out(model)
    assert product.hidden == 4 and product.rank_limited
    assert int(torch.linalg.matrix_rank(product.weight)) <= 4
    assert product.pair_parameters < product.parameters and product.redundant_parameters == 0


def test_fewer_than_two_linear_layers():
    model = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(784, 10)))
    assert last_linear_pair(model) is None
    with pytest.raises(ValueError, match="fewer than two"):
        multiply_out(model)
