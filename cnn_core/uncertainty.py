"""Honest uncertainty: calibrated probabilities, and a flag for inputs unlike any digit the model saw.

Softmax always names one of ten digits, however strange the input, and the raw probabilities
of a network trained to near-zero loss are overconfident. Two remedies, both computed from the
model itself, pure torch/numpy:

- **Temperature scaling.** The logits are divided by one number T, fitted on held-out validation
  digits so that the probabilities match how often the model is right (it never changes the
  predicted digit). Expected calibration error (ECE) measures the match.
- **An unusual-input score**, one of:

  * ``mahalanobis``: the input of the network's last Linear layer (the 128 ``fc1`` outputs for
    the CNN; the last hidden layer for an MLP) compared with the training digits' class means,
    using their shared (pooled within-class) covariance: the squared Mahalanobis distance to the
    nearest class mean. Digits land near one of the ten means; many non-digits far from all.
  * ``energy``: minus T times the log of the summed exponentials of the calibrated logits, i.e.
    how little total evidence the network has for any digit. Strong for a network trained with
    outlier exposure (cnn_core.outliers), which learned to give non-digits no evidence.
  * ``both``: the larger of the two, each measured in units of its own validation spread.

  The threshold is the score that a chosen share of real validation digits exceeds (the
  false-alarm rate). Which score a model uses is chosen on validation data too: the one that
  flags most generated non-digits (made from the validation writers' strokes) at that threshold.

What a model needs is stored beside its weights (``NAME.uncertainty.npz``, loaded with
``allow_pickle=False``); its sha256 is in the model card, so a stale file is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import MnistSplit, to_input
from .introspect import Trace, inference_steps

NUM_CLASSES = 10
SCORES = ("mahalanobis", "energy", "both")
SUFFIX = ".uncertainty.npz"
SCORE_MEANINGS = {
    "mahalanobis": "squared Mahalanobis distance of the last Linear layer's input to the nearest training class "
                   "mean (shared covariance)",
    "energy": "energy of the calibrated logits: -T log sum exp(logits / T)",
    "both": "the larger of the Mahalanobis and energy scores, each in units of its spread on validation digits",
}
DEFAULT_FALSE_ALARM = 0.02  # share of real validation digits the threshold lets through as "unusual"
ECE_BINS = 15
MAX_FEATURES = 1024  # the widest hidden layer the family allows (cnn_core.model.LIMITS)


class UncertaintyError(ValueError):
    """An uncertainty file that cannot be used with its model; str(e) says why."""


@dataclass(frozen=True)
class Uncertainty:
    """What a model needs for calibrated probabilities and the unusual-input flag."""

    temperature: float  # logits are divided by this before the softmax
    means: np.ndarray  # (10, D) float64: class means of the last Linear layer's input on training digits
    precision: np.ndarray  # (D, D) float64: inverse of their shared within-class covariance
    threshold: float  # squared Mahalanobis distance above which an input is unusual
    false_alarm_target: float  # share of real validation digits above the threshold, by construction
    rates: Mapping[str, float] = field(default_factory=dict)  # measured figures (ECE, false-alarm rates...)
    score: str = "mahalanobis"  # which score (see SCORES)
    scales: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)  # "both": (centre, unit) of each score


@dataclass(frozen=True)
class Assessment:
    """The model's answer for one input, with honest uncertainty."""

    prediction: int
    probabilities: np.ndarray  # (10,) calibrated (temperature-scaled)
    raw_probabilities: np.ndarray  # (10,) the model's own softmax
    confidence: float  # calibrated probability of the predicted digit
    score: float  # the model's unusual-input score (see Uncertainty.score); higher is more unusual
    threshold: float
    unusual: bool  # score > threshold: the input is unlike the digits the model was trained on


# --------------------------------------------------------------------------- features


def last_linear(model: nn.Sequential) -> int:
    """Index, among the model's children, of its last Linear layer (fc2 for the CNN)."""
    layers = list(model)
    for i in range(len(layers) - 1, -1, -1):
        if isinstance(layers[i], nn.Linear):
            return i
    raise ValueError("the model has no Linear layer")


