"""Many sessions at once: one shared model traced from many threads and processes gives the single-threaded answers."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from cnn_core.introspect import Trace, trace
from cnn_core.preprocess import normalise

THREADS = 16
PROCESSES = 4
REPEATS = 50


def distinct_digits(test_split, n: int) -> list[np.ndarray]:
    """``n`` different test digits (pixels in [0, 1]), covering every class."""
    labels = test_split.labels.numpy()
    picks: list[int] = []
    for rank in range(n):
        digit = rank % 10
        picks.append(int(np.nonzero(labels == digit)[0][rank // 10]))
    assert len(set(picks)) == n
    return [test_split.images[i].numpy().astype(np.float32) / 255 for i in picks]


def assert_same_trace(got: Trace, expected: Trace) -> None:
    assert torch.equal(got.input, expected.input)
    assert torch.equal(got.probabilities, expected.probabilities)
    assert got.names() == expected.names()
    for a, b in zip(got.layers, expected.layers):
        assert torch.equal(a.output, b.output), a.name


def no_hooks(model: torch.nn.Module) -> bool:
    from torch.nn.modules import module as nn_module

    per_module = all(
        not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
        for m in model.modules()
    )
    return per_module and not (nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks)


def test_threads_tracing_through_one_shared_model(shipped, test_split):
    model = shipped.model
    inputs = [normalise(p) for p in distinct_digits(test_split, THREADS)]
    expected = [trace(model, x) for x in inputs]  # single-threaded, before any concurrency
    # The digits cover every class and the network reads them: the threads get different answers to keep apart.
    assert len({t.prediction for t in expected}) >= 9
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    start = threading.Barrier(THREADS)

    def worker(i: int) -> list[Trace]:
        start.wait(timeout=30)  # all threads trace at the same time
        return [trace(model, inputs[i]) for _ in range(REPEATS)]

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS), timeout=120))

    for i, traces in enumerate(results):
        assert len(traces) == REPEATS
        for t in traces:
            assert_same_trace(t, expected[i])
    assert no_hooks(model)
    assert not model.training
    state_after = model.state_dict()
    assert state_after.keys() == state_before.keys()
    assert all(torch.equal(state_after[k], state_before[k]) for k in state_before)


def test_threads_through_the_apps_cached_traces(test_split):
    """ui.state's cached model and traces (Streamlit caches, bare mode) under concurrent sessions."""
    from ui import state

    logging.getLogger("streamlit").setLevel(logging.ERROR)  # bare mode warns once per thread
    pixels = distinct_digits(test_split, THREADS)
    model = state.get_model().model
    expected = [trace(model, normalise(p)) for p in pixels]
    start = threading.Barrier(THREADS)

    def worker(i: int) -> list[Trace]:
        start.wait(timeout=30)
        # Half the threads ask for the same digit at the same moment: the cache must not mix them up.
        digit = state.Digit(pixels[i if i % 2 else 0], f"thread {i}")
        return [state.get_trace(digit) for _ in range(REPEATS)]

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, range(THREADS), timeout=120))

    for i, traces in enumerate(results):
        for t in traces:
            assert_same_trace(t, expected[i if i % 2 else 0])
    assert no_hooks(model)


def _trace_in_a_process(args: tuple[np.ndarray, int, int]) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """Run in a spawned process: load the shipped model, trace one digit many times."""
    pixels, repeats, threads = args
    torch.set_num_threads(threads)  # same as the parent, so float results can be compared exactly
    from cnn_core.checkpoint import load_checkpoint

    model = load_checkpoint().model
    out = []
    for _ in range(repeats):
        t = trace(model, normalise(pixels))
        out.append((t.probabilities.numpy(), [layer.output.numpy() for layer in t.layers]))
    return out


def test_processes_tracing_the_shipped_model(shipped, test_split):
    pixels = distinct_digits(test_split, PROCESSES)
    expected = [trace(shipped.model, normalise(p)) for p in pixels]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(PROCESSES) as pool:
        jobs = [(p, REPEATS, torch.get_num_threads()) for p in pixels]
        results = pool.map_async(_trace_in_a_process, jobs).get(timeout=120)
    for i, runs in enumerate(results):
        assert len(runs) == REPEATS
        for probabilities, outputs in runs:
            assert torch.equal(torch.from_numpy(probabilities), expected[i].probabilities)
            for got, layer in zip(outputs, expected[i].layers, strict=True):
                assert torch.equal(torch.from_numpy(got), layer.output), layer.name
