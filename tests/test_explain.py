"""cnn_core.explain: saliency, shifted digits, top-activating digits and receptive-field chains."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnn_core.architecture import Region, layer_table, receptive_field
from cnn_core.data import take, to_input
from cnn_core.evaluate import accuracy
from cnn_core.explain import (
    cells_in_padding,
    forward_layers,
    linear_weight_map,
    probabilities,
    receptive_chain,
    saliency,
    shift_accuracy_curve,
    shift_images,
    shift_sensitivity,
    shifted_accuracy,
    thicken,
    top_activating,
)
from cnn_core.introspect import trace
from cnn_core.preprocess import normalise


def pixels_of(split, i: int) -> np.ndarray:
    return split.images[i].numpy().astype(np.float32) / 255


@pytest.fixture(scope="module")
def small_split(test_split):
    return take(test_split, 400)


@pytest.fixture(scope="module", autouse=True)
def model_is_left_alone(shipped):
    """Every test here must leave the shared model exactly as it was: same weights, no hooks, no grads."""
    before = {k: v.clone() for k, v in shipped.model.state_dict().items()}
    yield
    after = shipped.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    for module in shipped.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    assert all(not p.requires_grad and p.grad is None for p in shipped.model.parameters())
    assert not shipped.model.training


# --------------------------------------------------------------------------- saliency


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_x_input"])
@pytest.mark.parametrize("index", [0, 1, 2])
def test_saliency_is_finite_input_shaped_and_on_the_ink(shipped, test_split, method, index):
    pixels = pixels_of(test_split, index)
    sal = saliency(shipped.model, pixels, method=method)
    assert sal.attributions.shape == (28, 28)
    assert torch.isfinite(sal.attributions).all()
    assert sal.target == trace(shipped.model, normalise(pixels)).prediction
    ink = torch.from_numpy(pixels) > 0.5
    near_ink = thicken(torch.from_numpy(pixels), 3) > 0  # ink and 3 px around it
    far = ~near_ink
    assert far.sum() > 100 and ink.sum() > 20
    size = sal.attributions.abs()
    assert size[ink].mean() > size[far].mean()
    assert size[ink].sum() > 0


def test_integrated_gradients_add_up_to_the_score_difference(shipped, test_split):
    pixels = pixels_of(test_split, 3)
    sal = saliency(shipped.model, pixels, method="integrated_gradients", steps=64)
    logits = forward_layers(shipped.model, torch.stack([normalise(pixels), normalise(np.zeros_like(pixels))]))
    target = int(logits[0].argmax())
    assert sal.logit == pytest.approx(float(logits[0, target]), abs=1e-4)
    assert sal.baseline_logit == pytest.approx(float(logits[1, target]), abs=1e-4)
    difference = sal.logit - sal.baseline_logit
    assert float(sal.attributions.sum()) == pytest.approx(difference, rel=0.02, abs=0.05)


def test_saliency_of_another_class_and_bad_arguments(shipped, test_split):
    pixels = pixels_of(test_split, 0)
    predicted = trace(shipped.model, normalise(pixels)).prediction
    other = (predicted + 1) % 10
    a = saliency(shipped.model, pixels, target=other, method="gradient_x_input")
    b = saliency(shipped.model, pixels, target=predicted, method="gradient_x_input")
    assert a.target == other and not torch.allclose(a.attributions, b.attributions)
    with pytest.raises(ValueError):
        saliency(shipped.model, pixels, target=10)
    with pytest.raises(ValueError):
        saliency(shipped.model, pixels, method="guesswork")  # type: ignore[arg-type]


def test_gradient_x_input_is_pixel_times_the_score_gradient(shipped, test_split):
    """Against a finite difference: nudging one inked pixel changes the score by about its gradient."""
    pixels = pixels_of(test_split, 4)
    sal = saliency(shipped.model, pixels, method="gradient_x_input")
    r, c = np.unravel_index(np.argmax(pixels), pixels.shape)
    eps = 1e-3
    up, down = pixels.copy(), pixels.copy()
    up[r, c] += eps
    down[r, c] -= eps
    with torch.inference_mode():
        scores = forward_layers(shipped.model, torch.stack([normalise(up), normalise(down)]))[:, sal.target]
    gradient = float(scores[0] - scores[1]) / (2 * eps)
    assert float(sal.attributions[r, c]) == pytest.approx(pixels[r, c] * gradient, rel=0.05, abs=1e-3)


# --------------------------------------------------------------------------- shifting and thickening


def test_shift_images_fills_with_zeros_instead_of_wrapping():
    img = torch.zeros(28, 28)
    img[5, 27] = 1.0
    img[0, 3] = 0.5
    right = shift_images(img, 1, 0)
    assert right.sum() == 0.5 and right[0, 4] == 0.5  # the pixel at the right edge left the frame
    down = shift_images(img, 0, 2)
    assert down[7, 27] == 1.0 and down[2, 3] == 0.5 and down.sum() == 1.5
    up = shift_images(img, 0, -1)
    assert up[4, 27] == 1.0 and up.sum() == 1.0  # row 0 went out at the top, nothing came round
    left = shift_images(img, -3, 0)
    assert left[0, 0] == 0.5 and left[5, 24] == 1.0 and left[:, 25:].sum() == 0
    assert torch.equal(shift_images(img, 0, 0), img)
    assert shift_images(img, 28, 0).sum() == 0
    batch = torch.stack([img, 2 * img])
    assert torch.equal(shift_images(batch, 2, 1)[1], 2 * shift_images(img, 2, 1))


def test_thicken_is_a_3x3_dilation():
    img = torch.zeros(9, 9)
    img[4, 4] = 0.8
    once = thicken(img, 1)
    assert torch.equal(once[3:6, 3:6], torch.full((3, 3), 0.8)) and once.sum() == pytest.approx(0.8 * 9)
    assert (thicken(img, 2) > 0).sum() == 25
    assert torch.equal(thicken(img, 0), img)


def test_shift_sensitivity_at_zero_is_the_plain_prediction(shipped, test_split):
    pixels = pixels_of(test_split, 5)
    tr = trace(shipped.model, normalise(pixels))
    s = shift_sensitivity(shipped.model, pixels, range(-2, 3), thickness=(0, 1))
    assert s.shifts == [-2, -1, 0, 1, 2] and s.grid.shape == (5, 5, 10)
    assert torch.allclose(s.plain, tr.probabilities, atol=1e-5)
    assert s.predicted == tr.prediction
    assert torch.allclose(s.thickened[0], tr.probabilities, atol=1e-5)
    # Each point is the network's answer for the moved (or thickened) image.
    moved = trace(shipped.model, normalise(shift_images(torch.from_numpy(pixels), 2, 0).numpy()))
    assert torch.allclose(s.horizontal[4], moved.probabilities, atol=1e-5)
    moved = trace(shipped.model, normalise(shift_images(torch.from_numpy(pixels), -1, -2).numpy()))
    assert torch.allclose(s.grid[0, 1], moved.probabilities, atol=1e-5)
    assert torch.allclose(s.vertical[0], s.grid[0, 2])
    thick = trace(shipped.model, normalise(thicken(torch.from_numpy(pixels), 1).numpy()))
    assert torch.allclose(s.thickened[1], thick.probabilities, atol=1e-5)
    with pytest.raises(ValueError):
        shift_sensitivity(shipped.model, pixels, [1, 2])


def test_shifted_accuracy_without_a_shift_is_the_plain_accuracy(shipped, small_split):
    assert shifted_accuracy(shipped.model, small_split.images, small_split.labels, 0, 0) == pytest.approx(
        accuracy(shipped.model, small_split))


def test_shifted_accuracy_measures_the_shifted_digits(shipped, small_split):
    images = small_split.images
    moved = torch.zeros_like(images)
    moved[:, 2:, :-3] = images[:, :-2, 3:]  # 3 px left and 2 px down, by slicing
    with torch.inference_mode():
        expected = float((shipped.model(to_input(moved)).argmax(1) == small_split.labels).float().mean())
    got = shifted_accuracy(shipped.model, images, small_split.labels, dx=-3, dy=2, batch_size=128)
    assert got == pytest.approx(expected)
    assert torch.equal(small_split.images, images)  # the caller's images are not shifted in place


def test_shift_accuracy_curve_is_shifted_accuracy_per_shift(shipped, test_split):
    split = take(test_split, 150)
    curve = shift_accuracy_curve(shipped.model, split.images, split.labels, [-2, 0, 3])
    assert curve.n_images == 150 and curve.shifts == [-2, 0, 3]
    assert curve.horizontal[1] == curve.vertical[1] == shifted_accuracy(shipped.model, split.images, split.labels)
    assert curve.horizontal[2] == shifted_accuracy(shipped.model, split.images, split.labels, dx=3)
    assert curve.vertical[0] == shifted_accuracy(shipped.model, split.images, split.labels, dy=-2)


def test_probabilities_accepts_uint8_and_float_images(shipped, small_split):
    uint8 = small_split.images[:5]
    p_uint8 = probabilities(shipped.model, uint8)
    p_float = probabilities(shipped.model, uint8.float() / 255)
    assert p_uint8.shape == (5, 10)
    assert torch.allclose(p_uint8, p_float, atol=1e-6)
    assert torch.allclose(p_uint8.sum(1), torch.ones(5), atol=1e-5)


# --------------------------------------------------------------------------- top-activating digits


@pytest.mark.parametrize("layer", ["conv1", "conv2", "relu2"])
def test_top_activating_is_sorted_and_matches_a_direct_trace(shipped, test_split, layer):
    split = take(test_split, 120)
    top = top_activating(shipped.model, split.images, layer, top_k=5, batch_size=50)
    channels = top.indices.shape[0]
    assert top.indices.shape == top.values.shape == (channels, 5) and top.positions.shape == (channels, 5, 2)
    assert top.n_images == 120
    assert (top.values[:, :-1] >= top.values[:, 1:]).all()  # best first
    # Every image's own maximum, from a plain trace of each image.
    maxima = torch.stack([trace(shipped.model, to_input(split.images[i:i + 1])[0])[layer].flatten(1).max(1).values
                          for i in range(len(split))]).T  # (C, N)
    for ch in (0, channels // 2, channels - 1):
        for rank in range(5):
            i = int(top.indices[ch, rank])
            assert float(top.values[ch, rank]) == pytest.approx(float(maxima[ch, i]), abs=1e-5)
            r, c = top.positions[ch, rank].tolist()
            single = trace(shipped.model, to_input(split.images[i:i + 1])[0])[layer]
            assert float(single[ch, r, c]) == pytest.approx(float(top.values[ch, rank]), abs=1e-5)
        # Nothing left out beats the last one kept.
        assert float(maxima[ch].sort(descending=True).values[4]) == pytest.approx(float(top.values[ch, -1]),
                                                                                   abs=1e-5)


def test_top_activating_does_not_depend_on_the_batch_size(shipped, test_split):
    split = take(test_split, 90)
    a = top_activating(shipped.model, split.images, "conv1", 3, batch_size=90)
    b = top_activating(shipped.model, split.images, "conv1", 3, batch_size=7)
    assert torch.allclose(a.values, b.values, atol=1e-6)
    floats = top_activating(shipped.model, split.images.float() / 255, "conv1", 3)
    assert torch.allclose(a.values, floats.values, atol=1e-5)


def test_top_activating_refuses_vectors_and_empty_input(shipped, test_split):
    with pytest.raises(ValueError):
        top_activating(shipped.model, test_split.images[:4], "fc1")
    with pytest.raises(ValueError):
        top_activating(shipped.model, test_split.images[:0], "conv1")


# --------------------------------------------------------------------------- receptive fields


def test_receptive_chain_ends_at_the_receptive_field(shipped):
    model = shipped.model
    rows = [r for r in layer_table(model)[1:] if len(r.output_shape) == 3]
    for row in rows:
        _, h, w = row.output_shape
        for r, c in [(0, 0), (h // 2, w // 3), (h - 1, w - 1)]:
            chain = receptive_chain(model, row.name, r, c)
            assert chain[0].layer == row.name and chain[0].region == Region(r, r, c, c)
            assert chain[-1].layer == "input"
            assert chain[-1].region == receptive_field(model, row.name, r, c)
            heights = [w_.region.height for w_ in chain]
            assert heights == sorted(heights)  # the window only grows on the way back


def test_receptive_chain_of_conv2_grows_through_pooling(shipped):
    chain = receptive_chain(shipped.model, "conv2", 5, 5)
    k = shipped.model.conv2.kernel_size[0]
    assert [w.layer for w in chain] == ["conv2", "pool1", "relu1", "input"]
    pool1, relu1, image = chain[1].region, chain[2].region, chain[3].region
    assert pool1.height == k  # the 3x3 window of conv2 on pool1...
    assert relu1.height == 2 * k  # ...covers twice as many rows before a 2x2 pooling of stride 2...
    assert image.height == 2 * k + shipped.model.conv1.kernel_size[0] - 1  # ...and conv1 adds kernel - 1
    with pytest.raises(ValueError):
        receptive_chain(shipped.model, "fc1", 0, 0)


def test_cells_in_padding():
    assert cells_in_padding(Region(-1, 1, -1, 1)) == 5
    assert cells_in_padding(Region(10, 12, 10, 12)) == 0
    assert cells_in_padding(Region(-3, 4, 26, 33)) == 64 - 5 * 2


def test_linear_weight_map_is_the_weight_size_per_position(shipped):
    fc1 = shipped.model.fc1
    flat_shape = [r for r in layer_table(shipped.model) if r.name == "pool2"][0].output_shape
    m = linear_weight_map(shipped.model, "fc1", 7)
    assert m.shape == flat_shape[1:]
    expected = fc1.weight[7].reshape(flat_shape).norm(dim=0)
    assert torch.allclose(m, expected)
    assert float((m ** 2).sum()) == pytest.approx(float((fc1.weight[7] ** 2).sum()), rel=1e-5)
    with pytest.raises(ValueError):
        linear_weight_map(shipped.model, "fc2", 0)


def test_forward_layers_matches_the_trace(shipped, test_split):
    x = to_input(test_split.images[:3])
    tr = trace(shipped.model, x[1])
    with torch.inference_mode():
        assert torch.allclose(forward_layers(shipped.model, x, "pool1")[1], tr["pool1"])
        assert torch.allclose(forward_layers(shipped.model, x)[1], tr.logits, atol=1e-5)
        assert torch.allclose(F.softmax(forward_layers(shipped.model, x), 1)[1], tr.probabilities, atol=1e-6)
    with pytest.raises(KeyError):
        forward_layers(shipped.model, x, "conv7")
