"""What the home page says about the network's answer: the digit, how sure it is, and when not to trust it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch

from cnn_core.checkpoint import LoadedModel
from cnn_core.introspect import Trace
from cnn_core.uncertainty import Uncertainty, UncertaintyError, assess_trace, load_uncertainty
from ui.state import Digit, shipped_model_paths

UNSURE_BELOW = 0.6  # a top probability under this is called unsure on the page


@dataclass(frozen=True)
class Verdict:
    """The answer as the page states it."""

    prediction: int
    confidence: float  # the probability of the prediction (calibrated when the model has a calibration)
    probabilities: np.ndarray  # (10,)
    calibrated: bool
    unusual: bool  # the model's own out-of-distribution score fired
    warning: str | None  # one paragraph for the visitor, or None when nothing needs saying

    @property
    def probabilities_title(self) -> str:
        return "Probabilities (calibrated)" if self.calibrated else "Output probabilities (softmax)"

    @property
    def confidence_help(self) -> str:
        if self.calibrated:
            return ("Calibrated on held-out digits: among answers given with this confidence, about this share is "
                    "right.")
        return "The softmax probability of the answer. This network has no calibration: treat it as a score."


@st.cache_resource(max_entries=8, show_spinner=False)
def _uncertainty(identity: str, weights_path: str | None) -> Uncertainty | None:
    """The calibration and out-of-distribution statistics shipped beside a model's weights (None without).

    Keyed by the model's identity too: the statistics are used only with the model loaded from that file.
    """
    if weights_path is None:
        return None
    try:
        return load_uncertainty(weights_path)
    except UncertaintyError:
        return None  # a missing or changed statistics file: answer without calibration rather than wrongly


def verdict_for(loaded: LoadedModel, model_id: str, digit: Digit, trace: Trace) -> Verdict:
    """The verdict on ``digit``: calibrated probabilities and the out-of-distribution check where the model has
    them, the preprocessing's remarks (several marks), and "unsure" under UNSURE_BELOW."""
    probabilities = trace.probabilities.numpy().astype(float)
    calibrated, unusual = False, False
    stats = _uncertainty(loaded.identity, shipped_model_paths().get(model_id))
    if stats is not None:
        assessment = assess_trace(loaded.model, stats, trace)
        probabilities = np.asarray(assessment.probabilities, dtype=float).reshape(-1)
        calibrated, unusual = True, bool(assessment.unusual)
    prediction = int(probabilities.argmax())
    confidence = float(probabilities[prediction])
    notes = []
    if digit.marks > 1:
        notes.append(digit.message or f"The picture seems to hold {digit.marks} separate marks, maybe more than one "
                     "digit. The network reads one digit at a time: draw or upload a single digit.")
    if unusual:
        notes.append("This does not look like the digits the network learned from, so its answer means little.")
    elif confidence < UNSURE_BELOW:
        second = int(np.argsort(probabilities)[-2])
        notes.append(f"The network is unsure: {prediction} ({confidence:.0%}) or {second} "
                     f"({probabilities[second]:.0%}).")
    if notes:
        notes.append("It still names a digit: its last layer always shares 100% among the ten digits.")
    return Verdict(prediction, confidence, probabilities, calibrated, unusual, " ".join(notes) or None)


def explain_answer(loaded: LoadedModel) -> str:
    """Why a classifier always names one of its classes, with this model's own numbers."""
    last = [m for m in loaded.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    data = loaded.card.get("data") if isinstance(loaded.card.get("data"), dict) else {}
    seen = ("It was also shown scribbles and other non-digits during training, taught to spread its answer "
            "evenly over the ten digits for them, which is why it is less sure of itself on such inputs; but "
            "it still has no \"none of these\" output." if data.get("outliers") else
            "There is no \"none of these\" output: the network was only ever shown digits.")
    return (
        f"The network's last layer has exactly {last.out_features} outputs, one score per digit. Softmax turns "
        "the scores into probabilities that are positive and add up to 100%, so whatever the input (a digit, "
        "a letter, a scribble, a blank page), some digit gets the largest share and becomes the answer. "
        f"{seen}\n\n"
        "That is why the page also checks the input itself (several separate marks mean several digits) and, "
        "for the shipped networks, how far the network's inner representation of your drawing lies from those "
        "of the digits it learned from: when it is far, the page says the answer means little."
    )
