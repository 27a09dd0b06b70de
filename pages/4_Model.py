"""Model: the card of the shipped weights, and the network measured on MNIST test digits, mistakes included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st
from torch import nn

from cnn_core.data import MnistDataError, MnistSplit, load_mnist
from cnn_core.evaluate import EvalResult, evaluate
from cnn_core.samples import data_dir
from ui.charts import confusion_heatmap, per_class_bars, training_curves
from ui.state import model_picker

st.set_page_config(page_title="Model · CNN Explorer", page_icon="🔢", layout="wide")

PLOT_CONFIG = {"displayModeBar": False}
MISTAKES_SHOWN = 24
GRID_COLS = 8
NOT_RECORDED = "not recorded"


@st.cache_resource(max_entries=8, show_spinner=False)
def evaluate_folder(folder: str, weights_sha256: str, _model: nn.Module) -> tuple[MnistSplit, EvalResult]:
    """The test split of ``folder`` and the model's results on it, computed once per folder and weights.

    Cached as a resource (not copied on every rerun): the split and the result are only read.
    """
    split = load_mnist(folder, "test")
    return split, evaluate(_model, split)


def count_text(value) -> str:
    """A card's count with thousands separators; anything that is not a number as it is written."""
    return f"{value:,}" if isinstance(value, int) else str(value)


def setting_text(name: str, value) -> str:
    """One training setting of a card as words, e.g. ``batch size 64`` (a train size of None means every digit)."""
    if name == "train_size" and value is None:
        value = "all"
    return f"{name.replace('_', ' ')} {value}"


def enlarged(image: np.ndarray, factor: int = 3) -> np.ndarray:
    """A uint8 digit scaled up with square pixels, so it stays sharp."""
    return np.kron(image, np.ones((factor, factor), dtype=np.uint8))


loaded = model_picker()
card = loaded.card
metrics = card.get("metrics") or {}
data = card.get("data") or {}

st.title("The model")
st.write("The selected network (pick another in the sidebar) as its model card describes it, and then "
         "measured again here on MNIST test digits.")

st.header("Model card")
st.markdown(f"**{loaded.name}**")
c1, c2, c3 = st.columns(3)
c1.metric("Parameters", count_text(card.get("parameters", NOT_RECORDED)))
card_accuracy = metrics.get("test_accuracy")
card_examples = metrics.get("test_examples")
c2.metric("Test accuracy (card)",
          f"{card_accuracy:.2%}" if isinstance(card_accuracy, (int, float)) else NOT_RECORDED,
          help=f"Measured when the weights were saved, on {card_examples:,} test digits."
          if isinstance(card_examples, int) else "Measured when the weights were saved.")
c3.metric("Epochs", str(card["epochs"]) if "epochs" in card else "–",
          help=None if "epochs" in card else "The card does not record the number of epochs.")

details = {
    "Training command": f"`{card['command']}`" if "command" in card else NOT_RECORDED,
    "Seed": str(card.get("seed", NOT_RECORDED)),
    "Training settings": (", ".join(setting_text(k, v) for k, v in card["training"].items())
                          if isinstance(card.get("training"), dict) else NOT_RECORDED),
    "Training data": (f"{count_text(data['train_examples'])} digits from `{data['train']}`"
                      if "train" in data and "train_examples" in data else NOT_RECORDED),
    "Test data": (f"{count_text(data['test_examples'])} digits from `{data['test']}`"
                  if "test" in data and "test_examples" in data else NOT_RECORDED),
    "Weights sha256": f"`{card.get('sha256', NOT_RECORDED)}`",
    "Training time": (f"{card['train_seconds']:,.0f} s" if isinstance(card.get("train_seconds"), (int, float))
                      else NOT_RECORDED),
    "PyTorch": str(card.get("torch", NOT_RECORDED)),
}
st.markdown("\n".join(f"- **{k}**: {v}" for k, v in details.items()))
if card.get("history"):
    st.plotly_chart(training_curves(card["history"]), key="training_curves", config=PLOT_CONFIG)
else:
    st.caption("The card has no training history, so there is no loss curve to show.")

st.header("Measured on MNIST test digits")
folder = st.text_input("MNIST folder (IDX files, gzipped or not)", value=str(data_dir()), key="mnist_folder",
                       help="A folder with test-*-images-idx3-ubyte and test-*-labels-idx1-ubyte files "
                            "(or the official t10k-* names).").strip()
if not folder:
    st.info("Enter the folder that holds the MNIST IDX files to measure the model.")
    st.stop()

try:
    with st.spinner(f"Classifying the test digits in {folder}..."):
        split, result = evaluate_folder(str(Path(folder).expanduser()), str(card.get("sha256", "")), loaded.model)
except (MnistDataError, OSError) as e:  # OSError: e.g. a folder we may not read
    st.error(f"No usable MNIST test digits: {e}")
    st.info("Point the box above at a folder of MNIST IDX files to see the accuracy, the confusion matrix "
            "and the mistakes. The model card above does not need it.")
    st.stop()

n = len(split)
correct = int(result.confusion.diagonal().sum())
m1, m2, m3 = st.columns(3)
m1.metric("Test accuracy (measured now)", f"{result.accuracy:.2%}")
m2.metric("Correct", f"{correct:,} of {n:,}")
m3.metric("Mistakes", f"{n - correct:,}")
st.caption(f"Digits from `{split.source}`.")
if n == 0:
    st.info("The folder's test files hold no digits.")
    st.stop()

left, right = st.columns(2, gap="large")
with left:
    st.subheader("Confusion matrix")
    st.caption("Row: the true digit; column: what the network answered. The diagonal is right, "
               "everything else a mistake (colours on a log scale so that single mistakes show).")
    st.plotly_chart(confusion_heatmap(result.confusion), key="confusion", config=PLOT_CONFIG)
with right:
    st.subheader("Per-class accuracy")
    st.caption("The share of each digit's test examples the network gets right.")
    st.plotly_chart(per_class_bars(result.per_class), key="per_class", config=PLOT_CONFIG)
    worst = int(np.argmin(result.per_class))
    confused = result.confusion[worst].clone()
    confused[worst] = -1
    st.write(f"The hardest digit here is **{worst}** ({result.per_class[worst]:.1%} right); "
             f"when it is wrong, the network most often answers **{int(confused.argmax())}**."
             if n - correct else "Every test digit is classified correctly.")

st.subheader("Misclassified test digits")
shown = result.misclassified[:MISTAKES_SHOWN].tolist()
if not shown:
    st.success("No mistakes on this split.")
else:
    st.caption(f"The {len(shown)} most confident mistakes of {n - correct:,}: true digit → the network's answer "
               "(its confidence) · test digit number.")
    for start in range(0, len(shown), GRID_COLS):
        for col, i in zip(st.columns(GRID_COLS), shown[start:start + GRID_COLS]):
            with col:
                st.image(enlarged(split.images[i].numpy()), width=84,
                         caption=f"{int(split.labels[i])} → {int(result.predictions[i])} "
                                 f"({float(result.confidences[i]):.1%}) · #{i}")
