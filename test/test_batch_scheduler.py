"""BatchScheduler: one batch of the newest item per source, no source starved, errors contained."""
from __future__ import annotations

import collections
import threading
import time

import pytest

from rtseg_ros.engines.serving import BatchScheduler


class _Recorder:
    """A handler that records batches and can be held, to let items pile up meanwhile."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.done = threading.Condition()

    def __call__(self, batch: list[tuple[str, int]]) -> None:
        self.entered.set()
        self.gate.wait(5)
        with self.done:
            self.batches.append(batch)
            self.done.notify_all()

    def wait_batches(self, count: int, timeout: float = 5.0) -> None:
        with self.done:
            assert self.done.wait_for(lambda: len(self.batches) >= count, timeout), self.batches


def test_the_newest_item_of_each_source_runs_as_one_batch() -> None:
    recorder = _Recorder()
    recorder.gate.clear()
    scheduler = BatchScheduler(recorder, max_batch=4)
    try:
        scheduler.submit("front", 0)
        assert recorder.entered.wait(5)  # the handler holds the first batch
        assert scheduler.submit("front", 1) is False
        assert scheduler.submit("front", 2) is True  # replaced 1: front's own drop
        assert scheduler.submit("rear", 10) is False
        assert scheduler.submit("left", 20) is False
        recorder.gate.set()
        recorder.wait_batches(2)
        assert recorder.batches[0] == [("front", 0)]
        assert sorted(recorder.batches[1]) == [("front", 2), ("left", 20), ("rear", 10)]
    finally:
        scheduler.stop()


def test_no_source_starves_when_more_wait_than_fit_in_a_batch() -> None:
    recorder = _Recorder()
    scheduler = BatchScheduler(recorder, max_batch=2)
    cameras = ["a", "b", "c", "d", "e"]
    try:
        for frame in range(20):
            recorder.gate.clear()
            for camera in cameras:  # every camera always has a frame waiting: overload
                scheduler.submit(camera, frame)
            recorder.gate.set()
            recorder.wait_batches(frame + 1)
        served = collections.Counter(camera for batch in recorder.batches for camera, _ in batch)
        assert all(len(batch) <= 2 for batch in recorder.batches)
        # Equal rates in, equal service out: within one batch's worth of each other.
        assert max(served.values()) - min(served.values()) <= 2, served
        assert set(served) == set(cameras)
    finally:
        scheduler.stop()


def test_batch_wait_collects_sources_that_arrive_soon_after() -> None:
    recorder = _Recorder()
    scheduler = BatchScheduler(recorder, max_batch=3, batch_wait_s=1.0)
    try:
        scheduler.submit("front", 1)
        time.sleep(0.05)
        scheduler.submit("rear", 2)
        scheduler.submit("left", 3)  # the batch is full: it goes before the wait ends
        recorder.wait_batches(1)
        assert sorted(recorder.batches[0]) == [("front", 1), ("left", 3), ("rear", 2)]
    finally:
        scheduler.stop()


def test_a_failing_handler_keeps_the_scheduler_serving() -> None:
    handled: list[list[tuple[str, int]]] = []
    event = threading.Event()

    def handle(batch: list[tuple[str, int]]) -> None:
        handled.append(batch)
        if len(handled) == 1:
            raise RuntimeError("bad batch")
        event.set()

    scheduler = BatchScheduler(handle, max_batch=2)
    try:
        scheduler.submit("front", 1)
        deadline = time.monotonic() + 5
        while len(handled) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        scheduler.submit("front", 2)
        assert event.wait(5)
        assert handled[-1] == [("front", 2)]
    finally:
        scheduler.stop()


def test_discard_forgets_a_source() -> None:
    recorder = _Recorder()
    recorder.gate.clear()
    scheduler = BatchScheduler(recorder, max_batch=2)
    try:
        scheduler.submit("front", 0)
        assert recorder.entered.wait(5)
        scheduler.submit("rear", 1)
        assert scheduler.discard("rear") is True
        assert scheduler.discard("rear") is False
        recorder.gate.set()
        recorder.wait_batches(1)
        time.sleep(0.1)
        assert recorder.batches == [[("front", 0)]]
    finally:
        scheduler.stop()


@pytest.mark.parametrize("max_batch, wait", [(0, 0.0), (2, -1.0)])
def test_bad_settings_are_refused(max_batch: int, wait: float) -> None:
    with pytest.raises(ValueError):
        BatchScheduler(lambda batch: None, max_batch=max_batch, batch_wait_s=wait)


def test_the_rest_of_a_batch_runs_while_the_next_batch_is_handled() -> None:
    """Two stages: a batch's returned rest runs on a second thread beside the next handle, one at a time."""
    events: list[tuple[str, int]] = []
    lock = threading.Lock()
    rest_running = threading.Event()
    release_rest = threading.Event()
    overlapped: list[bool] = []
    restarts = collections.Counter()

    def record(event: str, batch_id: int) -> None:
        with lock:
            events.append((event, batch_id))

    def handle(batch: list[tuple[str, int]]):
        batch_id = batch[0][1]
        record("handle", batch_id)
        overlapped.append(rest_running.is_set())

        def rest() -> None:
            rest_running.set()
            restarts[batch_id] += 1
            record("rest start", batch_id)
            if batch_id == 0:
                release_rest.wait(5)  # batch 0's rest is slow: batch 1 is handled meanwhile
            record("rest end", batch_id)
            rest_running.clear()

        return rest

    scheduler = BatchScheduler(handle, max_batch=2)
    try:
        scheduler.submit("front", 0)
        assert rest_running.wait(5)
        scheduler.submit("front", 1)
        deadline = time.monotonic() + 5
        while ("handle", 1) not in events and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ("handle", 1) in events and ("rest start", 1) not in events
        assert overlapped[-1] is True  # batch 1's network ran while batch 0's rest did
        release_rest.set()
    finally:
        scheduler.stop()  # waits for the last rest
    assert events.index(("rest end", 0)) < events.index(("rest start", 1))  # one rest at a time, in order
    assert restarts == {0: 1, 1: 1} and events[-1] == ("rest end", 1)


def test_a_failing_rest_is_logged_and_the_next_batches_run(caplog) -> None:
    served: list[int] = []

    def handle(batch: list[tuple[str, int]]):
        value = batch[0][1]

        def rest() -> None:
            if value == 0:
                raise RuntimeError("finish failed")
            served.append(value)

        return rest

    scheduler = BatchScheduler(handle, max_batch=1)
    try:
        scheduler.submit("front", 0)
        deadline = time.monotonic() + 5
        while "the rest of a batch failed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        scheduler.submit("front", 1)
        while not served and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        scheduler.stop()
    assert served == [1] and "finish failed" in caplog.text
