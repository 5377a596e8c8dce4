"""Serving policies of a live segmenter: a latest-frame inference worker and a background engine swapper.

The segmentation node runs on them, but they know neither ROS nor the engines: the caller hands
them plain callables, so the policies (never queue behind old frames; keep serving with the old
engine while a new one builds) hold for any caller and are tested on their own.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["BatchScheduler", "LatestFrameWorker", "EngineSwapper", "EngineState"]

_log = logging.getLogger(__name__)

Item = TypeVar("Item")
Key = TypeVar("Key", bound=Hashable)
Engine = TypeVar("Engine")
Config = TypeVar("Config")


class _PendingWorker:
    """A thread that works through ``self._pending`` (set by the subclass before :meth:`_start`) until
    stopped: the wait, the stop and the guard the two serving policies below share."""

    def __init__(self, name: str) -> None:
        self._stopping = False
        self._condition = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Finish the work in hand, drop what is pending and end the thread."""
        with self._condition:
            self._stopping = True
            self._pending.clear()
            self._condition.notify()
        self._thread.join(timeout)

    def _wait_for_pending(self) -> bool:
        """Wait (condition held) until something is pending; False once stopping."""
        while not self._pending and not self._stopping:
            self._condition.wait()
        return not self._stopping

    def _run(self) -> None:
        raise NotImplementedError


class LatestFrameWorker(_PendingWorker, Generic[Item]):
    """Runs ``handle(item)`` on its own thread for the newest ``depth`` submitted items.

    With ``depth`` 1 there is one pending slot: an item submitted while another is still pending
    replaces it, so the handler never works through a backlog of stale frames. A larger ``depth``
    lets that many wait (oldest first), which absorbs a frame now and then that takes longer than the
    camera's period, at the price of that much more latency; when the queue is full the oldest
    pending item is dropped. ``submit`` says whether it dropped one, for the caller's drop count.

    Raises:
        ValueError: a ``depth`` below 1.
    """

    def __init__(self, handle: Callable[[Item], None], name: str = "latest-frame-worker", depth: int = 1) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        super().__init__(name)
        self._handle = handle
        self._pending: collections.deque[Item] = collections.deque()
        self._depth = depth
        self._start()

    def submit(self, item: Item) -> bool:
        """Queue ``item``; returns True if that dropped the oldest pending item."""
        with self._condition:
            displaced = len(self._pending) >= self._depth
            if displaced:
                self._pending.popleft()
            self._pending.append(item)
            self._condition.notify()
        return displaced

    def _run(self) -> None:
        while True:
            with self._condition:
                if not self._wait_for_pending():
                    return
                item = self._pending.popleft()
            # The handler reports its own errors; this guard only keeps the thread alive.
            try:
                self._handle(item)
            except Exception:  # noqa: BLE001
                _log.exception("frame handler failed")


class EngineState:
    """Names for ``EngineSwapper.state``."""

    SERVING = "serving"
    REBUILDING = "rebuilding"
    REBUILD_FAILED = "rebuild failed"
    # A variant of the engine in service (another output size, or with confidence) is being built in
    # the background (:meth:`EngineSwapper.run_in_background`); the engine serves what it has meanwhile.
    BUILDING = "building engine"


