"""Every page with every kind of model a visitor can select: the sentences follow the model shown.

The variants are those the Train page builds or an upload may bring: kernel 5, padding 0, average
pooling, a ReLU after fc1, and a deep MLP. Each page must run without an exception or an error box,
and the sentences of the Feature maps, ANN vs CNN and Model pages are checked against the model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from apptest_helpers import run_page, session_model
from streamlit.testing.v1 import AppTest

from cnn_core.architecture import layer_table, nonlinear_layers, total_parameters
from cnn_core.checkpoint import LoadedModel
from cnn_core.evaluate import evaluate
from cnn_core.model import CNNConfig, MLPConfig, ModelConfig, count_parameters
from cnn_core.params import cnn_param_count_for_input
from ui.state import Digit

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "pages").glob("*.py"))
VARIANTS: dict[str, ModelConfig] = {
    "kernel5": CNNConfig(kernel_size=5, padding=2),
    "padding0": CNNConfig(padding=0),
    "avgpool": CNNConfig(pool="avg"),
    "relu_after_fc1": CNNConfig(hidden_relu=True),
    "deep_mlp": MLPConfig(hidden=(256, 128, 64, 32)),
}


def variant(name: str) -> LoadedModel:
    """A randomly initialised model of the variant (seeded), as a session model with a card like an upload's."""
    return session_model(VARIANTS[name], f"variant {name}", origin="uploaded")


def run(page: Path, loaded: LoadedModel, pixels=None) -> AppTest:
    at = run_page(page, model=loaded, digit=None if pixels is None else Digit(pixels, "test digit"))
    assert not at.error, [e.value for e in at.error]
    return at


def text(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info])


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_page_runs_with_every_variant(page, name, test_split):
    at = run(page, variant(name), test_split.images[1].numpy() / 255)
    assert at.title or at.header, f"{page.name} shows nothing for {name}"


@pytest.mark.parametrize("name", [n for n, c in VARIANTS.items() if isinstance(c, CNNConfig)])
def test_feature_maps_sentences_follow_the_model(name, test_split):
    loaded = variant(name)
    at = run(ROOT / "pages" / "1_Feature_maps.py", loaded, test_split.images[2].numpy() / 255)
    words = text(at)
    rows = {r.name: r for r in layer_table(loaded.model)}
    total = total_parameters(list(rows.values()))
    share = rows["fc1"].parameters / total
    assert f"{rows['fc1'].parameters:,} of the network's {total:,} parameters ({share:.1%})" in words
    assert ("most of the network's weights are here" in words) == (share > 0.5)
    bends = [n for n in nonlinear_layers(loaded.model) if not n.startswith("relu")]
    if bends:  # max pooling still bends the signal without the ReLUs
        assert f"only {', '.join(bends)} would still bend the signal" in words
    else:  # average pooling: without ReLU the whole network would be linear
        assert "would collapse into a single linear function" in words
    no_relu_after_fc1 = "relu3" not in rows
    assert ("compose into a single linear map" in words) == no_relu_after_fc1


@pytest.mark.parametrize("name", [n for n, c in VARIANTS.items() if isinstance(c, CNNConfig)])
def test_ann_page_counts_the_selected_cnn(name):
    loaded = variant(name)
    at = run(ROOT / "pages" / "3_ANN_vs_CNN.py", loaded)
    shown = {m.label: m.value for m in at.metric}
    assert shown["CNN, 28×28×1"] == f"{count_parameters(loaded.model):,}"
    assert shown["CNN, 64×64×3"] == f"{cnn_param_count_for_input(loaded.model, (64, 64, 3)):,}"


def test_ann_page_with_an_mlp_selected_says_which_cnn_it_counts():
    at = run(ROOT / "pages" / "3_ANN_vs_CNN.py", variant("deep_mlp"))
    assert any("has no convolutions" in i.value for i in at.info)


@pytest.mark.parametrize("name", ["avgpool", "deep_mlp"])
def test_model_page_measures_the_selected_variant_and_labels_claims(name, test_split):
    loaded = variant(name)
    at = run(ROOT / "pages" / "4_Model.py", loaded)
    expected = evaluate(loaded.model, test_split)
    assert [m.value for m in at.metric if m.label == "Accuracy (measured)"][0] == f"{expected.accuracy:.2%}"
    assert any(h.value == "What the file says" for h in at.header)  # an upload's card: claims, not facts
