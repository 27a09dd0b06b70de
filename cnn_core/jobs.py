"""Training a network in a background thread, behind a queue, with a progress snapshot any thread can read.

The app trains small variants while its pages keep answering. A :class:`TrainingJob` runs
:func:`cnn_core.train.train_model` in its own daemon thread, records progress under a lock,
keeps a small snapshot of the network after every epoch, and can be cancelled between batches.
A :class:`TrainingQueue` runs at most ``max_running`` jobs at once and lines the others up
(first come, first served) with their place and an estimated start; past ``max_queued``
waiting jobs it refuses new ones with :class:`JobLimitError`. No Streamlit here.

Sessions come and go without saying so. A job submitted with an :class:`Owner` holds only a
weak reference to it: once the owner is garbage-collected (its session is gone), a waiting
job is skipped and a running one stops at its next batch, status ``"dropped"``.

Locks: a queue's lock may be held while taking a job's lock, never the other way round.

Threads: ``torch.set_num_threads`` is process-wide, so it is deliberately not called.
A job's tensor operations run on the same cores as the app's traces, so while a job runs
pages render more slowly (``bench/bench_train_load.py`` measures by how much). The queue's
limit bounds that, and the training thread lowers its own CPU priority (``nice``, per thread
on Linux, inherited by the worker threads torch starts for it).
"""

from __future__ import annotations

import copy
import heapq
import math
import os
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .checkpoint import LoadedModel, sha256_bytes, state_dict_bytes
from .data import MnistSplit, take
from .model import ModelConfig, check_config
from .train import EpochStats, Progress, TrainConfig, TrainResult, model_card, train_model

MAX_RUNNING_JOBS = int(os.environ.get("CNN_EXPLORER_MAX_TRAINING_JOBS", "2"))
# Waiting beyond this many runs (minutes each) is worse than being told to come back later.
MAX_QUEUED_JOBS = int(os.environ.get("CNN_EXPLORER_MAX_QUEUED_JOBS", "10"))
MAX_EPOCHS = 10  # a job keeps one snapshot of its network per epoch: this bounds their memory
MAX_CURVE_POINTS = 2000  # points of the live curve kept per job, however many batches it runs
NICE = 10  # how much lower a training thread's CPU priority is than the pages' (Linux)

Status = Literal["created", "queued", "running", "done", "cancelled", "dropped", "failed"]
FINISHED: tuple[Status, ...] = ("done", "cancelled", "dropped", "failed")

_registry_lock = threading.Lock()
_live: weakref.WeakSet[TrainingJob] = weakref.WeakSet()  # submitted and not finished, in any queue


def _lower_this_threads_priority(nice: int) -> None:
    """Give the calling thread (and the threads it starts) ``nice`` more niceness, where the OS allows it.

    On Linux niceness belongs to each thread, and the threads torch starts for this thread's
    parallel work inherit it: training then only takes the CPU time the pages leave. Elsewhere,
    or without the permission, training simply runs at normal priority.
    """
    if nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except (AttributeError, OSError):
        pass


class JobLimitError(RuntimeError):
    """The queue is full; str(e) says so in words for the user."""


class Owner:
    """A token standing for whoever asked for a job (e.g. one browser session).

    Keep it where the session keeps its state; jobs only hold a weak reference, so when the
    session goes and the token is collected, its jobs are dropped.
    """

    __slots__ = ("__weakref__",)


def running_jobs() -> int:
    """How many training jobs are running in this process right now (in any queue)."""
    return sum(1 for job in active_jobs() if job.status == "running")


def active_jobs() -> list[TrainingJob]:
    """The jobs waiting or running in this process now (e.g. to cancel them all at shutdown or after a test)."""
    with _registry_lock:
        return list(_live)


