"""Model: the selected network's card, the network measured on test digits, and what dataset shift does to it."""

from __future__ import annotations

import numpy as np
import streamlit as st

from cnn_core.checkpoint import LoadedModel
from cnn_core.data import MnistSplit
from cnn_core.measure import Measurements, SplitMeasurement
from cnn_core.model import count_parameters
from ui.charts import confusion_heatmap, per_class_bars, per_class_comparison, per_class_floor, training_curves
from ui.state import (
    SHIPPED_ID,
    SHIPPED_PEN_ID,
    get_model_by_id,
    get_test_sets,
    measurements,
    model_label,
    model_label_md,
    model_picker,
    selected_model_id,
    set_digit,
    shipped_model_paths,
)
from ui.text import code, plain

st.set_page_config(page_title="Model · CNN Explorer", page_icon="🔢", layout="wide")

PLOT_CONFIG = {"displayModeBar": False}
MISTAKES_SHOWN = 24
GRID_COLS = 8
NOT_RECORDED = "not recorded"
FEATURE_MAPS = "pages/1_Feature_maps.py"


def count_text(value) -> str:
    """A card's count with thousands separators; anything that is not a number as plain text."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else plain(value)


def setting_text(name: str, value) -> str:
    """One training setting of a card as words, e.g. ``batch size 64`` (a train size of None means every digit)."""
    if name == "train_size" and value is None:
        value = "all"
    return plain(f"{name.replace('_', ' ')} {value}", limit=120)


def enlarged(image: np.ndarray, factor: int = 3) -> np.ndarray:
    """A uint8 digit scaled up with square pixels, so it stays sharp."""
    return np.kron(image, np.ones((factor, factor), dtype=np.uint8))


def card_section(loaded: LoadedModel, model_id: str) -> None:
    """The model card: for a shipped or in-app model what its training recorded, for an upload what it claims."""
    card = loaded.card
    uploaded = card.get("origin") == "uploaded"
    metrics = card.get("metrics") if isinstance(card.get("metrics"), dict) else {}
    data = card.get("data") if isinstance(card.get("data"), dict) else {}
    st.header("What the file says" if uploaded else "Model card")
    st.markdown(f"**{model_label_md(model_id)}**")
    if uploaded:
        st.caption("These entries come from the uploaded model card and were not checked, except the architecture "
                   "and the weights' sha256. The figures measured by this app are further down.")
    c1, c2, c3 = st.columns(3)
    c1.metric("Parameters", f"{count_parameters(loaded.model):,}",
              help="Counted on the loaded network.")
    claimed = metrics.get("test_accuracy")
    label = "Test accuracy (the card claims)" if uploaded else "Test accuracy (card)"
    examples = metrics.get("test_examples")
    c2.metric(label, f"{claimed:.2%}" if isinstance(claimed, (int, float)) else NOT_RECORDED,
              help=(f"Measured when the weights were saved, on {examples:,} test digits."
                    if isinstance(examples, int) else "Measured when the weights were saved."))
    epochs = card.get("epochs")
    c3.metric("Epochs", str(epochs) if isinstance(epochs, int) else "–",
              help=None if isinstance(epochs, int) else "The card does not record the number of epochs.")
    details = {
        "Training command": code(card["command"]) if "command" in card else NOT_RECORDED,
        "Seed": count_text(card.get("seed", NOT_RECORDED)),
        "Training settings": (", ".join(setting_text(k, v) for k, v in card["training"].items())
                              if isinstance(card.get("training"), dict) else NOT_RECORDED),
        "Training data": (f"{count_text(data['train_examples'])} digits from {code(data['train'], 200)}"
                          if "train" in data and "train_examples" in data else NOT_RECORDED),
        "Test data": (f"{count_text(data['test_examples'])} digits from {code(data['test'], 200)}"
                      if "test" in data and "test_examples" in data else NOT_RECORDED),
        "Weights sha256": code(card.get("sha256", NOT_RECORDED), 80),
        "Training time": (f"{card['train_seconds']:,.0f} s" if isinstance(card.get("train_seconds"), (int, float))
                          else NOT_RECORDED),
        "PyTorch": count_text(card.get("torch", NOT_RECORDED)),
    }
    st.markdown("\n".join(f"- **{k}**: {v}" for k, v in details.items()))
    history = card.get("history")
    if isinstance(history, list) and history and all(isinstance(h, dict) for h in history):
        # Runs that hold validation digits out measure those after each epoch, not the test digits.
        measured_on = "validation" if "held_out" in data else "test"
        st.plotly_chart(training_curves(history, measured_on=measured_on), key="training_curves",
                        config=PLOT_CONFIG)
        if "held_out" in data:
            st.caption(f"The accuracy after each epoch is on the {count_text(data.get('held_out_examples', '?'))} "
                       "validation digits held out of training; the test digits were measured once, at the end.")
    else:
        st.caption("The card has no training history, so there is no loss curve to show.")


def open_in_explorer(images: MnistSplit, result: SplitMeasurement, key: str, what: str) -> None:
    """A picker of the mistakes and a button that makes the chosen one the current digit on Feature maps."""
    options = {f"#{i}: a {int(images.labels[i])} read as {p} ({c:.0%})": i
               for i, p, c in zip(result.mistakes[:MISTAKES_SHOWN], result.mistake_predictions,
                                  result.mistake_confidences)}
    if not options:
        return
    pick, go = st.columns([3, 1], vertical_alignment="bottom")
    choice = pick.selectbox("Follow a mistake through the network", list(options), key=f"{key}_pick")
    if go.button("Open in Feature maps", key=f"{key}_open"):
        i = options[choice]
        set_digit(images.images[i].numpy().astype(np.float32) / 255, f"{what} #{i} (a {int(images.labels[i])})")
        st.switch_page(FEATURE_MAPS)


def measured_section(result: SplitMeasurement, images: MnistSplit, key: str, what: str) -> None:
    """One test set: accuracy, confusion matrix, per-class accuracy and the most confident mistakes."""
    n, correct = result.n, result.correct
    m1, m2, m3 = st.columns(3)
    m1.metric("Accuracy (measured)", f"{result.accuracy:.2%}")
    m2.metric("Correct", f"{correct:,} of {n:,}")
    m3.metric("Mistakes", f"{n - correct:,}")
    st.caption(f"On {result.source}.")
    left, right = st.columns(2, gap="large")
    with left:
        st.subheader("Confusion matrix")
        st.caption("Row: the true digit; column: what the network answered. The diagonal is right, "
                   "everything else a mistake (colours on a log scale so that single mistakes show).")
        st.plotly_chart(confusion_heatmap(np.array(result.confusion)), key=f"{key}_confusion", config=PLOT_CONFIG)
    with right:
        st.subheader("Per-class accuracy")
        st.caption(f"The share of each digit's examples the network gets right. The axis starts at "
                   f"{per_class_floor(result.per_class):.0%}, not 0%, so that the differences show.")
        st.plotly_chart(per_class_bars(result.per_class), key=f"{key}_per_class", config=PLOT_CONFIG)
        if n - correct:
            worst = int(np.argmin(result.per_class))
            confused = np.array(result.confusion[worst])
            confused[worst] = -1
            st.write(f"The hardest digit here is **{worst}** ({result.per_class[worst]:.1%} right); "
                     f"when it is wrong, the network most often answers **{int(confused.argmax())}**.")
        else:
            st.write("Every digit of this set is classified correctly.")
    shown = result.mistakes[:MISTAKES_SHOWN]
    if not shown:
        return
    st.markdown(f"**The {len(shown)} most confident mistakes** of {n - correct:,}: true digit → the network's "
                "answer (its confidence) · digit number.")
    for start in range(0, len(shown), GRID_COLS):
        row = zip(shown[start:start + GRID_COLS], result.mistake_predictions[start:start + GRID_COLS],
                  result.mistake_confidences[start:start + GRID_COLS])
        for col, (i, predicted, confidence) in zip(st.columns(GRID_COLS), row):
            col.image(enlarged(images.images[i].numpy()), width=84,
                      caption=f"{int(images.labels[i])} → {predicted} ({confidence:.1%}) · #{i}")
    open_in_explorer(images, result, key, what)


def shift_lesson(results: dict[str, Measurements]) -> None:
    """The two shipped CNNs on MNIST and on pen-drawn digits: dataset shift, measured."""
    mnist_only, with_pen = results[SHIPPED_ID], results[SHIPPED_PEN_ID]
    if mnist_only.pen is None or with_pen.pen is None:
        return
    st.header("Dataset shift: MNIST is not what people draw")
    st.write(
        "MNIST digits were written on paper forms by US Census staff and students, then scanned. People at a "
        "browser draw with a mouse, a finger or a pen, in their own national styles: slashed zeros, 1s with a "
        "long flag, 7s with a bar. A network can be excellent on MNIST and still stumble on those. Both shipped "
        "CNNs have exactly the same architecture; one was trained on MNIST only, the other on MNIST plus "
        "pen-drawn digits of other writers."
    )
    names = {SHIPPED_ID: model_label(SHIPPED_ID), SHIPPED_PEN_ID: model_label(SHIPPED_PEN_ID)}
    table = [{"network": names[i], "MNIST test digits": results[i].mnist.accuracy,
              "pen-drawn digits, unseen writers": results[i].pen.accuracy}  # type: ignore[union-attr]
             for i in (SHIPPED_ID, SHIPPED_PEN_ID)]
    st.dataframe(table, hide_index=True, key="shift_table",
                 column_config={k: st.column_config.NumberColumn(format="percent")
                                for k in ("MNIST test digits", "pen-drawn digits, unseen writers")})
    st.plotly_chart(per_class_comparison({names[i]: results[i].pen.per_class  # type: ignore[union-attr]
                                          for i in (SHIPPED_ID, SHIPPED_PEN_ID)}),
                    key="shift_per_class", config=PLOT_CONFIG)
    a_pen, b_pen = mnist_only.pen, with_pen.pen
    worst = int(np.argmin(a_pen.per_class))
    st.write(
        f"On {a_pen.n:,} pen-drawn digits of writers neither network saw, the MNIST-only CNN gets "
        f"**{a_pen.accuracy:.1%}** right and the one trained with pen digits **{b_pen.accuracy:.1%}**; on the "
        f"MNIST test digits they get {mnist_only.mnist.accuracy:.2%} and {with_pen.mnist.accuracy:.2%}. The "
        f"MNIST-only network's weakest pen-drawn digit is **{worst}** ({a_pen.per_class[worst]:.1%}, against "
        f"{b_pen.per_class[worst]:.1%} for the other). The axis starts at "
        f"{per_class_floor(a_pen.per_class, b_pen.per_class):.0%}."
    )
    st.caption("Pick either network in the sidebar to see its mistakes on the pen-drawn digits below.")


# --- the page -------------------------------------------------------------------------------------------

loaded = model_picker()
model_id = selected_model_id()
st.title("The model")
st.write("The network picked in the sidebar: what its model card records, then the network measured by this app "
         "on test digits it never trained on.")
card_section(loaded, model_id)

sets = get_test_sets()
result = measurements(loaded, model_id)
st.header("Measured on test digits")
tabs = st.tabs(["MNIST test digits", "Pen-drawn digits of unseen writers"] if result.pen is not None and
               sets.pen is not None else ["MNIST test digits"])
with tabs[0]:
    measured_section(result.mnist, sets.mnist, "mnist", "MNIST test digit")
if result.pen is not None and sets.pen is not None:
    with tabs[1]:
        measured_section(result.pen, sets.pen, "pen", "pen-drawn digit")

if {SHIPPED_ID, SHIPPED_PEN_ID} <= set(shipped_model_paths()):
    shift_lesson({i: measurements(get_model_by_id(i), i) for i in (SHIPPED_ID, SHIPPED_PEN_ID)})