class EngineSwapper(Generic[Config, Engine]):
    """Holds the engine in service and replaces it with one built in the background.

    The first engine is built in the constructor, in the caller's thread, so start-up errors
    reach the caller (or handed over ready-made as ``initial``). ``rebuild`` returns at once; the old engine keeps serving until the new
    one is ready. When rebuilds overlap, only the latest request is swapped in.

    Args:
        build: makes a ready-to-serve engine from a config (may take seconds).
        config: the first engine's config.
        on_swap: called from the build thread with the new config after a swap.
        on_failure: called from the build thread with the rejected config and the error.
        initial: an engine made for ``config`` by the caller, to serve instead of ``build(config)`` (one
            whose remaining work the caller runs with :meth:`run_in_background`).
    """

    def __init__(
        self,
        build: Callable[[Config], Engine],
        config: Config,
        on_swap: Callable[[Config], None] = lambda config: None,
        on_failure: Callable[[Config, Exception], None] = lambda config, error: None,
        initial: Engine | None = None,
    ) -> None:
        self._build = build
        self._on_swap = on_swap
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._engine = build(config) if initial is None else initial
        self._config = config
        self._generation = 0
        self._state = EngineState.SERVING
        self._last_error = ""
        self._builders: list[threading.Thread] = []
        self._jobs: dict[Hashable, threading.Thread] = {}

    @property
    def engine(self) -> Engine:
        """The engine in service (read it once per frame: it may change between frames)."""
        return self._engine

    @property
    def config(self) -> Config:
        """The config of the engine in service."""
        return self._config

    @property
    def state(self) -> str:
        """``serving``, ``rebuilding``, ``building engine`` or ``rebuild failed`` (an engine serves in every case).

        ``building engine``: a background job (:meth:`run_in_background`) runs while the engine serves.
        """
        if self._state == EngineState.SERVING and self._jobs:
            return EngineState.BUILDING
        return self._state

    @property
    def building(self) -> bool:
        """True while an engine or a variant of one is being built in the background."""
        return self._state == EngineState.REBUILDING or bool(self._jobs)

    def run_in_background(self, key: Hashable, job: Callable[[], None], what: str = "") -> bool:
        """Run ``job`` on a thread of its own (e.g. building a variant the serving engine lacks) unless a
        job with ``key`` is already running; returns whether it started one.

        :attr:`state` reads ``building engine`` until it ends. A job that raises is logged and leaves
        :attr:`last_error` set; the engine in service is not touched either way.
        """
        with self._lock:
            if key in self._jobs:
                return False
            thread = threading.Thread(target=self._run_job, args=(key, job, what or str(key)), daemon=True,
                                      name=f"engine-job-{len(self._jobs) + 1}")
            self._jobs[key] = thread
        thread.start()
        return True

    def _run_job(self, key: Hashable, job: Callable[[], None], what: str) -> None:
        try:
            job()
        except Exception as exc:  # noqa: BLE001 - a failed variant build leaves the engine serving
            _log.exception("building %s failed", what)
            self._last_error = f"building {what} failed: {exc}"
        finally:
            with self._lock:
                self._jobs.pop(key, None)

    @property
    def last_error(self) -> str:
        """The reason of the last failed rebuild, empty if none failed since the last swap."""
        return self._last_error

    def rebuild(self, config: Config) -> bool:
        """Start building an engine for ``config``; returns False if it is already the one serving."""
        with self._lock:
            if config == self._config and self._state != EngineState.REBUILDING:
                return False
            self._generation += 1
            generation = self._generation
            self._state = EngineState.REBUILDING
            builder = threading.Thread(
                target=self._build_and_swap, args=(config, generation), name=f"engine-build-{generation}", daemon=True
            )
            self._builders = [thread for thread in self._builders if thread.is_alive()] + [builder]
        builder.start()
        return True

    def wait_idle(self, timeout: float | None = None) -> None:
        """Wait for the rebuilds and background jobs in progress (for shutdown and tests)."""
        with self._lock:
            builders = list(self._builders) + list(self._jobs.values())
        for thread in builders:
            thread.join(timeout)

    def _build_and_swap(self, config: Config, generation: int) -> None:
        try:
            engine = self._build(config)
        except Exception as exc:  # noqa: BLE001 - any build error leaves the old engine serving
            with self._lock:
                if generation != self._generation:
                    return
                self._state, self._last_error = EngineState.REBUILD_FAILED, str(exc)
            self._on_failure(config, exc)
            return
        with self._lock:
            if generation != self._generation:
                return  # a newer request superseded this one
            self._engine, self._config = engine, config
            self._state, self._last_error = EngineState.SERVING, ""
        self._on_swap(config)


