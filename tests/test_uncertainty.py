"""Calibration and the unusual-input score (cnn_core.uncertainty), against independent oracles."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
import torch

from cnn_core import uncertainty as U
from cnn_core.data import MnistSplit, to_input
from cnn_core.model import CNNConfig, MLPConfig
from cnn_core.train import fresh_model


def test_fit_temperature_finds_the_nll_minimum():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (4000, 10))
    # labels drawn from softmax(logits / 2.5): the best temperature is about 2.5
    p = U.softmax(logits, 2.5)
    labels = np.array([rng.choice(10, p=row) for row in p])
    t = U.fit_temperature(logits, labels)
    grid = np.exp(np.linspace(np.log(0.5), np.log(10), 2001))
    best = grid[np.argmin([U.nll(logits, labels, g) for g in grid])]  # oracle: brute force
    assert t == pytest.approx(best, rel=2e-3)
    assert 2.2 < t < 2.8


def test_nll_matches_a_direct_formula():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = np.array([0, 1])
    direct = -np.mean([np.log(np.exp(2 / 2) / np.exp(logits[0] / 2).sum()),
                       np.log(np.exp(0.5 / 2) / np.exp(logits[1] / 2).sum())])
    assert U.nll(logits, labels, 2.0) == pytest.approx(direct)


def test_a_temperature_that_widens_the_gap_is_not_used(monkeypatch):
    """Labels drawn from softmax(logits) itself (T = 1 is right), plus confident mistakes that pull the NLL's T up."""
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 3, (3000, 10))
    labels = np.array([rng.choice(10, p=row) for row in U.softmax(logits)])
    confident = np.argsort(-U.softmax(logits).max(1))[:60]
    labels[confident] = (logits[confident].argmax(1) + 1) % 10  # wrong, at the highest confidence
    fitted = U.fit_temperature(logits, labels)
    assert fitted > 1.05
    assert U.expected_calibration_error(U.softmax(logits, fitted), labels) > U.expected_calibration_error(
        U.softmax(logits), labels)
    # a "model" whose validation logits are exactly these
    monkeypatch.setattr(U, "_features_of", lambda model, split, batch=1000: (rng.normal(size=(len(split), 4)), logits))
    split = MnistSplit(torch.zeros((3000, 28, 28), dtype=torch.uint8), torch.from_numpy(labels), "val")
    u = U.fit_uncertainty(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)), split, split)
    assert u.rates["validation_temperature_fitted"] == pytest.approx(fitted)
    assert u.temperature == 1.0
    assert u.rates["validation_ece_calibrated"] == u.rates["validation_ece_raw"]


def test_expected_calibration_error_by_hand():
    # two bins used: confidence 0.9 (3 right of 4) and 0.6 (1 right of 2)
    probs = np.array([[0.9, 0.1]] * 4 + [[0.4, 0.6]] * 2)
    labels = np.array([0, 0, 0, 1, 1, 0])
    expected = 4 / 6 * abs(0.9 - 0.75) + 2 / 6 * abs(0.6 - 0.5)
    assert U.expected_calibration_error(probs, labels, bins=10) == pytest.approx(expected)
    assert U.expected_calibration_error(np.eye(3), np.arange(3)) == 0.0


def test_energy_against_a_direct_formula():
    logits = np.array([[2.0, 0.0, -1.0], [10.0, 10.0, 10.0]])
    direct = [-1.5 * np.log(np.sum(np.exp(row / 1.5))) for row in logits]
    assert np.allclose(U.energy(logits, 1.5), direct)


def test_both_is_the_larger_score_in_validation_units():
    raw = {"mahalanobis": np.array([10.0, 30.0]), "energy": np.array([-5.0, -9.0])}
    both = U.combine(raw, "both", (10.0, 20.0, -8.0, 2.0))
    assert np.allclose(both, [max(0.0, 1.5), max(1.0, -0.5)])


def test_mahalanobis_against_a_loop():
    rng = np.random.default_rng(1)
    feats, means = rng.normal(size=(7, 4)), rng.normal(size=(10, 4))
    a = rng.normal(size=(4, 4))
    prec = a @ a.T + np.eye(4)
    oracle = [min(float((f - m) @ prec @ (f - m)) for m in means) for f in feats]
    assert np.allclose(U.mahalanobis(feats, means, prec), oracle)


def test_class_statistics_are_class_means_and_pooled_covariance():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(10), 30)
    feats = rng.normal(size=(300, 5)) + labels[:, None] * 3.0
    means, prec = U.class_statistics(feats, labels, shrinkage=0.0)
    assert np.allclose(means[4], feats[labels == 4].mean(0))
    centred = np.concatenate([feats[labels == c] - feats[labels == c].mean(0) for c in range(10)])
    assert np.allclose(np.linalg.inv(prec), centred.T @ centred / (300 - 10))
    with pytest.raises(ValueError, match="class 3"):
        U.class_statistics(feats[labels != 3], labels[labels != 3])


