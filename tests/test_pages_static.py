"""The Architecture, ANN vs CNN and Model pages, run headless with Streamlit's AppTest.

Every expected number is computed here from cnn_core, never copied from the page or typed in.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from apptest_helpers import run_page
from streamlit.testing.v1 import AppTest
from torch import nn

from cnn_core.architecture import layer_table, output_size, total_parameters
from cnn_core.evaluate import evaluate
from cnn_core.model import MLPConfig
from cnn_core.params import cnn_param_count, mlp_layers, mlp_param_count, share, widths_for_share

PAGES = Path(__file__).resolve().parent.parent / "pages"
ARCHITECTURE = str(PAGES / "2_Architecture.py")
ANN_VS_CNN = str(PAGES / "3_ANN_vs_CNN.py")
MODEL = str(PAGES / "4_Model.py")
MNIST, COLOUR = (28, 28, 1), (64, 64, 3)


def run(page: str, **inputs) -> AppTest:
    """Run ``page`` once, then again with each widget key set to its value; fail on any exception."""
    at = AppTest.from_file(page, default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if inputs:
        for key, value in inputs.items():
            at.get_by_key(key).set_value(value)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    """The value of the one metric called ``label``."""
    values = [m.value for m in at.metric if m.label == label]
    assert len(values) == 1, f"no single metric {label!r} in {[m.label for m in at.metric]}"
    return values[0]


def all_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def chart_keys(at: AppTest) -> set[str]:
    return {c.key for c in at.get("plotly_chart")}


# --- Architecture -------------------------------------------------------------------------------------


def test_architecture_table_lists_every_layer_and_the_total(shipped):
    rows = layer_table(shipped.model)
    at = run(ARCHITECTURE)
    table = at.dataframe[0].value
    assert list(table["name"]) == [r.name for r in rows]
    assert list(table["type"]) == [r.kind for r in rows]
    assert list(table["parameters"]) == [r.parameters for r in rows]
    assert list(table["output shape"]) == [" × ".join(map(str, r.output_shape)) for r in rows]
    total = total_parameters(rows)
    assert total == cnn_param_count() == sum(p.numel() for p in shipped.model.parameters())
    assert metric(at, "Total parameters") == f"{total:,}" == "421,642"
    text = all_text(at)
    # every layer that learns is explained with its own count, and the sum is written out
    for r in rows:
        if r.parameters:
            assert f"**{r.name}**" in text and f"**{r.parameters:,}**" in text
    assert f"= {total:,}** parameters" in text
    conv1 = dict(shipped.model.named_children())["conv1"]
    assert f"{conv1.out_channels} filters × (3×3×{conv1.in_channels} weights + 1 bias)" in text
    # the formula worked on every convolution and pooling layer
    for r in rows:
        if r.size is not None:
            assert r.size.formula() in text
    assert "shape_flow" in chart_keys(at)


def test_calculator_keeps_the_size_with_padding_one():
    at = run(ARCHITECTURE, calc_size=28, calc_kernel=3, calc_padding=1, calc_stride=1, calc_filters=32)
    expected = output_size(28, 3, 1, 1).size
    assert metric(at, "Output size per side") == str(expected) == "28"
    assert metric(at, "Output shape (channels × height × width)") == f"32 × {expected} × {expected}"
    assert not at.warning and not at.error


def test_calculator_warns_when_the_stride_does_not_divide():
    at = run(ARCHITECTURE, calc_size=28, calc_kernel=3, calc_padding=0, calc_stride=2)
    expected = output_size(28, 3, 0, 2)
    assert not expected.exact
    assert metric(at, "Output size per side") == str(expected.size)
    assert len(at.warning) == 1 and "rounds down" in at.warning[0].value
    assert not at.error


def test_calculator_errors_when_the_kernel_does_not_fit():
    at = run(ARCHITECTURE, calc_size=5, calc_kernel=9, calc_padding=1, calc_stride=1)
    assert output_size(5, 9, 1, 1).size < 1
    assert len(at.error) == 1 and "does not fit" in at.error[0].value
    assert "Output size per side" not in [m.label for m in at.metric]


# --- ANN vs CNN ---------------------------------------------------------------------------------------


def cnn_params_by_pytorch(model: nn.Module, hwc: tuple[int, int, int]) -> int:
    """This CNN fed an H×W×C image, counted by PyTorch itself: conv1 re-made for C channels, fc1 sized lazily."""
    h, w, c = hwc
    net = copy.deepcopy(model)
    conv1, fc1 = net.conv1, net.fc1
    net.conv1 = nn.Conv2d(c, conv1.out_channels, conv1.kernel_size, conv1.stride, conv1.padding)
    net.fc1 = nn.LazyLinear(fc1.out_features)
    with torch.no_grad():
        net.eval()(torch.zeros(1, c, h, w))
    return sum(p.numel() for p in net.parameters())


def test_ann_page_default_counts_and_per_neuron_weights(shipped):
    at = run(ANN_VS_CNN)
    hidden = MLPConfig().hidden
    cnn = cnn_param_count()
    assert metric(at, "MLP, 28×28×1") == f"{mlp_param_count(MNIST, hidden):,}"
    assert metric(at, "CNN, 28×28×1") == f"{cnn:,}"
    assert metric(at, "CNN, 64×64×3") == f"{cnn_params_by_pytorch(shipped.model, COLOUR):,}"
    assert metric(at, "MLP neuron, 28×28×1 input") == f"{mlp_layers(MNIST, hidden)[0].weights_per_neuron:,} weights"
    assert metric(at, "MLP neuron, 64×64×3 input") == f"{mlp_layers(COLOUR, hidden)[0].weights_per_neuron:,} weights"
    assert metric(at, "conv1 filter") == f"{shipped.model.conv1.weight[0].numel()} weights"
    # the 'about 7%' claim, with the computed widths and shares
    text = all_text(at)
    best_one = widths_for_share(0.07, MNIST, cnn, depth=1)[0]
    assert f"**{best_one[1]:.1%}**" in text and f"{best_one[0][0]:,} units" in text
    default_share = share(cnn, mlp_param_count(MNIST, hidden))
    assert f"**{default_share:.0%}**" in text
    assert ("the CNN is the bigger one" in text) == (default_share > 1)
    assert "param_bars" in chart_keys(at)
    assert not at.error


def test_ann_page_counts_the_mlp_the_user_asks_for():
    at = run(ANN_VS_CNN, mlp_widths="512, 256")
    assert not at.error
    for label, shape in (("28×28×1", MNIST), ("64×64×3", COLOUR)):
        mlp = mlp_param_count(shape, (512, 256))
        assert metric(at, f"MLP, {label}") == f"{mlp:,}"
        cnn = int(metric(at, f"CNN, {label}").replace(",", ""))
        assert metric(at, f"CNN ÷ MLP, {label}") == f"{share(cnn, mlp):.1%}"
    assert len(at.dataframe) == 2  # the MLP's layers, then the two trained networks
    table = at.dataframe[0].value
    assert list(table["parameters"]) == [d.parameters for s in (MNIST, COLOUR) for d in mlp_layers(s, (512, 256))]
    # the bar chart plots the same numbers
    fig = json.loads([c for c in at.get("plotly_chart") if c.key == "param_bars"][0].proto.spec)
    mlp_bars = [t for t in fig["data"] if t["name"] == "MLP"][0]
    assert [int(v) for v in mlp_bars["y"]] == [mlp_param_count(s, (512, 256)) for s in (MNIST, COLOUR)]
    assert fig["layout"]["yaxis"]["type"] == "log"


def test_ann_page_measures_both_trained_networks(test_split):
    from cnn_core.checkpoint import SHIPPED_MLP_WEIGHTS, load_checkpoint
    from cnn_core.evaluate import accuracy
    from cnn_core.explain import shifted_accuracy

    at = run(ANN_VS_CNN)
    assert not at.error and not at.exception
    table = at.dataframe[1].value
    cnn, mlp = load_checkpoint().model, load_checkpoint(SHIPPED_MLP_WEIGHTS).model
    # Each column says which digits it was measured on, and holds exactly that measurement.
    measured = list(table[f"accuracy, all {len(test_split):,} test digits"])
    assert measured == pytest.approx([accuracy(cnn, test_split), accuracy(mlp, test_split)])
    first = test_split.images[:1000], test_split.labels[:1000]
    shifted = list(table["accuracy, first 1,000 test digits shifted 4 px right"])
    assert shifted == pytest.approx([shifted_accuracy(m, *first, dx=4) for m in (cnn, mlp)])
    assert list(table["parameters"]) == [sum(p.numel() for p in m.parameters()) for m in (cnn, mlp)]
    assert "shift_comparison" in chart_keys(at)
    # the text names the set behind each figure, and the MLP's width comes from the shipped MLP itself
    text = all_text(at)
    assert f"On the first 1,000 test digits, unshifted, the CNN gets {shifted_accuracy(cnn, *first):.1%}" in text
    assert f"one hidden layer of {mlp.fc1.out_features} units" in text


def test_ann_page_takes_no_path_from_the_visitor():
    at = run(ANN_VS_CNN)
    assert [t.key for t in at.text_input] == ["mlp_widths"]  # the only text box: the MLP's widths


@pytest.mark.parametrize("bad, words", [("abc", "is not a whole number"), ("0", "between 1 and"),
                                        ("128, -5", "'-5' is negative"), ("1, 2, 3, 4", "at most 3"),
                                        ("", "at least one"), ("9" * 5000, "between 1 and 100,000")])
def test_ann_page_rejects_bad_widths_with_a_message(bad, words):
    at = run(ANN_VS_CNN, mlp_widths=bad)
    assert len(at.error) == 1 and words in at.error[0].value, [e.value for e in at.error]
    assert len(at.error[0].value) < 200  # a sentence, not the echo of a 5,000-digit number
    assert not [m for m in at.metric if m.label.startswith("MLP, ")]
    # the rest of the page still renders
    assert "article this app follows" in all_text(at)


# --- Model --------------------------------------------------------------------------------------------


def test_model_page_measures_the_shipped_model(test_split, shipped):
    import ui.state

    expected = evaluate(shipped.model, test_split)
    correct = int((expected.predictions == test_split.labels).sum())
    at = AppTest.from_file(MODEL, default_timeout=180)
    at.session_state[ui.state.MODEL_KEY] = ui.state.SHIPPED_ID
    at.run()
    assert not at.exception and not at.error
    assert [m.value for m in at.metric if m.label == "Accuracy (measured)"][0] == f"{expected.accuracy:.2%}"
    assert [m.value for m in at.metric if m.label == "Correct"][0] == f"{correct:,} of {len(test_split):,}"
    assert metric(at, "Parameters") == f"{shipped.card['parameters']:,}"
    assert shipped.card["sha256"] in all_text(at)
    assert {"mnist_confusion", "mnist_per_class"} <= chart_keys(at)
    confusion = json.loads([c for c in at.get("plotly_chart") if c.key == "mnist_confusion"][0].proto.spec)
    assert [[int(v) for v in row] for row in confusion["data"][0]["text"]] == expected.confusion.tolist()
    # the misclassified grid: the most confident mistakes, in order, with true and predicted labels
    captions = [c for img in at.get("image") for c in img.captions if c.endswith(tuple("0123456789"))]
    shown = expected.misclassified[:24].tolist()
    mnist_captions = captions[:len(shown)]
    for caption, i in zip(mnist_captions, shown):
        assert caption.startswith(f"{int(test_split.labels[i])} → {int(expected.predictions[i])} ")
        assert caption.endswith(f"#{i}")
    # the per-class axis says where it starts
    assert any("The axis starts at" in c.value for c in at.caption)


def test_model_page_takes_no_path_from_the_visitor():
    at = run(MODEL)
    assert not at.text_input, [t.key for t in at.text_input]


def test_a_mistake_opens_in_the_explorer(test_split, shipped, monkeypatch):
    """"Open in Feature maps" makes the mistake the current digit and switches to a page the navigation has."""
    import streamlit

    import ui.state

    switched = []

    def switch_page(page):
        switched.append(page)
        streamlit.stop()  # as st.switch_page ends the run

    monkeypatch.setattr(streamlit, "switch_page", switch_page)  # a page run alone has no navigation to switch in
    expected = evaluate(shipped.model, test_split)
    at = run_page(MODEL, select=ui.state.SHIPPED_ID)
    at.button(key="mnist_open").click().run()
    assert not at.exception, [e.value for e in at.exception]
    first = int(expected.misclassified[0])
    digit = at.session_state[ui.state.DIGIT_KEY]
    assert np.array_equal(digit.pixels, test_split.images[first].numpy().astype(np.float32) / 255)
    assert f"#{first}" in digit.source
    assert len(switched) == 1
    app = AppTest.from_file(str(PAGES.parent / "app.py"), default_timeout=180)
    app.run()
    app.switch_page(switched[0]).run()  # the page the button opens is one the app's navigation serves
    assert not app.exception and app.title[0].value == "Feature maps"


def test_training_curves_read_the_history_train_writes():
    from dataclasses import asdict

    from cnn_core.train import EpochStats
    from ui.charts import training_curves

    history = [asdict(EpochStats(e, 1.0 / e, 0.9 + e / 100, 0.95 + e / 200, 60.0)) for e in (1, 2, 3)]
    fig = training_curves(history)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["loss"].y) == [h["loss"] for h in history]
    assert list(by_name["test accuracy"].y) == [h["test_accuracy"] for h in history]
    assert list(by_name["train accuracy"].x) == [1, 2, 3]


def test_model_page_shows_a_full_card_with_its_history(monkeypatch, tmp_path, shipped):
    """The card a real training run writes (cnn_core.train's keys), shown in full with its loss curve."""
    import ui.state
    from cnn_core.checkpoint import load_checkpoint

    history = [{"epoch": e, "loss": 1.0 / e, "train_accuracy": 0.9, "test_accuracy": 0.95, "seconds": 60.0}
               for e in (1, 2)]
    extra = {"command": "python -m cnn_core.train --data D --out models/mnist_cnn.pt", "seed": 7, "epochs": 2,
             "data": {"train": "D/train", "train_examples": 10_000, "test": "D/test", "test_examples": 5_000},
             "history": history}

    def load_with_full_card(path, card_path=None):
        loaded = load_checkpoint(path, card_path)
        loaded.card.update(extra)
        return loaded

    monkeypatch.setattr(ui.state, "load_checkpoint", load_with_full_card)
    ui.state.load_shipped.cache_clear()  # the cached shipped model must not answer for the patched loader
    try:
        at = AppTest.from_file(MODEL, default_timeout=180)
        at.session_state[ui.state.MODEL_KEY] = ui.state.SHIPPED_ID
        at.run()
        assert not at.exception
    finally:
        ui.state.load_shipped.cache_clear()  # later tests get the real card again
    text = all_text(at)
    assert f"`{extra['command']}`" in text and "**Seed**: 7" in text  # exactly as written, in a code span
    assert "10,000 digits from `D/train`" in text
    assert metric(at, "Epochs") == "2"
    fig = json.loads([c for c in at.get("plotly_chart") if c.key == "training_curves"][0].proto.spec)
    loss = [t for t in fig["data"] if t["name"] == "loss"][0]
    assert [float(v) for v in loss["y"]] == [h["loss"] for h in history]
