"""Training in the background (cnn_core.jobs): the queue, progress, cancel, dropped owners, reproducibility.

The queue's bookkeeping is tested with a stand-in for ``train_model`` whose batches advance only
when the test says so (no timing races, no CPU); reproducibility and the epoch snapshots with real,
tiny training runs on generated digits (no MNIST needed); what a run learns on real MNIST digits
when the server's training folder is there (conftest's ``train_split`` skips, saying why, without one).
"""

from __future__ import annotations

import gc
import math
import threading
import time
from collections.abc import Callable

import pytest
import torch

from cnn_core import jobs
from cnn_core.architecture import layer_table
from cnn_core.checkpoint import load_checkpoint_bytes, sha256_bytes, state_dict_bytes
from cnn_core.data import MnistSplit, take
from cnn_core.export import model_files
from cnn_core.introspect import trace
from cnn_core.jobs import (
    JobLimitError,
    Owner,
    TrainingJob,
    TrainingQueue,
    active_jobs,
    estimated_waits,
    running_jobs,
)
from cnn_core.model import CNNConfig, MLPConfig, build_model
from cnn_core.preprocess import normalise
from cnn_core.train import EpochStats, Progress, TrainConfig, TrainResult

TINY = TrainConfig(epochs=1, batch_size=64, train_size=256, augment=False)
SMALL = TrainConfig(epochs=1, batch_size=32, train_size=300, augment=False)
LONG = TrainConfig(epochs=3, batch_size=32, train_size=5000, augment=False)  # minutes: always cancelled

pytestmark = pytest.mark.usefixtures("no_job_outlives_its_test")


# --- data -------------------------------------------------------------------------------------------------


