"""Training a network in a background thread, with a progress snapshot any thread can read.

The app trains small variants while the page keeps answering: a :class:`TrainingJob`
runs :func:`cnn_core.train.train_model` in its own daemon thread, records progress
under a lock, and can be cancelled between batches. No Streamlit here.

Threads: ``torch.set_num_threads`` is process-wide, so it is deliberately not called.
A job's tensor operations run on the same cores as the app's traces (2 on the reference
machine), so while a job runs pages render more slowly (``bench/bench_train_load.py``
measures by how much). Two things bound that: the training thread lowers its own CPU
priority (``nice``, per thread on Linux, inherited by the worker threads torch starts for
it), and at most :data:`MAX_RUNNING_JOBS` jobs run at once in the whole process
(:meth:`TrainingJob.start` raises :class:`JobLimitError` beyond that).
"""

from __future__ import annotations

import os
import threading
import time
import traceback
import weakref
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from .checkpoint import LoadedModel, sha256_bytes, state_dict_bytes
from .data import MnistSplit, take
from .model import ModelConfig, build_model, count_parameters
from .train import EpochStats, Progress, TrainConfig, TrainResult, train_model

MAX_RUNNING_JOBS = int(os.environ.get("CNN_EXPLORER_MAX_TRAINING_JOBS", "2"))
NICE = 10  # how much lower a training thread's CPU priority is than the pages' (Linux)

Status = Literal["created", "running", "done", "cancelled", "failed"]

_slots_lock = threading.Lock()
_running = 0
_live: "weakref.WeakSet[TrainingJob]" = weakref.WeakSet()  # started and not finished yet


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
    """Too many training jobs already run in this process; str(e) says so in words for the user."""


def running_jobs() -> int:
    """How many training jobs are running in this process right now."""
    with _slots_lock:
        return _running


def active_jobs() -> list["TrainingJob"]:
    """The jobs running in this process now (e.g. to cancel them all at shutdown or after a test)."""
    with _slots_lock:
        return list(_live)


def _take_slot() -> None:
    global _running
    with _slots_lock:
        if _running >= MAX_RUNNING_JOBS:
            raise JobLimitError(
                f"{_running} training job{'s' if _running != 1 else ''} already run on this server (the limit is "
                f"{MAX_RUNNING_JOBS}, so that pages stay responsive). Try again in a minute."
            )
        _running += 1


def _release_slot() -> None:
    global _running
    with _slots_lock:
        _running -= 1


@dataclass(frozen=True)
class CurvePoint:
    """One batch of the live curve: where training was (in epochs) and the running loss and accuracy."""

    epochs_done: float
    loss: float
    accuracy: float


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
    elapsed: float  # seconds since start (frozen once finished)
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def finished(self) -> bool:
        return self.status in ("done", "cancelled", "failed")