class BatchScheduler(_PendingWorker, Generic[Key, Item]):
    """Many sources, one handler: the newest item of every source that has one waiting, as one batch.

    The multi-camera policy (one engine for N cameras, the way a stream muxer feeds a batched
    inference engine): each source (camera) has one pending slot, so a source that sends faster than
    the handler runs replaces its own waiting item (``submit`` says so, for that source's drop count)
    and never delays the others. When the handler is free, it gets what is waiting, at most
    ``max_batch`` items, one per source. Sources are taken in turn, starting after the one served
    longest ago, so that under overload no source starves: with more sources waiting than fit in a
    batch, the ones left out go first in the next batch.

    With ``batch_wait_s`` > 0 a batch that is not full waits up to that long (from its first item) for
    more sources, which trades latency for larger batches; 0 takes what is there.

    Two stages: ``handle`` may return a callable, the rest of that batch's work (the per-frame finishes
    and publishing after the network), which runs on a second thread while the next batch is taken and
    its ``handle`` runs: the network of one batch and the finishes of the one before share the cores.
    At most one rest runs at a time; the next waits for it, so work never piles up.

    Raises:
        ValueError: ``max_batch`` below 1 or a negative ``batch_wait_s``.
    """

    def __init__(self, handle: Callable[[list[tuple[Key, Item]]], Callable[[], None] | None], max_batch: int,
                 batch_wait_s: float = 0.0, name: str = "batch-scheduler") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if batch_wait_s < 0:
            raise ValueError(f"batch_wait_s must not be negative, got {batch_wait_s}")
        super().__init__(name)
        self._handle = handle
        self._max_batch = max_batch
        self.batch_wait_s = batch_wait_s  # read per batch: a parameter change takes effect at once
        self._pending: dict[Key, Item] = {}
        # Sources by when they were last served, least recently first (insertion order of the dict).
        self._turns: dict[Key, None] = {}
        self._rest = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-rest")
        self._resting: concurrent.futures.Future | None = None  # the rest of the batch before
        self._start()

    def submit(self, key: Key, item: Item) -> bool:
        """Make ``item`` the one waiting for ``key``; returns True if it replaced one not yet handled."""
        with self._condition:
            displaced = key in self._pending
            self._pending[key] = item
            self._turns.setdefault(key, None)
            self._condition.notify()
        return displaced

    def discard(self, key: Key) -> bool:
        """Forget what ``key`` has waiting (a source that stops); returns whether something was waiting."""
        with self._condition:
            self._turns.pop(key, None)
            return self._pending.pop(key, None) is not None

    def stop(self, timeout: float | None = 5.0) -> None:
        """Finish the batch in hand (and its rest), drop the pending items and end the threads."""
        super().stop(timeout)
        self._rest.shutdown(wait=not self._thread.is_alive())

    def _hand_over(self, rest: Callable[[], None]) -> None:
        """Run ``rest`` on the second thread once the rest before it is done."""
        if self._resting is not None:
            self._resting.result()  # never raises: _guarded logs
        try:
            self._resting = self._rest.submit(_guarded, rest)
        except RuntimeError:  # stop() gave up waiting for this thread and shut the second one down
            _guarded(rest)

    def _run(self) -> None:
        while True:
            with self._condition:
                if not self._wait_for_pending():
                    return
                wait_s = self.batch_wait_s
                if wait_s > 0:
                    deadline = time.monotonic() + wait_s
                    while (not self._stopping and len(self._pending) < self._max_batch
                           and (left := deadline - time.monotonic()) > 0):
                        self._condition.wait(left)
                    if self._stopping:
                        return
                batch = self._take_fair()
            try:
                rest = self._handle(batch)
            except Exception:  # noqa: BLE001 - the handler reports its own errors; this keeps the thread alive
                _log.exception("batch handler failed")
                continue
            if rest is not None:
                self._hand_over(rest)

    def _take_fair(self) -> list[tuple[Key, Item]]:
        """Up to ``max_batch`` waiting items, one per source, least recently served source first."""
        keys = [key for key in self._turns if key in self._pending][:self._max_batch]
        for key in keys:  # served now: to the back of the line
            self._turns.pop(key)
            self._turns[key] = None
        return [(key, self._pending.pop(key)) for key in keys]


def _guarded(rest: Callable[[], None]) -> None:
    # The rest reports its own errors; this keeps the scheduler's second thread alive.
    try:
        rest()
    except Exception:  # noqa: BLE001
        _log.exception("the rest of a batch failed")