def generated_digits(n: int, seed: int = 0) -> MnistSplit:
    """``n`` learnable 28x28 'digits': a bright bar whose height says the label, on faint noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 40, (n, 28, 28), generator=g, dtype=torch.uint8)
    for d in range(10):
        images[labels == d, 2 * d + 2: 2 * d + 6, 4:24] = 220
    return MnistSplit(images, labels, f"generated digits (seed {seed})")


@pytest.fixture(scope="module")
def digits() -> MnistSplit:
    return generated_digits(1024)


@pytest.fixture(scope="module")
def small_test(test_split) -> MnistSplit:
    return take(test_split, 200)  # the bundled test digits (conftest): always there


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``predicate`` until true, or fail."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


# --- a stand-in for train_model whose batches the test releases one by one ------------------------------------


class GatedTraining:
    """Replaces ``cnn_core.train.train_model`` in ``cnn_core.jobs``: each run (named by its seed) reports
    BATCHES batches, each one only when the test calls :meth:`step`; ``should_stop`` is checked while it waits.
    """

    BATCHES = 4
    FAILING_SEED = 666

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._gates: dict[int, threading.Semaphore] = {}
        self.started: list[int] = []  # seeds, in the order their runs began

    def _gate(self, seed: int) -> threading.Semaphore:
        with self._lock:
            return self._gates.setdefault(seed, threading.Semaphore(0))

    def step(self, seed: int, batches: int = 1) -> None:
        for _ in range(batches):
            self._gate(seed).release()

    def finish(self, job: TrainingJob) -> None:
        self.step(job.config.seed, self.BATCHES)
        assert job.wait(10)

    def __call__(self, model_config, train_split, test_split, config, on_progress=None, on_epoch=None,
                 should_stop=None) -> TrainResult:
        with self._lock:
            self.started.append(config.seed)
        if config.seed == self.FAILING_SEED:
            raise RuntimeError("this run fails")
        result = TrainResult(model=build_model(model_config).eval())
        gate = self._gate(config.seed)
        for b in range(1, self.BATCHES + 1):
            while not gate.acquire(timeout=0.002):
                if should_stop():
                    result.cancelled = True
                    return result
            on_progress(Progress(1, 1, b, self.BATCHES, 1 / b, b / 10))
        stats = EpochStats(1, 0.25, 0.4, None, 0.0)
        result.history.append(stats)
        on_epoch(stats, result.model)
        return result


@pytest.fixture
def gated(monkeypatch) -> GatedTraining:
    fake = GatedTraining()
    monkeypatch.setattr(jobs, "train_model", fake)
    return fake


def job(seed: int, split: MnistSplit) -> TrainingJob:
    return TrainingJob(MLPConfig(hidden=(8,)), split, None, TrainConfig(epochs=1, seed=seed, train_size=64),
                       name=f"job {seed}")


def statuses(*js: TrainingJob) -> list[str]:
    return [j.status for j in js]


# --- the queue --------------------------------------------------------------------------------------------------


def test_estimated_waits_first_come_first_served():
    # Two slots, both busy for 10 s and 30 s: the first waiting job takes the first free slot, and so on.
    assert estimated_waits([10, 30], [20, 5, 5], slots=2) == [10, 30, 30]
    assert estimated_waits([10], [20, 5], slots=2) == [0, 10]  # a slot is free now
    assert estimated_waits([10], [5, 5, 5], slots=1) == [10, 15, 20]
    assert estimated_waits([10], [5, None, 5], slots=1) == [10, 15, None]  # after an unknown, unknown
    assert estimated_waits([None, 10], [5], slots=2) == [None]  # a running job of unknown pace
    assert estimated_waits([], [5], slots=0) == [None]  # no slot at all: never
    assert estimated_waits([40, 20, 10], [5], slots=2) == [20]  # more running than slots (limit lowered)


def test_jobs_beyond_the_limit_wait_in_order_and_start_in_order(gated, digits):
    queue = TrainingQueue(max_running=1, max_queued=5)
    a, b, c, d = (job(s, digits) for s in (1, 2, 3, 4))
    for j in (a, b, c, d):
        queue.submit(j)
    wait_for(lambda: gated.started == [1])
    assert statuses(a, b, c, d) == ["running", "queued", "queued", "queued"]
    assert queue.counts() == (1, 3)
    assert [j.snapshot().place.position for j in (b, c, d)] == [1, 2, 3]
    assert {j.snapshot().place.waiting for j in (b, c, d)} == {3}
    assert a.snapshot().place is None and a.snapshot().running and not a.snapshot().waiting

    gated.finish(a)
    wait_for(lambda: b.status == "running")
    assert a.snapshot().status == "done" and a.snapshot().fraction == 1.0
    assert [j.snapshot().place.position for j in (c, d)] == [1, 2]
    gated.finish(b)
    gated.finish(c)
    gated.finish(d)
    assert gated.started == [1, 2, 3, 4]
    assert statuses(a, b, c, d) == ["done"] * 4
    assert queue.counts() == (0, 0)


def test_the_estimated_start_follows_the_running_jobs_pace(gated, digits):
    queue = TrainingQueue(max_running=1, max_queued=5)
    first, second, third = job(1, digits), job(2, digits), job(3, digits)
    for j in (first, second, third):
        queue.submit(j)
    wait_for(lambda: first.status == "running")
    assert second.snapshot().place.estimated_start is None  # no batch done yet: nothing to tell the pace by

    time.sleep(0.2)
    gated.step(1)  # a quarter of the run done
    wait_for(lambda: first.snapshot().fraction == 0.25)
    before = first.snapshot().elapsed
    place2, place3 = second.snapshot().place, third.snapshot().place
    after = first.snapshot().elapsed
    # The running job needs three times as long again as it took for its first quarter...
    assert 3 * before <= place2.estimated_start <= 3 * after
    # ...and the third waits for the second too, which goes through as many digits at the same pace.
    per_run = 4 * before, 4 * after
    assert 3 * before + per_run[0] <= place3.estimated_start <= 3 * after + per_run[1]

    gated.finish(first)
    wait_for(lambda: second.status == "running")
    # Before its first batch, the second run's pace is the finished run's.
    estimate = third.snapshot().place.estimated_start
    assert estimate is not None and estimate == pytest.approx(first.snapshot().elapsed, rel=0.2)


def test_a_waiting_job_can_be_cancelled_and_never_runs(gated, digits):
    queue = TrainingQueue(max_running=1, max_queued=5)
    a, b, c = job(1, digits), job(2, digits), job(3, digits)
    for j in (a, b, c):
        queue.submit(j)
    b.cancel()
    assert b.wait(1), "a waiting job's cancel did not end it at once"
    assert b.snapshot().status == "cancelled" and b.snapshot().place is None
    assert c.snapshot().place.position == 1 and queue.counts() == (1, 1)
    gated.finish(a)
    gated.finish(c)
    assert gated.started == [1, 3]
    with pytest.raises(RuntimeError, match="no model"):
        b.loaded_model()


def test_a_running_job_cancels_at_its_next_batch(gated, digits):
    queue = TrainingQueue(max_running=1, max_queued=5)
    a, b = job(1, digits), job(2, digits)
    queue.submit(a)
    queue.submit(b)
    gated.step(1)
    wait_for(lambda: a.snapshot().fraction > 0)
    a.cancel()
    assert a.wait(5)
    assert a.snapshot().status == "cancelled" and a.result is not None and a.result.cancelled
    wait_for(lambda: b.status == "running")  # the slot went to the next in line
    gated.finish(b)


def test_a_full_queue_refuses_politely_and_takes_the_job_later(gated, digits):
    queue = TrainingQueue(max_running=1, max_queued=2)
    a, b, c, d = (job(s, digits) for s in (1, 2, 3, 4))
    for j in (a, b, c):
        queue.submit(j)
    with pytest.raises(JobLimitError, match="at most 2") as refused:
        queue.submit(d)
    assert "1 training run already runs on this server and 2 more wait" in str(refused.value)
    assert d.status == "created" and d not in active_jobs()
    gated.finish(a)
    queue.submit(d)  # room again
    assert d.snapshot().place.position == 2
    for j in (b, c, d):
        wait_for(lambda j=j: j.status == "running")
        gated.finish(j)
    assert gated.started == [1, 2, 3, 4]


def test_jobs_of_a_session_that_is_gone_are_dropped(gated, digits):
    queue = TrainingQueue(max_running=1, max_queued=5)
    stays, leaves = Owner(), Owner()
    running_orphan, waiting_orphan, kept = job(1, digits), job(2, digits), job(3, digits)
    queue.submit(running_orphan, leaves)
    queue.submit(waiting_orphan, leaves)
    queue.submit(kept, stays)
    assert running_orphan.owner is leaves and kept.owner is stays
    gated.step(1)
    wait_for(lambda: running_orphan.snapshot().fraction > 0)

    del leaves  # the session's state is dropped: nothing else holds its token
    gc.collect()
    assert running_orphan.wait(5), "a running job of a gone session did not stop at its next batch"
    assert running_orphan.snapshot().status == "dropped" and running_orphan.result.cancelled
    assert waiting_orphan.wait(5) and waiting_orphan.snapshot().status == "dropped"
    wait_for(lambda: kept.status == "running")  # skipped the orphan, straight to the next owner's job
    assert kept.snapshot().place is None
    gated.finish(kept)
    assert gated.started == [1, 3]
    assert kept.snapshot().status == "done" and kept.owner is stays


def test_an_orphan_leaves_its_place_in_the_line(gated, digits):
    queue = TrainingQueue(max_running=1, max_queued=5)
    owners = [Owner() for _ in range(3)]
    a, b, c = job(1, digits), job(2, digits), job(3, digits)
    for j, o in zip((a, b, c), owners):
        queue.submit(j, o)
    assert c.snapshot().place.position == 2
    del owners[1]
    gc.collect()
    assert c.snapshot().place.position == 1 and c.snapshot().place.waiting == 1
    assert b.snapshot().status == "dropped"
    gated.finish(a)
    gated.finish(c)


def test_a_failing_run_reports_its_error_and_frees_its_slot(gated, digits):
    queue = TrainingQueue(max_running=1, max_queued=5)
    broken, after = job(GatedTraining.FAILING_SEED, digits), job(2, digits)
    queue.submit(broken)
    queue.submit(after)
    assert broken.wait(5)
    snap = broken.snapshot()
    assert snap.status == "failed" and snap.finished and not snap.running
    assert snap.error == "RuntimeError: this run fails"
    wait_for(lambda: after.status == "running")
    gated.finish(after)
    with pytest.raises(RuntimeError, match="no model"):
        broken.loaded_model()


def test_the_process_wide_queue_reads_the_limit_at_each_use(gated, digits, monkeypatch):
    monkeypatch.setattr(jobs, "MAX_RUNNING_JOBS", 1)
    a, b = job(1, digits).start(), job(2, digits).start()
    try:
        assert statuses(a, b) == ["running", "queued"] and running_jobs() == 1
        assert set(active_jobs()) >= {a, b}
    finally:
        gated.finish(a)
        gated.finish(b)
    assert running_jobs() == 0 and not {a, b} & set(active_jobs())


def test_a_job_starts_once_and_refuses_impossible_settings(gated, digits):
    with pytest.raises(ValueError, match="kernel size"):
        TrainingJob(CNNConfig(kernel_size=13, padding=0), digits)
    with pytest.raises(ValueError, match="epochs"):
        TrainingJob(CNNConfig(), digits, config=TrainConfig(epochs=0))
    with pytest.raises(ValueError, match=f"at most {jobs.MAX_EPOCHS} epochs"):
        TrainingJob(CNNConfig(), digits, config=TrainConfig(epochs=jobs.MAX_EPOCHS + 1))
    queue = TrainingQueue(max_running=1, max_queued=5)
    a = queue.submit(job(1, digits))
    with pytest.raises(RuntimeError, match="only once"):
        queue.submit(a)
    never = job(2, digits)
    never.cancel()  # cancelled before it was ever submitted
    assert never.wait(0) and never.status == "cancelled"
    gated.finish(a)


# --- real training runs on generated digits ---------------------------------------------------------------------


def weights_of(j: TrainingJob) -> dict[str, torch.Tensor]:
    assert j.snapshot().status == "done", j.snapshot().error
    return j.loaded_model().model.state_dict()


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_design_and_seed_give_the_same_weights_alone_and_side_by_side(digits):
    design = CNNConfig(conv1_channels=8, conv2_channels=16)  # dropout 0.25: its masks are random too
    config = TrainConfig(epochs=1, batch_size=64, train_size=512, augment=True, seed=7)
    queue = TrainingQueue(max_running=2, max_queued=2)

    alone = queue.submit(TrainingJob(design, digits, None, config, name="alone"))
    assert alone.wait(120)

    left = TrainingJob(design, digits, None, config, name="left")
    right = TrainingJob(design, digits, None, config, name="right")
    queue.submit(left)
    queue.submit(right)
    while not (left.wait(0) and right.wait(0)):  # meanwhile, another session uses the global generator
        torch.manual_seed(int(time.monotonic_ns() % 1000))
        torch.rand(1000)
    assert left._started_at < right._ended_at and right._started_at < left._ended_at, "they did not overlap"

    reference = weights_of(alone)
    assert same_weights(weights_of(left), reference)
    assert same_weights(weights_of(right), reference)
    other_seed = queue.submit(TrainingJob(design, digits, None, TrainConfig(**{**config.__dict__, "seed": 8})))
    assert other_seed.wait(120)
    assert not same_weights(weights_of(other_seed), reference)  # the seed does matter


def test_a_run_leaves_the_process_wide_generator_alone(digits):
    before = torch.get_rng_state()
    j = TrainingQueue(1, 1).submit(TrainingJob(CNNConfig(8, 8), digits, None, TINY))
    assert j.wait(120) and j.snapshot().status == "done"
    assert torch.equal(torch.get_rng_state(), before), "training reseeded or drew from the global generator"


def test_each_epoch_leaves_a_frozen_snapshot_of_the_network(digits):
    config = TrainConfig(epochs=2, batch_size=64, train_size=512, augment=False)
    j = TrainingQueue(1, 1).submit(TrainingJob(CNNConfig(8, 8, kernel_size=5), digits, digits, config))
    assert j.wait(120)
    snap = j.snapshot()
    assert snap.status == "done" and [h.epoch for h in snap.history] == [1, 2]
    views = snap.epoch_views
    assert [v.epoch for v in views] == [1, 2], "no snapshot per epoch (train_model must pass on_epoch the model)"
    for v in views:
        assert v.conv1 is not None and tuple(v.conv1.shape) == (8, 1, 5, 5)
        assert not v.model.training and not any(p.requires_grad for p in v.model.parameters())
        assert torch.equal(v.conv1, v.model.conv1.weight)
    assert not torch.equal(views[0].conv1, views[1].conv1)  # the filters changed from one epoch to the next
    final = j.loaded_model().model.state_dict()
    assert same_weights(views[-1].model.state_dict(), final)  # the last snapshot is the trained network
    x = normalise(digits.images[0].numpy().astype("float32") / 255)
    assert not torch.equal(trace(views[0].model, x).probabilities, trace(views[1].model, x).probabilities)


def test_the_live_curve_is_bounded_however_many_batches(digits, monkeypatch):
    monkeypatch.setattr(jobs, "MAX_CURVE_POINTS", 10)
    config = TrainConfig(epochs=2, batch_size=16, train_size=512, augment=False)  # 64 batches
    j = TrainingQueue(1, 1).submit(TrainingJob(MLPConfig(hidden=(8,)), digits, None, config))
    assert j.wait(120)
    curve = j.snapshot().curve
    assert len(curve) <= 10 + config.epochs and curve[-1].epochs_done == pytest.approx(2.0)
    assert [p.epochs_done for p in curve] == sorted(p.epochs_done for p in curve)


# --- real MNIST ---------------------------------------------------------------------------------------------------


def test_a_small_run_reports_progress_and_gives_a_usable_model(train_split, small_test):
    config = CNNConfig(conv1_channels=8, conv2_channels=16, kernel_size=5, padding=0, pool="avg", hidden_relu=True)
    j = TrainingJob(config, train_split, small_test, SMALL, name="tiny")
    before = j.snapshot()
    assert before.status == "created" and before.fraction == 0.0 and not before.curve

    j.start()
    fractions = []
    while not j.wait(0.01):
        fractions.append(j.snapshot().fraction)
    snap = j.snapshot()
    assert snap.status == "done", snap.error
    assert fractions == sorted(fractions), "progress went backwards"
    assert snap.fraction == 1.0
    assert len(snap.history) == 1 and snap.history[0].epoch == 1
    assert snap.history[0].test_accuracy is not None and 0 <= snap.history[0].test_accuracy <= 1
    batches = math.ceil(SMALL.train_size / SMALL.batch_size)
    assert len(snap.curve) == batches  # one point per batch
    assert snap.curve[-1].epochs_done == pytest.approx(1.0)
    assert snap.loss == pytest.approx(snap.history[0].loss)
    assert j.result is not None and not j.result.cancelled
    assert running_jobs() == 0

    loaded = j.loaded_model()
    assert not loaded.model.training
    assert loaded.card["sha256"] == sha256_bytes(state_dict_bytes(loaded.model))
    assert loaded.card["architecture"] == config.to_dict()
    assert loaded.card["data"]["train_examples"] == SMALL.train_size
    assert loaded.card["metrics"]["test_accuracy"] == snap.history[0].test_accuracy
    assert loaded.card["parameters"] == sum(p.numel() for p in loaded.model.parameters())
    assert loaded.card["seed"] == SMALL.seed and "--seed" in loaded.card["command"]

    # The model traces, and every layer's output has the shape its architecture table says.
    pixels = small_test.images[0].numpy().astype("float32") / 255
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
    j = TrainingJob(MLPConfig(hidden=(32,)), train_split, None, SMALL).start()
    assert j.wait(120)
    snap = j.snapshot()
    assert snap.status == "done" and snap.history[0].test_accuracy is None
    assert j.loaded_model().card["metrics"] == {}
    assert snap.epoch_views == () or snap.epoch_views[0].conv1 is None  # no convolution to show


def test_cancel_stops_a_real_run_early(train_split, small_test):
    j = TrainingJob(CNNConfig(conv1_channels=8, conv2_channels=8), train_split, small_test, LONG).start()
    wait_for(lambda: j.snapshot().fraction > 0)
    j.cancel()
    assert j.wait(60), "the job did not stop after cancel()"
    snap = j.snapshot()
    assert snap.status == "cancelled"
    assert j.result is not None and j.result.cancelled
    assert 0 < snap.fraction < 0.5
    assert len(snap.history) < LONG.epochs
    assert running_jobs() == 0
    assert not j.result.model.training  # the half-trained model is still usable...
    assert j.loaded_model().card["cancelled"] is True  # ...and marked as such
