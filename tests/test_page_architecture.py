"""The Architecture page's sentences about the network, for the shipped CNN and its variants (AppTest).

Every expected number is computed here, from PyTorch's own modules and forward, never copied from the page.
"""

from __future__ import annotations

import re
from pathlib import Path

import apptest_helpers as helpers
import pytest
import torch
from apptest_helpers import session_model
from streamlit.testing.v1 import AppTest
from torch import nn

from cnn_core.architecture import layer_table
from cnn_core.checkpoint import LoadedModel
from cnn_core.model import CNNConfig, MLPConfig
from cnn_core.preprocess import normalise
from cnn_core.samples import load_samples
from ui.state import SHIPPED_ID, Digit

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "2_Architecture.py")
ARTICLE = "Back to AI Basics: CNNs"


def own_model(config, seed: int = 0) -> LoadedModel:
    return session_model(config, seed=seed)


def run_page(loaded: LoadedModel | None = None, digit: Digit | None = None) -> AppTest:
    return helpers.run_page(PAGE, model=loaded, digit=digit, select=SHIPPED_ID, timeout=120)  # else the fixture's


def text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert len(values) == 1, [m.label for m in at.metric]
    return values[0]


def test_the_network_is_introduced_with_the_article_it_comes_from(shipped):
    at = run_page()
    intro = at.markdown[0].value
    assert f"This is the network of the article *{ARTICLE}*" in intro
    assert " → ".join(r.name for r in layer_table(shipped.model)[1:]) in intro


def test_the_table_puts_shape_and_parameters_first_for_a_phone(shipped):
    at = run_page()
    table = at.dataframe[0].value
    assert list(table.columns) == ["#", "name", "output shape", "parameters", "type", "details"]
    rows = layer_table(shipped.model)
    assert list(table["parameters"]) == [r.parameters for r in rows]