def estimated_waits(remaining: Sequence[float | None], durations: Sequence[float | None],
                    slots: int) -> list[float | None]:
    """Seconds until each waiting job starts, first come first served, on ``slots`` slots.

    ``remaining``: seconds left of each running job; ``durations``: how long each waiting job
    will take, in queue order. Each waiting job starts when fewer than ``slots`` jobs run. A wait
    that depends on an unknown (None) figure is None.
    """
    if slots < 1 or any(r is None for r in remaining):
        return [None] * len(durations)
    ends = [max(0.0, float(r)) for r in remaining if r is not None]
    heapq.heapify(ends)
    now = 0.0
    waits: list[float | None] = []
    for i, duration in enumerate(durations):
        while len(ends) >= slots:
            now = max(now, heapq.heappop(ends))
        waits.append(now)
        if duration is None:
            return waits + [None] * (len(durations) - i - 1)
        heapq.heappush(ends, now + max(0.0, float(duration)))
    return waits


@dataclass(frozen=True)
class CurvePoint:
    """One batch of the live curve: where training was (in epochs) and the running loss and accuracy."""

    epochs_done: float
    loss: float
    accuracy: float


@dataclass(frozen=True)
class EpochView:
    """The network as it was after one epoch: a frozen eval-mode copy, and its first convolution's weights."""

    epoch: int
    model: nn.Module  # eval mode, no gradients: safe to run from any thread
    conv1: torch.Tensor | None  # (filters, 1, k, k) for a CNN, None for an MLP


@dataclass(frozen=True)
class QueuePlace:
    """Where a waiting job stands: 1-based position among ``waiting`` jobs, and its estimated start."""

    position: int
    waiting: int
    estimated_start: float | None  # seconds from now; None while nothing has run long enough to tell