class TrainingJob:
    """Train one model of the family in a background thread.

    >>> job = TrainingJob(CNNConfig(), train_split, test_split, TrainConfig(epochs=1, train_size=500))
    >>> job.start(); job.wait(); job.snapshot().status   # doctest: +SKIP
    'done'
    """

    def __init__(self, model_config: ModelConfig, train_split: MnistSplit, test_split: MnistSplit | None = None,
                 config: TrainConfig = TrainConfig(epochs=1), name: str = "my network", nice: int = NICE) -> None:
        build_model(model_config)  # an impossible architecture fails here, in the caller, not in the thread
        if config.epochs < 1 or config.batch_size < 1:
            raise ValueError("epochs and batch size must be at least 1")
        self.model_config = model_config
        self.train_split = train_split
        self.test_split = test_split
        self.config = config
        self.name = name
        self.nice = nice
        self.result: TrainResult | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._status: Status = "created"
        self._progress: Progress | None = None
        self._history: list[EpochStats] = []
        self._curve: list[CurvePoint] = []
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._error: str | None = None

    # --- control -------------------------------------------------------------------------------------

    def start(self) -> "TrainingJob":
        """Start training in a daemon thread; raises JobLimitError when the process runs too many jobs."""
        with self._lock:
            if self._status != "created":
                raise RuntimeError("a job can be started only once")
            _take_slot()
            with _slots_lock:
                _live.add(self)
            self._status = "running"
            self._started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"training-{self.name}", daemon=True)
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the job to stop after the current batch (the result is then marked cancelled)."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished (True) or ``timeout`` seconds have passed (False)."""
        return self._finished.wait(timeout)

    # --- reading -------------------------------------------------------------------------------------

    def snapshot(self) -> JobSnapshot:
        """The progress so far, copied under the lock."""
        with self._lock:
            p = self._progress
            now = self._ended_at if self._ended_at is not None else time.perf_counter()
            elapsed = now - self._started_at if self._started_at is not None else 0.0
            fraction = p.fraction if p is not None else 0.0
            if self._status == "done":
                fraction = 1.0
            return JobSnapshot(
                status=self._status, fraction=fraction,
                epoch=p.epoch if p is not None else 0, epochs=self.config.epochs,
                loss=p.loss if p is not None else None, accuracy=p.accuracy if p is not None else None,
                history=tuple(self._history), curve=tuple(self._curve), elapsed=elapsed, error=self._error,
            )

    @property
    def train_examples(self) -> int:
        """How many digits the job trains on."""
        return len(take(self.train_split, self.config.train_size))

    def loaded_model(self) -> LoadedModel:
        """The trained model with a model card like the training CLI's (sha256 of its state_dict bytes).

        The card's sha256 is the model's identity in the app, and it matches the bytes of
        :func:`cnn_core.checkpoint.state_dict_bytes`, so the pair can be downloaded and loaded back.
        """
        snap = self.snapshot()
        if snap.status not in ("done", "cancelled") or self.result is None:
            raise RuntimeError(f"the job has no model to use (status: {snap.status})")
        model = self.result.model
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        history = [asdict(h) for h in self.result.history]
        last = self.result.history[-1] if self.result.history else None
        card = {
            "name": self.name,
            "origin": "trained in the app",
            "seed": self.config.seed,
            "training": asdict(self.config),
            "data": {"train": take(self.train_split, self.config.train_size).source,
                     "train_examples": self.train_examples,
                     **({"test": self.test_split.source, "test_examples": len(self.test_split)}
                        if self.test_split is not None else {})},
            "epochs": len(self.result.history),
            "history": history,
            "metrics": ({"test_accuracy": last.test_accuracy, "test_examples": len(self.test_split)}
                        if last is not None and last.test_accuracy is not None and self.test_split is not None
                        else {}),
            "cancelled": self.result.cancelled,
            "train_seconds": round(snap.elapsed, 1),
            "torch": torch.__version__,
            "architecture": self.model_config.to_dict(),
            "sha256": sha256_bytes(state_dict_bytes(model)),
            "parameters": count_parameters(build_model(self.model_config)),
        }
        return LoadedModel(model=model, config=self.model_config, card=card)

    # --- the thread ----------------------------------------------------------------------------------

    def _on_progress(self, p: Progress) -> None:
        point = CurvePoint((p.epoch - 1) + p.batch / p.batches, p.loss, p.accuracy)
        with self._lock:
            self._progress = p
            self._curve.append(point)

    def _on_epoch(self, stats: EpochStats) -> None:
        with self._lock:
            self._history.append(stats)

    def _run(self) -> None:
        status: Status = "failed"
        _lower_this_threads_priority(self.nice)
        try:
            result = train_model(self.model_config, self.train_split, self.test_split, self.config,
                                 on_progress=self._on_progress, on_epoch=self._on_epoch,
                                 should_stop=self._stop.is_set)
            self.result = result
            status = "cancelled" if result.cancelled else "done"
        except Exception as e:  # noqa: BLE001 - reported to the page through the snapshot, never lost
            with self._lock:
                self._error = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        finally:
            with self._lock:
                self._status = status
                self._ended_at = time.perf_counter()
            with _slots_lock:
                _live.discard(self)
            _release_slot()
            self._finished.set()