@pytest.mark.parametrize("config, width", [(CNNConfig(conv1_channels=4, conv2_channels=8, hidden=16), 16),
                                           (MLPConfig(hidden=(32, 24)), 24)])
def test_features_are_the_input_of_the_last_linear_layer(config, width):
    model = fresh_model(config, torch.Generator().manual_seed(0)).eval()
    x = torch.randn(5, 1, 28, 28)
    feats, logits = U.features_and_logits(model, x)
    assert feats.shape == (5, width)
    with torch.no_grad():
        assert torch.allclose(logits.float(), model(x), atol=1e-5)
        last = list(model)[U.last_linear(model)]
        assert torch.allclose(last(feats.float()), model(x), atol=1e-5)
    from cnn_core.introspect import trace

    one_feats, one_logits = U.trace_features_and_logits(model, trace(model, x[0]))
    alone = U.features_and_logits(model, x[:1])
    assert torch.equal(one_feats, alone[0]) and torch.equal(one_logits, alone[1])


def toy_problem():
    """A tiny trained-looking model: random CNN, 'digits' = its own predictions on random inputs."""
    model = fresh_model(CNNConfig(conv1_channels=4, conv2_channels=8, hidden=16), torch.Generator().manual_seed(3)).eval()
    g = torch.Generator().manual_seed(4)
    images = (torch.rand(3000, 28, 28, generator=g) * 255).to(torch.uint8)
    with torch.no_grad():
        labels = model(to_input(images)).argmax(1)
    labels[:10] = torch.arange(10)  # every class present
    noisy = labels.clone()
    flip = torch.rand(3000, generator=g) < 0.2
    noisy[flip] = torch.randint(0, 10, (int(flip.sum()),), generator=g)
    return model, MnistSplit(images[:2000], labels[:2000], "fit"), MnistSplit(images[2000:], noisy[2000:], "val")


def test_fit_uncertainty_and_assess():
    model, fit, val = toy_problem()
    u = U.fit_uncertainty(model, fit, val, false_alarm=0.05)
    assert u.means.shape == (10, 16) and u.precision.shape == (16, 16)
    assert u.rates["validation_false_alarm"] <= 0.05 + 1e-9
    assert u.rates["validation_false_alarm"] >= 0.04  # the threshold is the 95% quantile, not arbitrary
    measured = U.measure(model, u, val)
    assert measured["false_alarm"] == pytest.approx(u.rates["validation_false_alarm"])
    assert measured["ece_calibrated"] <= measured["ece_raw"] + 1e-9  # fitted on this very split
    assert u.temperature in (1.0, u.rates["validation_temperature_fitted"])
    x = to_input(val.images[:3])
    a = U.assess(model, u, x[0])
    assert a.probabilities.sum() == pytest.approx(1.0) and a.raw_probabilities.sum() == pytest.approx(1.0)
    assert a.prediction == int(np.argmax(a.raw_probabilities)) == int(np.argmax(a.probabilities))
    assert a.confidence == pytest.approx(a.probabilities[a.prediction])
    assert a.threshold == u.threshold and a.unusual == (a.score > u.threshold)
    batch = U.assess_batch(model, u, x)
    assert [b.score for b in batch][0] == pytest.approx(a.score)
    far = U.assess(model, u, torch.full((1, 28, 28), 40.0))  # nothing like the inputs it was fitted on
    assert far.unusual and far.score > 10 * u.threshold
    assert u.score == "mahalanobis"  # the default without non-digits to choose on


@pytest.mark.parametrize("score", U.SCORES)
def test_each_score_keeps_the_false_alarm_rate(score):
    model, fit, val = toy_problem()
    u = U.fit_uncertainty(model, fit, val, false_alarm=0.1, score=score)
    assert u.score == score
    assert 0.09 <= U.measure(model, u, val)["false_alarm"] <= 0.1 + 1e-9


def test_the_score_is_chosen_on_held_out_non_digits():
    model, fit, val = toy_problem()
    # "non-digits" far from the digits in input space: every score should flag them; the choice is the best one
    outliers = torch.full((50, 28, 28), 255, dtype=torch.uint8)
    outliers[:, ::2] = 0
    u = U.fit_uncertainty(model, fit, val, outliers=outliers)
    flagged = {k: u.rates[f"validation_outliers_flagged_{k}"] for k in U.SCORES}
    assert u.score in U.SCORES and flagged[u.score] == max(flagged.values())
    assert u.rates["validation_outliers"] == 50