@dataclass(frozen=True)
class JobSnapshot:
    """A consistent copy of a job's progress, safe to read while the job goes on."""

    status: Status
    fraction: float  # 0..1 of all batches
    epoch: int  # the epoch in progress (or the last one)
    epochs: int
    loss: float | None  # running loss of the current epoch
    accuracy: float | None  # running training accuracy of the current epoch
    history: tuple[EpochStats, ...]
    curve: tuple[CurvePoint, ...]
    elapsed: float  # seconds since training started (frozen once finished; 0 while waiting)
    error: str | None = None
    place: QueuePlace | None = None  # while waiting in a queue
    epoch_views: tuple[EpochView, ...] = ()

    @property
    def waiting(self) -> bool:
        return self.status == "queued"

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def active(self) -> bool:
        """Waiting or running: the job still has something to do."""
        return self.status in ("queued", "running")

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class TrainingQueue:
    """Runs at most ``max_running`` jobs at once; up to ``max_queued`` more wait their turn, in order.

    ``None`` limits follow the module's :data:`MAX_RUNNING_JOBS` and :data:`MAX_QUEUED_JOBS` (read
    at each use). Thread-safe; the app uses one per process, :func:`default_queue`.
    """

    def __init__(self, max_running: int | None = None, max_queued: int | None = None) -> None:
        self._max_running = max_running
        self._max_queued = max_queued
        self._lock = threading.Lock()
        self._waiting: deque[TrainingJob] = deque()
        self._running: list[TrainingJob] = []
        self._rate: float | None = None  # seconds per training digit of the last finished run

    @property
    def max_running(self) -> int:
        return MAX_RUNNING_JOBS if self._max_running is None else self._max_running

    @property
    def max_queued(self) -> int:
        return MAX_QUEUED_JOBS if self._max_queued is None else self._max_queued

    def submit(self, job: TrainingJob, owner: Owner | None = None) -> TrainingJob:
        """Run ``job`` now if a slot is free, else put it at the end of the queue; returns the job.

        Raises JobLimitError when ``max_queued`` jobs already wait. With an ``owner``, the job is
        dropped once the owner has been garbage-collected.
        """
        with self._lock:
            self._drop_orphans()
            job._enqueue(self, owner)  # raises if the job was submitted before
            if len(self._waiting) >= self.max_queued and len(self._running) >= self.max_running:
                job._refused()
                running, waiting = len(self._running), len(self._waiting)
                raise JobLimitError(
                    f"{running} training run{'s' if running != 1 else ''} already run{'s' if running == 1 else ''} "
                    f"on this server and {waiting} more wait{'s' if waiting == 1 else ''} (the queue holds at "
                    f"most {self.max_queued}, so that waits stay short). Try again in a few minutes."
                )
            with _registry_lock:
                _live.add(job)
            self._waiting.append(job)
            self._promote()
        return job

    def place(self, job: TrainingJob) -> QueuePlace | None:
        """Where ``job`` waits in this queue (None when it is not waiting here)."""
        with self._lock:
            return self._place(job)

    def counts(self) -> tuple[int, int]:
        """(running, waiting) jobs of this queue now."""
        with self._lock:
            self._drop_orphans()
            return len(self._running), len(self._waiting)

    # --- internals: _place, _current_rate, _drop_orphans and _promote run under self._lock; the others take it

    def _place(self, job: TrainingJob) -> QueuePlace | None:
        self._drop_orphans()
        if job not in self._waiting:
            return None
        ahead = list(self._waiting)[: self._waiting.index(job)]
        rate = self._current_rate()
        remaining = [r._remaining(rate) for r in self._running]
        # This job's own duration does not change when it starts: None stands for it at the end.
        durations = [rate * q.work if rate is not None else None for q in ahead] + [None]
        wait = estimated_waits(remaining, durations, self.max_running)[-1]
        return QueuePlace(len(ahead) + 1, len(self._waiting), wait)

    def _current_rate(self) -> float | None:
        """Seconds per training digit, from the running jobs' progress (else the last finished run)."""
        rates = [r for r in (job._rate() for job in self._running) if r is not None]
        return sum(rates) / len(rates) if rates else self._rate

    def _drop_orphans(self) -> None:
        for job in [j for j in self._waiting if j._orphaned()]:
            self._waiting.remove(job)
            job._end_without_running("dropped")

    def _promote(self) -> None:
        while self._waiting and len(self._running) < self.max_running:
            job = self._waiting.popleft()
            if job._orphaned():
                job._end_without_running("dropped")
                continue
            self._running.append(job)
            try:
                job._launch()
            except RuntimeError as e:  # no thread to be had (the process is at its limit): say so, go on
                self._running.remove(job)
                job._fail_to_launch(f"{type(e).__name__}: {e}")

    def _withdraw(self, job: TrainingJob) -> bool:
        """Take a waiting job out of the queue (True), or say it is not waiting here (False)."""
        with self._lock:
            if job not in self._waiting:
                return False
            self._waiting.remove(job)
            job._end_without_running("cancelled")
            return True

    def _finished(self, job: TrainingJob) -> None:
        with self._lock:
            if job in self._running:
                self._running.remove(job)
            rate = job._rate()
            if rate is not None and job.status == "done":
                self._rate = rate
            self._promote()


_default_queue = TrainingQueue()


def default_queue() -> TrainingQueue:
    """The process's training queue (limits from CNN_EXPLORER_MAX_TRAINING_JOBS and CNN_EXPLORER_MAX_QUEUED_JOBS)."""
    return _default_queue


