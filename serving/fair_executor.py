"""Model calls of several front ends, run by a few threads that take turns between the front ends.

REST and gRPC share one model. When model calls were made in the one event loop both front ends shared, the
front end with more clients took nearly every turn: a gRPC call needs several loop turns, and each turn
waited behind every REST request ready meanwhile (one gRPC client beside four REST clients got an eighth of
its rate alone). Here each front end has a lane, a queue of its waiting calls; a free thread takes the next
call from the lanes in turn, skipping empty ones. While both front ends have calls waiting each gets at
least half the model calls; a front end alone gets them all.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

_T = TypeVar("_T")
INLINE_BYTES = 64 * 1024  # larger requests are also parsed and formatted in the model threads


class _Job:
    def __init__(self, fn: Callable[..., Any], args: tuple, future: asyncio.Future) -> None:
        self.fn = fn
        self.args = args
        self.future = future


class WorkerThreads:
    """Threads running `self._work` that wait for work on `self._condition`; `close()` sets `self._closing`,
    after which they finish what is queued and return. A subclass sets up its queues before calling
    `__init__`, which starts the threads."""

    def __init__(self, count: int, name: str) -> None:
        self._condition = threading.Condition()
        self._closing = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Lets the threads finish what is queued, and waits for them."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join()


class FairExecutor(WorkerThreads):
    """`threads` threads running the calls of `lanes` in turn.

    Args:
        threads: how many calls run at once.
        lanes: the names of the front ends (e.g. "rest", "grpc").
    """

    def __init__(self, threads: int, lanes: Sequence[str]) -> None:
        self._queues: dict[str, collections.deque[_Job]] = {lane: collections.deque() for lane in lanes}
        self._turns = list(lanes)
        self._next = 0
        super().__init__(threads, "model")

    def lane(self, name: str) -> Lane:
        return Lane(self, name)

    async def run(self, lane: str, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` in a model thread, in `lane`'s turn; a call cancelled before it starts never runs."""
        future = asyncio.get_running_loop().create_future()
        with self._condition:
            if self._closing:
                raise RuntimeError("The model threads have stopped.")
            self._queues[lane].append(_Job(fn, args, future))
            self._condition.notify()
        return await future

    def _take(self) -> _Job | None:
        """The next queued call, lanes in turn; None once closing with nothing left."""
        with self._condition:
            while True:
                for step in range(len(self._turns)):
                    queue = self._queues[self._turns[(self._next + step) % len(self._turns)]]
                    if queue:
                        self._next = (self._next + step + 1) % len(self._turns)
                        return queue.popleft()
                if self._closing:
                    return None
                self._condition.wait()

    def _work(self) -> None:
        while (job := self._take()) is not None:
            loop = job.future.get_loop()
            if job.future.cancelled():
                continue
            result, error = None, None
            try:
                result = job.fn(*job.args)
            except BaseException as raised:  # the caller gets it, whatever it is
                error = raised
            try:
                loop.call_soon_threadsafe(settle, job.future, result, error)
            except RuntimeError:  # the loop has closed (server stopped): nobody waits any more
                pass


def settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    """Hands `result`, or `error`, to `future` (in its loop), unless it was cancelled meanwhile: the request
    timed out."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Lane:
    """One front end's way into a `FairExecutor`."""

    def __init__(self, executor: FairExecutor, name: str) -> None:
        self._executor = executor
        self.name = name

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await self._executor.run(self.name, fn, *args)