def test_fc1_and_fc2_give_the_same_logits_as_one_matrix(shipped):
    model = shipped.model
    s = load_samples()[6]
    digit = Digit(s.pixels, "your digit")
    at = run_page(digit=digit)
    page = text(at)
    # The counts, from PyTorch: the pair's own parameters, and the one layer that replaces it.
    fc1, fc2 = model.fc1, model.fc2
    one = count(nn.Linear(fc1.in_features, fc2.out_features))
    pair = count(fc1) + count(fc2)
    total = count(model)
    kept = total - pair + one
    assert f"**{one:,}** parameters, in place of fc1's {count(fc1):,} and fc2's {count(fc2):,} (**{pair:,}**)" in page
    assert f"So **{pair - one:,} of the {total:,} parameters** ({(pair - one) / total:.0%})" in page
    assert f"with {kept:,} parameters" in page
    assert "371,456 of the 421,642" in page  # the shipped network's numbers, as the issue states them
    # Both paths on the visitor's digit: PyTorch's own forward, and the matrix product built here.
    x = normalise(digit.pixels).reshape(1, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)[0].double()
        before = nn.Sequential(*list(model.children())[:-2])(x)[0].double()
    w = fc2.weight.double() @ fc1.weight.double()
    b = fc2.weight.double() @ fc1.bias.double() + fc2.bias.double()
    logits = at.dataframe[1].value
    torch.testing.assert_close(torch.tensor(logits["two layers"].to_numpy()), expected, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(torch.tensor(logits["one matrix"].to_numpy()), w @ before + b, atol=1e-6, rtol=1e-6)
    difference = float(metric(at, "Largest difference between the two paths"))
    assert difference == pytest.approx(float((expected - (w @ before + b)).abs().max()), rel=0.1, abs=1e-7)
    assert difference < 1e-4
    # What it means for the "7%" argument, from the same counts.
    conv = count(model.conv1) + count(model.conv2)
    assert f"needs {kept:,} ({kept / total:.1%} of them), so by that measure the share is about " \
           f"{0.07 * kept / total:.1%}" in page
    assert f"they hold {conv:,} parameters ({conv / total:.1%})" in page
    assert "the shipped MLP has relu1 between its fc1 and fc2" in page


def test_the_experiment_button_ticks_the_relu_box_on_the_train_page():
    at = run_page()
    at.button(key="arch_train_relu").click().run()
    assert not at.exception
    assert at.session_state["own_hidden_relu"] is True
    assert any("Train your own" in i.value for i in at.info)  # run on its own the page cannot switch pages


@pytest.mark.parametrize("config, words", [
    (CNNConfig(kernel_size=5), ["kernel: 5×5 instead of 3×3"]),
    (CNNConfig(padding=0), ["padding: 0 instead of 1"]),
    (CNNConfig(pool="avg"), ["pooling: average pooling instead of max pooling"]),
    (CNNConfig(conv1_channels=8, conv2_channels=24), ["conv1 filters: 8 instead of 32", "conv2 filters: 24 instead of 64"]),
], ids=["kernel 5", "padding 0", "average pooling", "channels"])
def test_a_variant_is_named_as_one_and_its_sentences_follow_it(config, words):
    loaded = own_model(config)
    at = run_page(loaded)
    intro = at.markdown[0].value
    assert f"This is a variant of the network of the article *{ARTICLE}*" in intro
    for w in words:
        assert w in intro
    page = text(at)
    if config.pool == "avg":
        assert "average pooling takes the mean of each 2×2 window" in page and "keeps the largest" not in page
    else:
        assert "max pooling keeps the largest value of each 2×2 window" in page and "mean" not in page
    rows = layer_table(loaded.model)
    sizes = " ".join(c.value for c in at.caption)
    for r in rows:
        if r.name.startswith("conv") and r.size is not None:
            s = r.size
            expected = "keeps the size" if s.size == s.size_in else f"from {s.size_in} to {s.size}"
            assert f"{r.name} ({s.kernel}×{s.kernel}, stride 1, padding {s.padding})" in sizes and expected in sizes
    # The lesson holds for every variant without a ReLU after fc1, with the variant's own numbers.
    fc1, fc2 = loaded.model.fc1, loaded.model.fc2
    one = count(nn.Linear(fc1.in_features, 10))
    assert f"One 10×{fc1.in_features:,} matrix and 10 biases: **{one:,}** parameters" in page
    assert f"So **{count(fc1) + count(fc2) - one:,} of the {count(loaded.model):,} parameters**" in page
    assert float(metric(at, "Largest difference between the two paths")) < 1e-4


def test_a_relu_after_fc1_makes_the_lesson_not_apply():
    loaded = own_model(CNNConfig(hidden_relu=True))
    at = run_page(loaded, Digit(load_samples()[2].pixels, "your digit"))
    page = text(at)
    assert "ReLU after fc1: yes instead of no" in at.markdown[0].value
    assert "**Here that does not apply:** **relu3** (ReLU) sits between **fc1**" in page
    assert "change nothing the network can express" not in page
    difference = float(re.search(r"differ from the network's by up to \*\*([\d.e+-]+)\*\*", page).group(1))
    assert difference > 1e-3  # multiplying the matrices anyway does not give the network's scores
    assert not any(m.label == "Largest difference between the two paths" for m in at.metric)


def test_an_mlp_is_introduced_as_one_and_has_no_pooling_sentence():
    at = run_page(own_model(MLPConfig(hidden=(64,))))
    intro = at.markdown[0].value
    assert "fully connected network (an MLP)" in intro and ARTICLE in intro
    page = text(at)
    assert "pooling keeps" not in page and "pooling takes" not in page and "formula applies to none" in page
    assert "**relu1** (ReLU) sits between **fc1** (784 → 64) and **fc2** (64 → 10)" in page


def test_a_narrow_fc1_is_rank_limited_not_redundant():
    at = run_page(own_model(CNNConfig(hidden=4)))
    page = text(at)
    assert "rank at most 4" in page and "change nothing the network can express" not in page
