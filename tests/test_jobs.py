"""Training in a background thread (cnn_core.jobs): progress, history, cancel, the process-wide cap, failures."""

from __future__ import annotations

import math
import time

import pytest
import torch

from cnn_core import jobs
from cnn_core.architecture import layer_table
from cnn_core.checkpoint import load_checkpoint_bytes, sha256_bytes, state_dict_bytes
from cnn_core.data import MnistSplit, load_mnist, take
from cnn_core.export import model_files
from cnn_core.introspect import trace
from cnn_core.jobs import JobLimitError, TrainingJob, running_jobs
from cnn_core.model import CNNConfig, MLPConfig
from cnn_core.preprocess import normalise
from cnn_core.train import TrainConfig

SMALL = TrainConfig(epochs=1, batch_size=32, train_size=300, augment=False)
LONG = TrainConfig(epochs=3, batch_size=32, train_size=5000, augment=False)  # minutes: always cancelled


pytestmark = pytest.mark.usefixtures("no_job_outlives_its_test")


@pytest.fixture(scope="module")
def train_split(data_dir) -> MnistSplit:
    return load_mnist(data_dir, "train")


@pytest.fixture(scope="module")
def small_test(test_split) -> MnistSplit:
    return take(test_split, 200)


def wait_for(predicate, timeout: float = 60.0) -> None:
    """Poll ``predicate`` (a job's progress has no event to wait on) until true, or fail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def test_a_small_run_reports_progress_and_gives_a_usable_model(train_split, small_test, test_split):
    config = CNNConfig(conv1_channels=8, conv2_channels=16, kernel_size=5, padding=0, pool="avg", hidden_relu=True)
    job = TrainingJob(config, train_split, small_test, SMALL, name="tiny")
    before = job.snapshot()
    assert before.status == "created" and before.fraction == 0.0 and not before.curve

    job.start()
    fractions = []
    while not job.wait(0.01):
        fractions.append(job.snapshot().fraction)
    snap = job.snapshot()
    assert snap.status == "done", snap.error
    assert fractions == sorted(fractions), "progress went backwards"
    assert snap.fraction == 1.0
    assert len(snap.history) == 1 and snap.history[0].epoch == 1
    assert snap.history[0].test_accuracy is not None and 0 <= snap.history[0].test_accuracy <= 1
    batches = math.ceil(SMALL.train_size / SMALL.batch_size)
    assert len(snap.curve) == batches  # one point per batch
    assert snap.curve[-1].epochs_done == pytest.approx(1.0)
    assert snap.loss == pytest.approx(snap.history[0].loss)
    assert job.result is not None and not job.result.cancelled
    assert running_jobs() == 0

    loaded = job.loaded_model()
    assert not loaded.model.training
    assert loaded.card["sha256"] == sha256_bytes(state_dict_bytes(loaded.model))
    assert loaded.card["architecture"] == config.to_dict()
    assert loaded.card["data"]["train_examples"] == SMALL.train_size
    assert loaded.card["metrics"]["test_accuracy"] == snap.history[0].test_accuracy
    assert loaded.card["parameters"] == sum(p.numel() for p in loaded.model.parameters())

    # The model traces, and every layer's output has the shape its architecture table says.
    pixels = test_split.images[0].numpy().astype("float32") / 255
    tr = trace(loaded.model, normalise(pixels))
    rows = layer_table(loaded.model)
    assert tr.names() == [r.name for r in rows[1:]]
    for row in rows[1:]:
        assert tuple(tr[row.name].shape) == row.output_shape, row.name
    assert tr.probabilities.sum().item() == pytest.approx(1.0, abs=1e-5)

    # Its weights and card download as a pair that loads back to the same network.
    weights, card = model_files(loaded)
    again = load_checkpoint_bytes(weights, card)
    assert torch.equal(trace(again.model, normalise(pixels)).probabilities, tr.probabilities)


def test_an_mlp_trains_too(train_split):
    job = TrainingJob(MLPConfig(hidden=(32,)), train_split, None, SMALL).start()
    assert job.wait(120)
    snap = job.snapshot()
    assert snap.status == "done" and snap.history[0].test_accuracy is None
    assert job.loaded_model().card["metrics"] == {}


def test_cancel_stops_the_run_early(train_split, small_test):
    job = TrainingJob(CNNConfig(conv1_channels=8, conv2_channels=8), train_split, small_test, LONG).start()
    wait_for(lambda: job.snapshot().fraction > 0)
    job.cancel()
    assert job.wait(60), "the job did not stop after cancel()"
    snap = job.snapshot()
    assert snap.status == "cancelled"
    assert job.result is not None and job.result.cancelled
    assert 0 < snap.fraction < 0.5
    assert len(snap.history) < LONG.epochs
    assert running_jobs() == 0
    assert not job.result.model.training  # the half-trained model is still usable...
    assert job.loaded_model().card["cancelled"] is True  # ...and marked as such


def test_at_most_max_running_jobs_run_at_once(train_split, monkeypatch):
    monkeypatch.setattr(jobs, "MAX_RUNNING_JOBS", 1)
    first = TrainingJob(CNNConfig(8, 8), train_split, None, LONG).start()
    try:
        assert running_jobs() == 1
        second = TrainingJob(CNNConfig(8, 8), train_split, None, SMALL)
        with pytest.raises(JobLimitError, match="limit is 1"):
            second.start()
        assert second.snapshot().status == "created"
    finally:
        first.cancel()
        assert first.wait(60)
    assert running_jobs() == 0
    third = TrainingJob(CNNConfig(8, 8), train_split, None, LONG).start()  # the slot is free again
    third.cancel()
    assert third.wait(60) and third.snapshot().status == "cancelled"


def test_a_failing_run_reports_its_error_and_frees_its_slot(train_split):
    broken = MnistSplit(train_split.images[:64], torch.full((64,), 12), "labels out of range")
    job = TrainingJob(CNNConfig(8, 8), broken, None, SMALL).start()
    assert job.wait(60)
    snap = job.snapshot()
    assert snap.status == "failed" and snap.finished and not snap.running
    assert snap.error and "Error" in snap.error
    assert running_jobs() == 0
    with pytest.raises(RuntimeError, match="no model"):
        job.loaded_model()


def test_a_job_starts_once_and_refuses_impossible_settings(train_split):
    with pytest.raises(ValueError, match="shrinks"):
        TrainingJob(CNNConfig(kernel_size=13, padding=0), train_split)
    with pytest.raises(ValueError, match="epochs"):
        TrainingJob(CNNConfig(), train_split, config=TrainConfig(epochs=0))
    job = TrainingJob(CNNConfig(8, 8), train_split, None, LONG).start()
    try:
        with pytest.raises(RuntimeError, match="only once"):
            job.start()
    finally:
        job.cancel()
        job.wait(60)
