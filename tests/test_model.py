import pytest
import torch

from cnn_core.architecture import layer_table, total_parameters
from cnn_core.introspect import trace
from cnn_core.model import CNNConfig, MLPConfig, MnistCNN, build_model, config_from_dict, count_parameters

# The table of the brief: (name, type, output shape).
EXPECTED = [
    ("input", "Input", (1, 28, 28)),
    ("conv1", "Conv2d", (32, 28, 28)),
    ("relu1", "ReLU", (32, 28, 28)),
    ("pool1", "MaxPool2d", (32, 14, 14)),
    ("conv2", "Conv2d", (64, 14, 14)),
    ("relu2", "ReLU", (64, 14, 14)),
    ("pool2", "MaxPool2d", (64, 7, 7)),
    ("flatten", "Flatten", (3136,)),
    ("dropout", "Dropout", (3136,)),
    ("fc1", "Linear", (128,)),
    ("fc2", "Linear", (10,)),
]


def test_parameter_count_is_the_classic_networks():
    assert count_parameters(MnistCNN()) == 421_642


def test_layer_table_matches_the_brief():
    rows = layer_table(MnistCNN())
    assert [(r.name, r.kind, r.output_shape) for r in rows] == EXPECTED
    assert total_parameters(rows) == 421_642
    by_name = {r.name: r for r in rows}
    assert by_name["conv1"].parameters == 32 * 9 + 32
    assert by_name["conv2"].parameters == 64 * 32 * 9 + 64
    assert by_name["fc1"].parameters == 3136 * 128 + 128
    assert by_name["fc2"].parameters == 128 * 10 + 10
    assert by_name["conv1"].details == "1->32, kernel 3, stride 1, padding 1"
    assert by_name["dropout"].details == "p 0.25"


def test_trace_shapes_match_the_table_and_the_forward_pass():
    torch.manual_seed(0)
    model = MnistCNN().eval()
    x = torch.randn(1, 28, 28)
    t = trace(model, x)
    assert [(lo.name, lo.kind, tuple(lo.output.shape)) for lo in t.layers] == EXPECTED[1:]
    assert tuple(t.input.shape) == (1, 28, 28)
    with torch.no_grad():
        logits = model(x.unsqueeze(0))[0]
    assert torch.allclose(t.logits, logits, atol=1e-5)
    assert torch.allclose(t.probabilities.sum(), torch.tensor(1.0))
    assert t.prediction == int(logits.argmax())
    assert torch.equal(t["relu1"], t["conv1"].clamp(min=0))


def test_trace_ignores_training_mode_and_leaves_model_untouched():
    torch.manual_seed(0)
    model = MnistCNN().train()  # dropout active in a normal forward pass
    x = torch.randn(1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a, b = trace(model, x), trace(model, x)
    assert torch.equal(a.probabilities, b.probabilities)
    assert torch.equal(a["dropout"], a["flatten"])
    assert model.training and not model._forward_hooks and not model.conv1._forward_hooks
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("cfg", [
    CNNConfig(conv1_channels=8, conv2_channels=16, kernel_size=5, padding=0, pool="avg", hidden_relu=True),
    CNNConfig(kernel_size=5, padding=2),
    MLPConfig(hidden=(256, 64)),
])
def test_variants_table_agrees_with_real_forward(cfg):
    model = build_model(cfg).eval()
    rows = layer_table(model)
    t = trace(model, torch.zeros(1, 28, 28))
    assert [r.output_shape for r in rows[1:]] == [tuple(lo.output.shape) for lo in t.layers]
    assert total_parameters(rows) == count_parameters(model)
    assert config_from_dict(cfg.to_dict()) == cfg


def test_impossible_variant_is_refused():
    with pytest.raises(ValueError):
        MnistCNN(CNNConfig(kernel_size=13, padding=0))
    with pytest.raises(ValueError):
        config_from_dict({"kind": "transformer"})
