"""The shipped weights: what each model card claims is what the files do (measured here, on bundled data)."""

from __future__ import annotations

import json
import shlex

import pytest

from cnn_core.checkpoint import card_path_for, load_checkpoint, sha256_bytes
from cnn_core.data import load_mnist
from cnn_core.evaluate import evaluate
from cnn_core.model import CNNConfig, MLPConfig, count_parameters
from cnn_core.paths import BUNDLED_MNIST_DIR, MODELS_DIR
from cnn_core.pen import load_bundled_pen_test
from cnn_core.train import _model_config, _parse_args, _train_config
from cnn_core.uncertainty import load_uncertainty, measure, uncertainty_path

MODELS = ["mnist_pen_cnn", "mnist_cnn", "mnist_mlp"]
# Test writers who slash some or all of their zeros (data/pen-digits/README.md, from the source's README)
SLASHED_ZERO_WRITERS = {"apa/PaulArnao", "ibm/06", "ibm/08", "ibm/15"}
ONE_DIGIT = 1 / 1000  # a thread count other than training's may flip a borderline digit or two of 5,000


@pytest.fixture(scope="module")
def mnist_test():
    return load_mnist(BUNDLED_MNIST_DIR, "test")


@pytest.fixture(scope="module")
def pen_test():
    return load_bundled_pen_test()


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    path = MODELS_DIR / f"{request.param}.pt"
    return request.param, path, load_checkpoint(path)


def test_cnns_are_the_classic_network():
    for name in ("mnist_pen_cnn", "mnist_cnn"):
        loaded = load_checkpoint(MODELS_DIR / f"{name}.pt")
        assert loaded.config == CNNConfig()
        assert count_parameters(loaded.model) == 421_642 == loaded.card["parameters"]
    mlp = load_checkpoint(MODELS_DIR / "mnist_mlp.pt")
    assert mlp.config == MLPConfig(hidden=(128,))


def test_card_records_how_it_was_made(model):
    name, path, loaded = model
    card = json.loads(card_path_for(path).read_text())
    assert card["sha256"] == sha256_bytes(path.read_bytes())
    command = shlex.split(card["command"])
    assert command[:3] == ["python", "-m", "cnn_core.train"]
    a = _parse_args(command[3:])
    assert a.out == f"models/{name}.pt" and a.threads == 1 and a.data is not None
    # the recorded command asks for exactly the recorded architecture and settings
    assert _model_config(a).to_dict() == card["architecture"]
    assert json.loads(json.dumps(_train_config(a).__dict__)) == card["training"]
    assert card["seed"] == card["training"]["seed"] == a.seed
    assert card["data"]["train_examples"] == 9_000 and card["data"]["held_out_examples"] == 1_000
    assert len(card["history"]) == card["epochs"] == a.epochs
    assert "protocol" in card["data"]
    if name == "mnist_pen_cnn":
        assert a.pen_train and card["data"]["pen_train_examples"] > 5_000


def test_card_accuracy_is_measured_on_the_bundled_test_digits(model, mnist_test):
    _, _, loaded = model
    result = evaluate(loaded.model, mnist_test)
    assert len(mnist_test) == 5_000
    metrics = loaded.card["metrics"]
    assert abs(result.accuracy - metrics["test_accuracy"]) <= ONE_DIGIT + 1e-9
    assert metrics["test_examples"] == 5_000
    assert all(abs(a - b) <= 0.01 for a, b in zip(result.per_class, metrics["test_per_class"]))


def test_card_pen_figures_are_measured_on_the_bundled_test_writers(model, pen_test):
    _, _, loaded = model
    result = evaluate(loaded.model, pen_test)
    report = loaded.card["metrics"]["pen_test"]
    assert report["examples"] == len(pen_test)
    assert abs(result.accuracy - report["accuracy"]) <= 2 / len(pen_test) + 1e-9
    assert len(report["mistakes"]) == round((1 - report["accuracy"]) * len(pen_test))


def test_uncertainty_file_belongs_to_the_weights_and_its_rates_are_measured(model, mnist_test, pen_test):
    _, path, loaded = model
    u = load_uncertainty(path)
    assert u is not None, "every shipped model ships its calibration and unusual-input statistics"
    entry = loaded.card["uncertainty"]
    assert entry["sha256"] == sha256_bytes(uncertainty_path(path).read_bytes())
    assert u.temperature == entry["temperature"] and u.threshold == entry["threshold"]
    for prefix, split in (("mnist_test", mnist_test), ("pen_test", pen_test)):
        measured = measure(loaded.model, u, split)
        for key in ("false_alarm", "ece_raw", "ece_calibrated"):
            assert abs(measured[key] - u.rates[f"{prefix}_{key}"]) <= 2 / len(split) + 1e-9, (prefix, key)


def test_the_pen_model_reads_pen_digits_better_and_slashed_zeros_as_zero(mnist_test, pen_test):
    """The lesson of the two models, measured: same architecture, better on what people draw.

    (Whether it keeps MNIST accuracy is reported in models/README.md, not promised here: it loses
    a little, 98.88% against 99.20% on the 5,000 test digits.)
    """
    pen_model = load_checkpoint(MODELS_DIR / "mnist_pen_cnn.pt").model
    mnist_model = load_checkpoint(MODELS_DIR / "mnist_cnn.pt").model
    for model in (pen_model, mnist_model):
        assert evaluate(model, mnist_test).accuracy >= 0.985  # "about 99%" on MNIST, both
    pen, mnist_only = evaluate(pen_model, pen_test), evaluate(mnist_model, pen_test)
    assert pen.accuracy > mnist_only.accuracy
    zeros = [i for i, w in enumerate(pen_test.writers) if pen_test.labels[i] == 0 and w in SLASHED_ZERO_WRITERS]
    assert len(zeros) >= 20
    read_as_zero = sum(int(pen.predictions[i]) == 0 for i in zeros) / len(zeros)
    assert read_as_zero >= 0.95 > sum(int(mnist_only.predictions[i]) == 0 for i in zeros) / len(zeros)
