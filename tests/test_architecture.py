import pytest
import torch

from cnn_core.architecture import layer_table, output_size, receptive_field
from cnn_core.model import CNNConfig, MnistCNN
from cnn_core.params import cnn_param_count, mlp_layers, mlp_param_count, widths_for_share


def test_output_size_formula_on_the_real_layers():
    rows = {r.name: r for r in layer_table(MnistCNN())}
    assert rows["conv1"].size.formula() == "(28 + 2*1 - 3) / 1 + 1 = 27 / 1 + 1 = 28"
    assert rows["pool1"].size.formula() == "(28 + 2*0 - 2) / 2 + 1 = 26 / 2 + 1 = 14"
    assert rows["pool2"].size.size == 7 and rows["pool2"].size.exact
    assert rows["fc1"].size is None


def test_output_size_flags_uneven_division():
    s = output_size(28, kernel=3, padding=0, stride=2)
    assert s.size == 13 and not s.exact
    assert "rounded down from 13.50" in s.formula()
    assert output_size(7, 2, 0, 2).size == 3 and not output_size(7, 2, 0, 2).exact
    with pytest.raises(ValueError):
        output_size(0, 3)


@pytest.mark.parametrize("layer,size", [("conv1", 3), ("relu1", 3), ("pool1", 4), ("conv2", 8), ("relu2", 8), ("pool2", 10)])
def test_receptive_field_sizes(layer, size):
    r = receptive_field(MnistCNN(), layer, 3, 2)
    assert (r.height, r.width) == (size, size)


def test_receptive_field_positions_and_clipping():
    m = MnistCNN()
    # Independent oracle: the input pixels whose change moves conv1's output (0, 0), found by autograd.
    x = torch.zeros(1, 1, 28, 28, requires_grad=True)
    m.conv1(x)[0, 0, 0, 0].backward()
    rows, cols = torch.nonzero(m.conv1.weight[0, 0] != 0, as_tuple=True)
    assert len(rows) == 9  # every weight of the random filter is non-zero: all 9 cells count
    seen = torch.nonzero(x.grad[0, 0] != 0)
    found = receptive_field(m, "conv1", 0, 0).clipped()
    assert (found.top, found.bottom, found.left, found.right) == (
        int(seen[:, 0].min()), int(seen[:, 0].max()), int(seen[:, 1].min()), int(seen[:, 1].max()))
    r = receptive_field(m, "conv1", 0, 0)
    assert (r.top, r.left, r.bottom, r.right) == (-1, -1, 1, 1)  # one row/col of zero padding
    assert (r.clipped().top, r.clipped().height) == (0, 2)
    r = receptive_field(m, "pool2", 6, 6)
    assert (r.top, r.bottom) == (21, 30) and r.clipped().bottom == 27
    full = receptive_field(m, "fc1")
    assert (full.height, full.width) == (28, 28)
    # a 5x5 kernel without padding sees more
    v = MnistCNN(CNNConfig(kernel_size=5, padding=0))
    assert receptive_field(v, "conv2", 0, 0).height == 5 + 1 + 4 * 2


def test_mlp_counts_and_weights_per_neuron():
    layers = mlp_layers((28, 28, 1), [128])
    assert layers[0].weights_per_neuron == 784
    assert mlp_layers((64, 64, 3), [128])[0].weights_per_neuron == 12_288
    assert mlp_param_count((28, 28, 1), [128]) == 784 * 128 + 128 + 128 * 10 + 10
    assert mlp_param_count((28, 28, 1), [512, 256]) == 784 * 512 + 512 + 512 * 256 + 256 + 2570
    assert cnn_param_count() == 421_642
    with pytest.raises(ValueError):
        mlp_layers((28, 28, 1), [0])


def test_widths_for_share_are_sorted_by_closeness():
    rows = widths_for_share(0.07, (28, 28, 1), 421_642)
    shares = [abs(s - 0.07) for _, s in rows]
    assert shares == sorted(shares)
    hidden, s = rows[0]
    assert s == pytest.approx(421_642 / mlp_param_count((28, 28, 1), hidden))