@torch.inference_mode()
def features_and_logits(model: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The input of the last Linear layer and the logits, for a normalised batch (N, 1, 28, 28).

    A pure function of the model and the input: the layers in order, as at inference (no hooks).
    """
    cut = last_linear(model)
    features = x
    for i, (_, _, h) in enumerate(inference_steps(model, x)):
        if i == cut - 1:
            features = h
    return features.flatten(1).double(), h.double()


def trace_features_and_logits(model: nn.Sequential, tr: Trace) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`features_and_logits` read off a trace of one input, (1, F) and (1, 10): no second forward pass."""
    cut = last_linear(model)
    features = tr.layers[cut - 1].output if cut else tr.input
    return features.reshape(1, -1).double(), tr.logits.reshape(1, -1).double()


def _features_of(model: nn.Sequential, split: MnistSplit, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    feats, logits = [], []
    for i in range(0, len(split), batch):
        f, z = features_and_logits(model, to_input(split.images[i:i + batch]))
        feats.append(f.numpy())
        logits.append(z.numpy())
    return np.concatenate(feats), np.concatenate(logits)


def mahalanobis(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row of ``features`` to the nearest of ``means``."""
    diff = features[:, None, :] - means[None, :, :]  # (N, 10, D)
    d2 = np.einsum("ncd,de,nce->nc", diff, precision, diff)
    return d2.min(axis=1)


def energy(logits: np.ndarray, temperature: float) -> np.ndarray:
    """-T * log(sum(exp(logits / T))) per row: low when the network has strong evidence for some digit."""
    z = np.asarray(logits, np.float64) / temperature
    m = z.max(axis=1)
    return -temperature * (m + np.log(np.exp(z - m[:, None]).sum(axis=1)))


def raw_scores(features: np.ndarray, logits: np.ndarray, means: np.ndarray, precision: np.ndarray,
               temperature: float) -> dict[str, np.ndarray]:
    """Both basic scores of each input: squared Mahalanobis distance and energy."""
    return {"mahalanobis": mahalanobis(features, means, precision), "energy": energy(logits, temperature)}


def combine(raw: Mapping[str, np.ndarray], score: str, scales: Sequence[float]) -> np.ndarray:
    """The score named ``score`` from the raw scores; "both" puts each in units of its validation spread."""
    if score in ("mahalanobis", "energy"):
        return raw[score]
    if score == "both":
        m_centre, m_unit, e_centre, e_unit = scales
        return np.maximum((raw["mahalanobis"] - m_centre) / m_unit, (raw["energy"] - e_centre) / e_unit)
    raise ValueError(f"unknown score {score!r}")


def _spread(values: np.ndarray, false_alarm: float) -> tuple[float, float]:
    """(median, distance from the median to the threshold quantile): a score's unit on validation digits."""
    centre = float(np.median(values))
    return centre, max(float(np.quantile(values, 1 - false_alarm)) - centre, 1e-12)


# --------------------------------------------------------------------------- calibration


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64, numerically stable)."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    z = np.asarray(logits, np.float64) / temperature
    m = z.max(axis=1, keepdims=True)
    log_norm = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the NLL of held-out ``labels`` (golden-section search on log T).

    The NLL is convex in 1/T, so the search over T in [0.05, 20] finds the one minimum.
    """
    lo, hi = math.log(0.05), math.log(20.0)
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((lo + hi) / 2)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins by count."""
    p = np.asarray(probabilities, np.float64)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return float(ece)


# --------------------------------------------------------------------------- fitting and using


def class_statistics(features: np.ndarray, labels: np.ndarray, shrinkage: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Class means (10, D) and the precision (D, D) of the pooled within-class covariance.

    A little shrinkage towards the diagonal keeps the inverse stable when some directions of
    the features hardly vary (e.g. a ReLU unit that never fires on training digits).
    """
    labels = np.asarray(labels)
    d = features.shape[1]
    means = np.zeros((NUM_CLASSES, d))
    centred = np.empty_like(features)
    for c in range(NUM_CLASSES):
        rows = labels == c
        if not rows.any():
            raise ValueError(f"no training digit of class {c}: the class means need every digit")
        means[c] = features[rows].mean(axis=0)
        centred[rows] = features[rows] - means[c]
    cov = centred.T @ centred / max(1, len(features) - NUM_CLASSES)
    scale = float(np.trace(cov)) / d if d else 1.0
    cov = (1 - shrinkage) * cov + shrinkage * scale * np.eye(d)
    return means, np.linalg.inv(cov)


def fit_uncertainty(model: nn.Sequential, fit_split: MnistSplit, validation_split: MnistSplit, *,
                    false_alarm: float = DEFAULT_FALSE_ALARM, outliers: torch.Tensor | None = None,
                    score: str | None = None) -> Uncertainty:
    """Fit the temperature and the unusual-input statistics of an eval-mode ``model``.

    ``fit_split``: training digits (class means and covariance of the last Linear layer's input).
    ``validation_split``: held-out real digits, never trained on: the temperature minimises their
    NLL (kept only if it also lowers their ECE; else T = 1), and the threshold is exceeded by
    ``false_alarm`` of them. ``outliers``: optional uint8
    non-digits (M, 28, 28) held out likewise; with them, and no ``score`` named, the score that
    flags most of them is chosen (else "mahalanobis"). The returned ``rates`` hold the validation
    figures; measure on test digits with :func:`measure`.
    """
    if not 0 < false_alarm < 1:
        raise ValueError("false_alarm must be between 0 and 1")
    if score is not None and score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}")
    fit_features, _ = _features_of(model, fit_split)
    means, precision = class_statistics(fit_features, fit_split.labels.numpy())
    val_features, val_logits = _features_of(model, validation_split)
    labels = validation_split.labels.numpy()
    fitted = fit_temperature(val_logits, labels)
    ece_raw = expected_calibration_error(softmax(val_logits), labels)
    ece_fitted = expected_calibration_error(softmax(val_logits, fitted), labels)
    # The NLL-best temperature can still widen the calibration gap (a few confident mistakes pull it
    # up): then the raw probabilities, already closer on these digits, are kept (T = 1).
    temperature = fitted if ece_fitted <= ece_raw else 1.0
    raw = raw_scores(val_features, val_logits, means, precision, temperature)
    scales = (*_spread(raw["mahalanobis"], false_alarm), *_spread(raw["energy"], false_alarm))
    rates = {
        "validation_examples": float(len(labels)),
        "validation_temperature_fitted": fitted,
        "validation_ece_raw": ece_raw,
        "validation_ece_calibrated": expected_calibration_error(softmax(val_logits, temperature), labels),
    }
    thresholds = {k: float(np.quantile(combine(raw, k, scales), 1 - false_alarm, method="higher")) for k in SCORES}
    if outliers is not None and len(outliers):
        out_features, out_logits = _features_of(model, MnistSplit(outliers, torch.zeros(len(outliers)), "outliers"))
        out_raw = raw_scores(out_features, out_logits, means, precision, temperature)
        for k in SCORES:
            rates[f"validation_outliers_flagged_{k}"] = float(np.mean(combine(out_raw, k, scales) > thresholds[k]))
        rates["validation_outliers"] = float(len(outliers))
        if score is None:
            score = max(SCORES, key=lambda k: rates[f"validation_outliers_flagged_{k}"])
    score = score or "mahalanobis"
    rates["validation_false_alarm"] = float(np.mean(combine(raw, score, scales) > thresholds[score]))
    return Uncertainty(temperature, means, precision, thresholds[score], false_alarm, rates, score, scales)


def measure(model: nn.Sequential, uncertainty: Uncertainty, split: MnistSplit) -> dict[str, float]:
    """On real digits (e.g. a test split): ECE raw and calibrated, and how often the flag fires (false alarms)."""
    features, logits = _features_of(model, split)
    labels = split.labels.numpy()
    scores = _scores(uncertainty, features, logits)
    return {
        "examples": float(len(labels)),
        "ece_raw": expected_calibration_error(softmax(logits), labels),
        "ece_calibrated": expected_calibration_error(softmax(logits, uncertainty.temperature), labels),
        "false_alarm": float(np.mean(scores > uncertainty.threshold)),
    }


def _scores(u: Uncertainty, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
    return combine(raw_scores(features, logits, u.means, u.precision, u.temperature), u.score, u.scales)


def _assessments(uncertainty: Uncertainty, features: np.ndarray, logits: np.ndarray) -> list[Assessment]:
    raw, calibrated = softmax(logits), softmax(logits, uncertainty.temperature)
    scores = _scores(uncertainty, features, logits)
    out = []
    for i in range(len(logits)):
        k = int(calibrated[i].argmax())
        out.append(Assessment(k, calibrated[i], raw[i], float(calibrated[i, k]), float(scores[i]),
                              uncertainty.threshold, bool(scores[i] > uncertainty.threshold)))
    return out


def assess_batch(model: nn.Sequential, uncertainty: Uncertainty, inputs: torch.Tensor) -> list[Assessment]:
    """:func:`assess` for a batch of normalised inputs (N, 1, 28, 28)."""
    features, logits = features_and_logits(model, inputs)
    return _assessments(uncertainty, features.numpy(), logits.numpy())


def assess(model: nn.Sequential, uncertainty: Uncertainty, input_tensor: torch.Tensor) -> Assessment:
    """The calibrated answer for one normalised input (1, 28, 28) or (1, 1, 28, 28), and whether it is unusual.

    Pure: a function of the model, the statistics and the input (no hooks, no state).
    """
    x = input_tensor.reshape(1, 1, 28, 28).float()
    return assess_batch(model, uncertainty, x)[0]


def assess_trace(model: nn.Sequential, uncertainty: Uncertainty, tr: Trace) -> Assessment:
    """:func:`assess` of the input of a trace ``model`` made, from the trace's own layer outputs."""
    features, logits = trace_features_and_logits(model, tr)
    return _assessments(uncertainty, features.numpy(), logits.numpy())[0]


# --------------------------------------------------------------------------- files


def uncertainty_path(weights_path: str | Path) -> Path:
    """Where a weights file's uncertainty statistics live: ``NAME.uncertainty.npz`` beside ``NAME.pt``."""
    p = Path(weights_path)
    return p.with_name(p.stem + SUFFIX)


def uncertainty_bytes(u: Uncertainty) -> bytes:
    """The statistics as .npz bytes: plain numeric and text arrays only (loadable without pickle)."""
    buf = io.BytesIO()
    names = sorted(u.rates)
    np.savez(buf, temperature=np.float64(u.temperature), means=u.means.astype(np.float64),
             precision=u.precision.astype(np.float64), threshold=np.float64(u.threshold),
             false_alarm_target=np.float64(u.false_alarm_target),
             rate_names=np.array(names, dtype=np.str_), rate_values=np.array([u.rates[n] for n in names], np.float64),
             score=np.array(u.score, dtype=np.str_), scales=np.array(u.scales, np.float64))
    return buf.getvalue()


def uncertainty_from_bytes(data: bytes, where: str = "uncertainty file") -> Uncertainty:
    """Parse and check .npz bytes written by :func:`uncertainty_bytes`."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("temperature", "means", "precision", "threshold", "false_alarm_target",
                                        "rate_names", "rate_values", "score", "scales")}
    except Exception as e:  # np.load raises many kinds (zipfile.BadZipFile, ValueError, KeyError...)
        raise UncertaintyError(f"{where} cannot be read: {e}"[:300]) from e
    means, precision = arrays["means"], arrays["precision"]
    if (means.ndim != 2 or means.shape[0] != NUM_CLASSES or not 1 <= means.shape[1] <= MAX_FEATURES
            or precision.shape != (means.shape[1], means.shape[1])):
        raise UncertaintyError(f"{where} holds statistics of the wrong shape")
    numbers = [arrays[k] for k in ("temperature", "threshold", "false_alarm_target")]
    if (any(a.shape != () for a in numbers) or means.dtype.kind != "f" or precision.dtype.kind != "f"
            or not all(np.isfinite(a).all() for a in (*numbers, means, precision))):
        raise UncertaintyError(f"{where} holds values that are not finite numbers")
    temperature = float(arrays["temperature"])
    if not 0 < temperature < 1000:
        raise UncertaintyError(f"{where} has an impossible temperature {temperature}")
    names, values = arrays["rate_names"], arrays["rate_values"]
    if names.shape != values.shape or names.ndim != 1 or names.dtype.kind != "U":
        raise UncertaintyError(f"{where} holds malformed measured rates")
    score, scales = arrays["score"], arrays["scales"]
    if score.shape != () or score.dtype.kind != "U" or str(score) not in SCORES:
        raise UncertaintyError(f"{where} names no known score (one of {', '.join(SCORES)})")
    if scales.shape != (4,) or scales.dtype.kind != "f" or not np.isfinite(scales).all() or scales[1] <= 0 \
            or scales[3] <= 0:
        raise UncertaintyError(f"{where} holds malformed score scales")
    return Uncertainty(temperature, means, precision, float(arrays["threshold"]),
                       float(arrays["false_alarm_target"]),
                       {str(n): float(v) for n, v in zip(names, values)}, str(score),
                       (float(scales[0]), float(scales[1]), float(scales[2]), float(scales[3])))


def card_entry(u: Uncertainty, data: bytes, file_name: str) -> dict:
    """The model card's record of an uncertainty file: its name, sha256 and what was measured."""
    return {"file": file_name, "sha256": hashlib.sha256(data).hexdigest(), "temperature": u.temperature,
            "threshold": u.threshold, "false_alarm_target": u.false_alarm_target,
            "score": u.score, "score_means": SCORE_MEANINGS[u.score], "rates": dict(u.rates)}


def load_uncertainty(weights_path: str | Path) -> Uncertainty | None:
    """The uncertainty statistics that belong to a weights file, or None when its card names none.

    Raises :class:`UncertaintyError` when the card names a file that is missing, was changed
    (sha256 differs from the card's) or is malformed: statistics of other weights would mislead.
    """
    weights_path = Path(weights_path)
    try:
        card = json.loads(weights_path.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no readable card: loading the weights reports that, with its own message
    entry = card.get("uncertainty") if isinstance(card, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return None
    path = uncertainty_path(weights_path)
    try:
        if path.stat().st_size > 64 * 1024 * 1024:
            raise UncertaintyError(f"{path} is too large")
        data = path.read_bytes()
    except OSError as e:
        raise UncertaintyError(f"the uncertainty file {path} named by the model card cannot be read: {e}") from e
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise UncertaintyError(f"{path} does not match its model card (sha256 differs): it belongs to other weights")
    return uncertainty_from_bytes(data, str(path))
