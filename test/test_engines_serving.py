"""The node's serving policies without ROS: the latest-frame worker and the background engine swap."""
from __future__ import annotations

import threading
import time

import pytest

from rtseg_ros.engines.serving import EngineState, EngineSwapper, LatestFrameWorker


def _wait(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# Latest-frame worker ------------------------------------------------------------------------


@pytest.mark.parametrize("depth, displaced, handled", [
    (1, [False, True, True, True, True], [0, 5]),  # one pending slot: only the newest waits
    (3, [False, False, False, True, True], [0, 3, 4, 5]),  # 1 and 2 dropped once three wait
])
def test_worker_handles_the_newest_pending_items_in_order(depth: int, displaced: list[bool],
                                                          handled: list[int]) -> None:
    started, release = threading.Event(), threading.Event()
    done: list[int] = []

    def handle(item: int) -> None:
        if item == 0:
            started.set()
            release.wait(5)
        done.append(item)

    worker = LatestFrameWorker(handle, depth=depth)
    try:
        assert worker.submit(0) is False
        assert started.wait(5)  # item 0 is in hand, blocked
        assert [worker.submit(i) for i in range(1, 6)] == displaced
        release.set()
        _wait(lambda: len(done) == len(handled))
        time.sleep(0.05)
        assert done == handled
    finally:
        worker.stop()


def test_worker_refuses_a_depth_below_one() -> None:
    with pytest.raises(ValueError, match="depth must be at least 1"):
        LatestFrameWorker(lambda item: None, depth=0)


def test_worker_survives_a_failing_handler() -> None:
    failed = threading.Event()
    handled: list[int] = []

    def handle(item: int) -> None:
        if item == 1:
            failed.set()
            raise RuntimeError("boom")
        handled.append(item)

    worker = LatestFrameWorker(handle)
    try:
        worker.submit(1)
        assert failed.wait(5)
        worker.submit(2)
        _wait(lambda: handled == [2])
    finally:
        worker.stop()


# Engine swap --------------------------------------------------------------------------------


def test_old_engine_serves_until_the_new_one_is_built() -> None:
    gate = threading.Event()
    swapped: list[str] = []

    def build(config: str) -> str:
        if config == "slow":
            gate.wait(5)
        return f"engine:{config}"

    swapper = EngineSwapper(build, "first", on_swap=swapped.append)
    assert swapper.rebuild("slow") is True
    assert swapper.state == EngineState.REBUILDING and swapper.engine == "engine:first"
    gate.set()
    swapper.wait_idle(5)
    assert (swapper.engine, swapper.config, swapper.state, swapped) == ("engine:slow", "slow", "serving", ["slow"])
    assert swapper.rebuild("slow") is False  # already serving


def test_a_failed_rebuild_keeps_the_old_engine() -> None:
    failures: list[tuple[str, str]] = []

    def build(config: str) -> str:
        if config == "bad":
            raise ValueError("no such weights")
        return f"engine:{config}"

    swapper = EngineSwapper(build, "good", on_failure=lambda config, error: failures.append((config, str(error))))
    swapper.rebuild("bad")
    swapper.wait_idle(5)
    assert swapper.engine == "engine:good" and swapper.state == EngineState.REBUILD_FAILED
    assert swapper.last_error == "no such weights" and failures == [("bad", "no such weights")]


def test_only_the_latest_of_overlapping_rebuilds_is_swapped_in() -> None:
    gates = {"a": threading.Event(), "b": threading.Event()}

    def build(config: str) -> str:
        if config in gates:
            gates[config].wait(5)
        return config

    swapper = EngineSwapper(build, "start")
    swapper.rebuild("a")
    swapper.rebuild("b")
    gates["b"].set()
    _wait(lambda: swapper.engine == "b")
    gates["a"].set()  # finishes last, but was superseded
    swapper.wait_idle(5)
    assert swapper.engine == "b" and swapper.config == "b"


def test_start_up_errors_reach_the_caller() -> None:
    def build(config: str) -> str:
        raise FileNotFoundError(config)

    with pytest.raises(FileNotFoundError):
        EngineSwapper(build, "missing.pth")


def test_an_engine_made_by_the_caller_serves_without_a_build() -> None:
    built: list[str] = []

    def build(config: str) -> str:
        built.append(config)
        return f"engine {config}"

    swapper = EngineSwapper(build, "first", initial="ready-made")
    assert swapper.engine == "ready-made" and swapper.config == "first" and built == []
    release = threading.Event()
    assert swapper.run_in_background("variants", lambda: release.wait(5.0), what="its variants")
    assert swapper.state == EngineState.BUILDING  # the caller's remaining work, reported as a build
    release.set()
    swapper.wait_idle(5.0)
    assert swapper.state == EngineState.SERVING
    assert swapper.rebuild("second")
    swapper.wait_idle(5.0)
    assert swapper.engine == "engine second" and built == ["second"]