def write_model_files(tmp_path, u: U.Uncertainty, card_extra: dict | None = None):
    weights = tmp_path / "m.pt"
    weights.write_bytes(b"weights")
    data = U.uncertainty_bytes(u)
    U.uncertainty_path(weights).write_bytes(data)
    card = {"uncertainty": U.card_entry(u, data, U.uncertainty_path(weights).name), **(card_extra or {})}
    weights.with_suffix(".json").write_text(json.dumps(card))
    return weights


def small_uncertainty() -> U.Uncertainty:
    rng = np.random.default_rng(5)
    a = rng.normal(size=(6, 6))
    return U.Uncertainty(1.7, rng.normal(size=(10, 6)), a @ a.T + np.eye(6), 33.0, 0.02,
                         {"validation_false_alarm": 0.02, "mnist_test_ece_raw": 0.01})


def test_files_round_trip_and_the_card_binds_them(tmp_path):
    u = small_uncertainty()
    weights = write_model_files(tmp_path, u)
    assert U.uncertainty_path(weights).name == "m.uncertainty.npz"
    back = U.load_uncertainty(weights)
    assert back is not None
    assert back.temperature == u.temperature and back.threshold == u.threshold
    assert np.array_equal(back.means, u.means) and np.array_equal(back.precision, u.precision)
    assert dict(back.rates) == dict(u.rates)
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["uncertainty"]["sha256"] == hashlib.sha256(U.uncertainty_path(weights).read_bytes()).hexdigest()


def test_no_entry_in_the_card_means_none(tmp_path):
    weights = tmp_path / "m.pt"
    weights.write_bytes(b"w")
    assert U.load_uncertainty(weights) is None  # no card at all
    weights.with_suffix(".json").write_text('{"name": "m"}')
    assert U.load_uncertainty(weights) is None


def test_stale_or_missing_file_is_refused(tmp_path):
    weights = write_model_files(tmp_path, small_uncertainty())
    other = U.Uncertainty(2.0, np.zeros((10, 6)), np.eye(6), 10.0, 0.02, {})
    U.uncertainty_path(weights).write_bytes(U.uncertainty_bytes(other))  # statistics of other weights
    with pytest.raises(U.UncertaintyError, match="does not match its model card"):
        U.load_uncertainty(weights)
    U.uncertainty_path(weights).unlink()
    with pytest.raises(U.UncertaintyError, match="cannot be read"):
        U.load_uncertainty(weights)


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


GOOD = dict(temperature=np.float64(1.5), means=np.zeros((10, 4)), precision=np.eye(4), threshold=np.float64(9.0),
            false_alarm_target=np.float64(0.02), rate_names=np.array(["a"]), rate_values=np.array([0.5]),
            score=np.array("energy"), scales=np.array([0.0, 1.0, 0.0, 1.0]))


@pytest.mark.parametrize("change, message", [
    ({"means": np.zeros((9, 4))}, "wrong shape"),
    ({"precision": np.eye(5)}, "wrong shape"),
    ({"threshold": np.float64(np.nan)}, "not finite"),
    ({"means": np.full((10, 4), np.inf)}, "not finite"),
    ({"temperature": np.float64(-1.0)}, "impossible temperature"),
    ({"rate_values": np.array([0.5, 0.1])}, "malformed"),
    ({"means": np.array([[None] * 4] * 10, dtype=object)}, "cannot be read"),  # a pickle: never loaded
    ({"score": np.array("softmax")}, "names no known score"),
    ({"scales": np.array([0.0, 0.0, 0.0, 1.0])}, "malformed score scales"),
])
def test_malformed_files_are_refused(change, message):
    with pytest.raises(U.UncertaintyError, match=message):
        U.uncertainty_from_bytes(npz(**{**GOOD, **change}))
    assert U.uncertainty_from_bytes(npz(**GOOD)).temperature == 1.5


def test_not_an_npz_is_refused():
    with pytest.raises(U.UncertaintyError, match="cannot be read"):
        U.uncertainty_from_bytes(b"PK\x03\x04 not really a zip")


def test_an_assessment_read_off_a_trace_is_the_assessment_of_its_input():
    """The home page assesses the trace it already has instead of running the network a second time."""
    from cnn_core.introspect import trace

    model, fit, val = toy_problem()
    u = U.fit_uncertainty(model, fit, val, false_alarm=0.05)
    for x in list(to_input(val.images[:4])) + [torch.full((1, 28, 28), 40.0)]:
        from_trace, direct = U.assess_trace(model, u, trace(model, x)), U.assess(model, u, x)
        assert from_trace.score == direct.score and from_trace.unusual == direct.unusual
        np.testing.assert_array_equal(from_trace.probabilities, direct.probabilities)