class TrainingJob:
    """Train one model of the family in a background thread, once its queue gives it a slot.

    >>> job = TrainingJob(CNNConfig(), train_split, test_split, TrainConfig(epochs=1, train_size=500))
    >>> job.start(); job.wait(); job.snapshot().status   # doctest: +SKIP
    'done'
    """

    def __init__(self, model_config: ModelConfig, train_split: MnistSplit, test_split: MnistSplit | None = None,
                 config: TrainConfig = TrainConfig(epochs=1), name: str = "my network", nice: int = NICE) -> None:
        # An impossible architecture fails here, in the caller, not in the thread. check_config builds
        # nothing: building would draw initial weights from the process-wide generator, another session's.
        check_config(model_config)
        if config.epochs < 1 or config.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        if config.epochs > MAX_EPOCHS:
            raise ValueError(f"a job trains at most {MAX_EPOCHS} epochs; use the command line for more")
        self.model_config = model_config
        self.train_split = train_split
        self.test_split = test_split
        self.config = config
        self.name = name
        self.nice = nice
        self.result: TrainResult | None = None
        self.train_examples = len(take(train_split, config.train_size))
        self.work = self.train_examples * config.epochs  # digits to go through: what time estimates scale with
        batches = config.epochs * math.ceil(self.train_examples / config.batch_size)
        self._curve_stride = max(1, math.ceil(batches / MAX_CURVE_POINTS))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._queue: TrainingQueue | None = None
        self._owner: weakref.ref[Owner] | None = None
        self._status: Status = "created"
        self._progress: Progress | None = None
        self._history: list[EpochStats] = []
        self._curve: list[CurvePoint] = []
        self._views: list[EpochView] = []
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._error: str | None = None

    # --- control -------------------------------------------------------------------------------------

    def start(self, owner: Owner | None = None, queue: TrainingQueue | None = None) -> TrainingJob:
        """Submit the job to ``queue`` (the process's :func:`default_queue` by default); returns the job.

        It starts at once if a slot is free, else waits its turn; JobLimitError when the queue is full.
        """
        return (queue if queue is not None else default_queue()).submit(self, owner)

    def cancel(self) -> None:
        """Take the job out of its queue, or stop it after the current batch (it is then marked cancelled)."""
        self._stop.set()
        if self._queue is not None and self._queue._withdraw(self):
            return
        with self._lock:
            if self._status != "created":
                return
        self._end_without_running("cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (True) or ``timeout`` seconds have passed (False)."""
        return self._finished.wait(timeout)

    @property
    def owner(self) -> Owner | None:
        """Who asked for the job (None when nobody was named, or once the owner is gone)."""
        return self._owner() if self._owner is not None else None

    @property
    def status(self) -> Status:
        with self._lock:
            return self._status

    # --- reading -------------------------------------------------------------------------------------

    def snapshot(self) -> JobSnapshot:
        """The progress so far, copied under the locks (with the place in the queue while waiting)."""
        queue = self._queue
        if queue is None:
            return self._snapshot(None)
        with queue._lock:  # promotion happens under the queue's lock: place and status agree
            return self._snapshot(queue._place(self))

    def loaded_model(self) -> LoadedModel:
        """The trained model with its model card (built by :func:`cnn_core.train.model_card`, as the CLI's).

        The card's sha256 matches the bytes of :func:`cnn_core.checkpoint.state_dict_bytes`, so the
        pair can be downloaded and loaded back.
        """
        snap = self.snapshot()
        if snap.status not in ("done", "cancelled") or self.result is None:
            raise RuntimeError(f"the job has no model to use (status: {snap.status})")
        model = self.result.model
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        card = model_card(name=self.name, model_config=self.model_config, config=self.config, result=self.result,
                          train_split=self.train_split, held_out=self.test_split, train_seconds=snap.elapsed,
                          origin="trained in the app")
        # The identity a session gives the model: what the bytes of a download of these weights hash to.
        card["sha256"] = sha256_bytes(state_dict_bytes(model))
        return LoadedModel(model=model, config=self.model_config, card=card)

    def _snapshot(self, place: QueuePlace | None) -> JobSnapshot:
        with self._lock:
            p = self._progress
            now = self._ended_at if self._ended_at is not None else time.monotonic()
            elapsed = now - self._started_at if self._started_at is not None else 0.0
            fraction = 1.0 if self._status == "done" else (p.fraction if p is not None else 0.0)
            return JobSnapshot(
                status=self._status, fraction=fraction,
                epoch=p.epoch if p is not None else 0, epochs=self.config.epochs,
                loss=p.loss if p is not None else None, accuracy=p.accuracy if p is not None else None,
                history=tuple(self._history), curve=tuple(self._curve), elapsed=elapsed, error=self._error,
                place=place if self._status == "queued" else None, epoch_views=tuple(self._views),
            )

    # --- for the queue (called under the queue's lock) -----------------------------------------------

    def _enqueue(self, queue: TrainingQueue, owner: Owner | None) -> None:
        with self._lock:
            if self._status != "created" or self._queue is not None:
                raise RuntimeError("a job can be started only once")
            self._queue = queue
            self._owner = weakref.ref(owner) if owner is not None else None
            self._status = "queued"

    def _refused(self) -> None:
        with self._lock:
            self._queue, self._owner, self._status = None, None, "created"

    def _orphaned(self) -> bool:
        """True when the job had an owner and the owner is gone."""
        return self._owner is not None and self._owner() is None

    def _launch(self) -> None:
        with self._lock:
            self._status = "running"
            self._started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"training-{self.name}", daemon=True)
        self._thread.start()

    def _fail_to_launch(self, error: str) -> None:
        with self._lock:
            self._status, self._error, self._ended_at = "failed", error, time.monotonic()
        with _registry_lock:
            _live.discard(self)
        self._finished.set()

    def _end_without_running(self, status: Status) -> None:
        with self._lock:
            if self._status in FINISHED or self._status == "running":
                return
            self._status = status
        with _registry_lock:
            _live.discard(self)
        self._finished.set()

    def _rate(self) -> float | None:
        """Seconds per training digit so far (None before the first batch)."""
        with self._lock:
            if self._started_at is None or self._progress is None or self._progress.fraction <= 0:
                return None
            end = self._ended_at if self._ended_at is not None else time.monotonic()
            return (end - self._started_at) / (self._progress.fraction * self.work)

    def _remaining(self, rate: float | None) -> float | None:
        """Seconds this running job still needs: from its own pace, else from ``rate``."""
        own = self._rate()
        pace = own if own is not None else rate
        if pace is None:
            return None
        with self._lock:
            done = self._progress.fraction if self._progress is not None else 0.0
        return pace * self.work * (1 - done)

    # --- the thread ----------------------------------------------------------------------------------

    def _should_stop(self) -> bool:
        # Checked before every batch: a cancel, or the session that asked for the run being gone.
        return self._stop.is_set() or self._orphaned()

    def _on_progress(self, p: Progress) -> None:
        keep = p.batch == p.batches or ((p.epoch - 1) * p.batches + p.batch) % self._curve_stride == 0
        with self._lock:
            self._progress = p
            if keep:
                self._curve.append(CurvePoint((p.epoch - 1) + p.batch / p.batches, p.loss, p.accuracy))

    def _on_epoch(self, stats: EpochStats, model: nn.Module | None = None) -> None:
        view = None
        if model is not None:  # a copy, outside the lock: the next epoch goes on changing the original
            frozen = copy.deepcopy(model).eval()
            for p in frozen.parameters():
                p.requires_grad_(False)
            conv1 = getattr(frozen, "conv1", None)
            weights = conv1.weight.detach().clone() if isinstance(conv1, nn.Conv2d) else None
            view = EpochView(stats.epoch, frozen, weights)
        with self._lock:
            self._history.append(stats)
            if view is not None:
                self._views.append(view)

    def _run(self) -> None:
        status: Status = "failed"
        _lower_this_threads_priority(self.nice)
        try:
            result = train_model(self.model_config, self.train_split, self.test_split, self.config,
                                 on_progress=self._on_progress, on_epoch=self._on_epoch,
                                 should_stop=self._should_stop)
            self.result = result
            if not result.cancelled:
                status = "done"
            else:
                status = "cancelled" if self._stop.is_set() else "dropped"
        except Exception as e:  # reported to the page through the snapshot, never lost
            with self._lock:
                self._error = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        finally:
            with self._lock:
                self._status = status
                self._ended_at = time.monotonic()
            with _registry_lock:
                _live.discard(self)
            if self._queue is not None:
                self._queue._finished(self)
            self._finished.set()
